"""Stock `TorchCompileModel` on a model with our motion module: does it compile, and are the frames the same?

Runs the tiny random SD1.5-family UNet with a random motion module, 8 frames at 32x32, 4 Lightning steps,
in one process: eager, then compiled with `comfy_api.torch_helpers.set_torch_compile_wrapper` (what the stock
node's execute calls) on a clone of the same patched MODEL, twice (compile, then a compiled run). Prints the
times and the max abs difference of the final latents. Not a unit test: inductor's first compile of the
UNet takes minutes on a 2-core CPU.

    .venv/bin/python bench/check_torch_compile.py [--backend inductor]
"""

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", default="inductor", choices=["inductor", "cudagraphs"])
    args = parser.parse_args()

    from fixtures import inprocess, sd15
    adl = inprocess.import_package()
    import comfy.sample
    import comfy.samplers
    import comfy.sd
    from comfy_api.torch_helpers import set_torch_compile_wrapper

    from adl.lightning_core import sampling
    from adl.nodes import host
    from adl.nodes.sampling import lightning_sigmas

    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = Path(tmp) / "tiny_sd15.safetensors"
        sd15.write_checkpoint(checkpoint, *sd15.build_models("tiny")[:3])
        model, clip, _, _ = comfy.sd.load_checkpoint_guess_config(str(checkpoint), output_vae=False)
    motion_set = host.build_motion_set(model, sd15.random_motion_state_dict("tiny"))
    patched = host.inject_motion_module(model, motion_set, {"name": "random", "lightning_steps": 4,
                                                            "position_encoding_length": 32})
    positive = clip.encode_from_tokens_scheduled(clip.tokenize("a red fox running through snow"))
    noise = sd15.comfy_noise((8, 4, 4, 4), 0)
    _, sigmas = lightning_sigmas(patched, 4)
    sampler = comfy.samplers.KSAMPLER(sampling.sample_euler)

    def run(m):
        t0 = time.perf_counter()
        with torch.inference_mode():
            out = comfy.sample.sample_custom(m, noise, 1.0, sampler, sigmas, positive, positive,
                                             torch.zeros_like(noise), disable_pbar=True, seed=0)
        return out, time.perf_counter() - t0

    eager, t_eager = run(patched)
    compiled_model = patched.clone()
    set_torch_compile_wrapper(model=compiled_model, backend=args.backend)
    first, t_first = run(compiled_model)
    second, t_second = run(compiled_model)
    print(f"| run | seconds | max abs diff to eager (latents std {eager.std():.1f}) |\n| --- | --- | --- |")
    print(f"| eager | {t_eager:.1f} | - |")
    print(f"| compiled, first call (compiles) | {t_first:.1f} | {(first - eager).abs().max():.2e} |")
    print(f"| compiled, second call | {t_second:.1f} | {(second - eager).abs().max():.2e} |")


if __name__ == "__main__":
    main()
