"""Runs stock VAEDecode/VAEEncode and our chunked nodes in-process on one VAE; saves their outputs and peak memory.

Run in its own process (tests/nodes/test_vae.py does), so the peak resident memory it reads is its own:
    python tests/nodes/vae_memory.py COMFY_DIR CHECKPOINT OUT_DIR [--size PX] [--frames N ...] [--chunk N]
Writes OUT_DIR/outputs.safetensors (stock and chunked decode/encode of a few random frames at --exact-size)
and OUT_DIR/memory.json (peak RSS above the pre-call RSS, MiB, per mode and frame count at --size), by default
on a narrow random VAE of the SD architecture (--memory-vae checkpoint: the checkpoint's own).
Start it with MALLOC_MMAP_THRESHOLD_ set (the test does) so freed tensors go back to the OS and each
call's peak is measured from what is live, not from what an earlier call left in the heap.
"""

import argparse
import gc
import importlib.util
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def memory_mib(field):
    """VmRSS or VmHWM (peak since the last reset) of this process, in MiB."""
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def reset_peak():
    """Resets VmHWM to the current RSS (Linux >= 4.0)."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def import_host(comfy_dir):
    """ComfyUI in-process on CPU, its nodes.py, and this repo as a package the way ComfyUI loads it."""
    sys.path.append(str(comfy_dir))
    import comfy.cli_args
    comfy.cli_args.args.cpu = True
    import comfy.sd  # noqa: F401
    import nodes as stock  # ComfyUI's nodes.py: the repo root is not on sys.path here
    spec = importlib.util.spec_from_file_location("adl", REPO / "__init__.py", submodule_search_locations=[str(REPO)])
    package = importlib.util.module_from_spec(spec)
    sys.modules["adl"] = package
    spec.loader.exec_module(package)
    from adl.nodes import vae as ours
    return stock, ours


def load_vae(checkpoint):
    """The checkpoint's VAE alone (first_stage_model.*), as CheckpointLoaderSimple builds it."""
    import comfy.sd
    from safetensors import safe_open
    with safe_open(str(checkpoint), "pt") as f:
        sd = {k[len("first_stage_model."):]: f.get_tensor(k) for k in f.keys() if k.startswith("first_stage_model.")}
    return comfy.sd.VAE(sd=sd)


def narrow_vae(seed=0):
    """ComfyUI's SD VAE architecture at 32 channels with random weights: the memory runs then take a second.

    The chunking does not depend on the widths; VAE.decode sizes its batches by the SD VAE formula either way.
    """
    import comfy.sd
    import torch
    ddconfig = {"double_z": True, "z_channels": 4, "resolution": 256, "in_channels": 3, "out_ch": 3, "ch": 32,
                "ch_mult": [1, 1, 1, 1], "num_res_blocks": 1, "attn_resolutions": [], "dropout": 0.0}
    config = {"params": {"ddconfig": ddconfig, "embed_dim": 4}}
    from comfy.ldm.models.autoencoder import AutoencoderKL
    with torch.device("meta"):
        shapes = AutoencoderKL(**config["params"]).state_dict()
    gen = torch.Generator().manual_seed(seed)
    sd = {k: (1.0 + 0.1 * torch.randn(v.shape, generator=gen)) if "norm" in k and k.endswith("weight")
          else 0.05 * torch.randn(v.shape, generator=gen) for k, v in shapes.items()}
    return comfy.sd.VAE(sd=sd, config=config)


def peak_above_start(fn):
    """Peak RSS above the RSS at the call, in MiB, while fn runs; the result is dropped."""
    gc.collect()
    reset_peak()
    start = memory_mib("VmRSS")
    result = fn()
    peak = memory_mib("VmHWM") - start
    del result
    gc.collect()
    return peak


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("comfy_dir")
    parser.add_argument("checkpoint")
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--size", type=int, default=32, help="frame size in pixels for the memory runs")
    parser.add_argument("--frames", type=int, nargs="+", default=[8, 96])
    parser.add_argument("--chunk", type=int, default=8)
    parser.add_argument("--memory-vae", choices=["narrow", "checkpoint"], default="narrow",
                        help="the memory runs' VAE: a 32-channel SD-architecture VAE, or the checkpoint's own")
    parser.add_argument("--exact-size", type=int, default=32)
    parser.add_argument("--exact-frames", type=int, default=3)
    parser.add_argument("--exact-chunk", type=int, default=2)
    args = parser.parse_args()

    import torch
    from safetensors.torch import save_file
    stock, ours = import_host(args.comfy_dir)
    vae = load_vae(args.checkpoint)
    gen = torch.Generator().manual_seed(0)
    with torch.inference_mode():  # as ComfyUI's executor runs nodes
        latents = torch.randn(args.exact_frames, 4, args.exact_size // 8, args.exact_size // 8, generator=gen)
        chunk = args.exact_chunk
        images = stock.VAEDecode().decode(vae, {"samples": latents})[0]
        pieces = [(s, min(s + chunk, len(latents))) for s in range(0, len(latents), chunk)]
        outputs = {
            "latents": latents,
            "decode_stock": images,
            "decode_stock_per_chunk": torch.cat([stock.VAEDecode().decode(vae, {"samples": latents[a:b]})[0]
                                                 for a, b in pieces]),
            "decode_chunked": ours.VAEDecodeChunked.execute({"samples": latents}, vae, chunk).result[0],
            "decode_one_chunk": ours.VAEDecodeChunked.execute({"samples": latents}, vae, len(latents)).result[0],
            "encode_stock": stock.VAEEncode().encode(vae, images)[0]["samples"],
            "encode_stock_per_chunk": torch.cat([stock.VAEEncode().encode(vae, images[a:b])[0]["samples"]
                                                 for a, b in pieces]),
            "encode_chunked": ours.VAEEncodeChunked.execute(images, vae, chunk).result[0]["samples"],
        }
        save_file({k: v.contiguous() for k, v in outputs.items()}, str(args.out_dir / "outputs.safetensors"))

        if args.memory_vae == "narrow":
            vae = narrow_vae()
        memory = {"size": args.size, "chunk": args.chunk, "vae": args.memory_vae, "runs": []}
        side = args.size // 8
        stock.VAEDecode().decode(vae, {"samples": torch.randn(1, 4, side, side)})  # first call loads the model
        for frames in args.frames:
            latents = torch.randn(frames, 4, side, side, generator=gen)
            run = {"frames": frames, "output_mib": frames * 3 * args.size * args.size * 4 / 2**20}
            run["chunked_mib"] = peak_above_start(
                lambda: ours.VAEDecodeChunked.execute({"samples": latents}, vae, args.chunk).result[0])
            run["stock_mib"] = peak_above_start(lambda: stock.VAEDecode().decode(vae, {"samples": latents})[0])
            memory["runs"].append(run)
            print(json.dumps(run), flush=True)
        (args.out_dir / "memory.json").write_text(json.dumps(memory, indent=2))


if __name__ == "__main__":
    main()
