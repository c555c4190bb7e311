"""Benchmark: the whole canny video-to-video job, ours (ComfyUI in-process) against diffusers'
AnimateDiffVideoToVideoControlNetPipeline, same weights, same source frames.

One job: canny on the 16 source frames (opencv, the same function on both sides), VAE-encode them, noise to
t=749 and run 3 Euler steps (4-step file, denoise / strength 0.75) with the ControlNet on every frame, CFG 1,
VAE-decode. float32, random weights (the reduced UNet of tests/fixtures/sd15.py by default, or the full SD1.5
one), ComfyUI's own ControlNet loaded from the official-layout file. Model loading is not timed; each side
is warmed up once, then the sides alternate rep by rep (median). Helpers (host import, peak memory) come from
bench_t2v.py.

    .venv/bin/python bench/bench_v2v.py [--unet tiny|full] [--size 64] [--reps 3]
"""
from __future__ import annotations

import argparse
import datetime
import gc
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_t2v import DEVICE, REPO, PeakMemory, cpu_name, import_host, sync  # noqa: E402

FRAMES, STEPS, DENOISE, SEED = 16, 4, 0.75, 7
PROMPT = "a watercolor painting of a lighthouse"
CANNY = dict(low_threshold=50, high_threshold=120)


def source_frames(cache, size):
    """[f, H, W, 3] float32 frames of the synthetic clip (written with opencv, read back with opencv)."""
    import cv2
    from fixtures import controlnet

    path = controlnet.write_source_video(cache / f"v2v_source_{size}.mp4", frames=FRAMES, size=size)
    capture, frames = cv2.VideoCapture(str(path)), []
    while len(frames) < FRAMES:
        ok, bgr = capture.read()
        assert ok, f"{path} has fewer than {FRAMES} frames"
        frames.append(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
    capture.release()
    return torch.from_numpy(np.stack(frames)).float().div_(255.0)


def ours_side(sd15, checkpoint, controlnet_file, frames):
    import comfy.controlnet
    import comfy.sample
    import comfy.samplers
    import comfy.sd
    from adl.lightning_core import control, sampling
    from adl.lightning_core.motion_module import MotionModuleSet
    from adl.nodes import host
    from adl.nodes.sampling import lightning_sigmas

    model, clip, vae, _ = comfy.sd.load_checkpoint_guess_config(str(checkpoint), output_vae=True, output_clip=True)
    motion_set = MotionModuleSet.from_state_dict(sd15.random_motion_state_dict(ARGS.unet),
                                                 dtype=host.unet_dtype(model)).eval().requires_grad_(False)
    settings = {"name": "bench", "lightning_steps": STEPS, "position_encoding_length": 32, "effect": 1.0,
                "motion_scale": 1.0}
    model = host.inject_motion_module(model, motion_set, settings)
    net = comfy.controlnet.load_controlnet(str(controlnet_file))
    sampler = comfy.samplers.KSAMPLER(sampling.sample_euler)
    _, sigmas = lightning_sigmas(model, STEPS, DENOISE)

    @torch.inference_mode()  # as ComfyUI's executor runs every node
    def run():
        hint = control.map_frames(control.canny, frames, **CANNY)
        latent = vae.encode(frames)
        [[cond, options]] = clip.encode_from_tokens_scheduled(clip.tokenize(PROMPT))
        # what ControlNetApplyAdvanced does (strength 1, 0..1)
        c_net = net.copy().set_cond_hint(hint.movedim(-1, 1), 1.0, (0.0, 1.0))
        positive = [[cond, {**options, "control": c_net, "control_apply_to_uncond": False}]]
        noise = comfy.sample.prepare_noise(latent, SEED)
        samples = comfy.sample.sample_custom(model, noise, 1.0, sampler, sigmas, positive, positive, latent,
                                             disable_pbar=True, seed=SEED)
        return vae.decode(samples)
    return run


def diffusers_side(sd15, net, frames):
    from diffusers import AnimateDiffVideoToVideoControlNetPipeline
    from fixtures import oracle
    from lightning_core import control, formats
    from PIL import Image

    unet, vae, text_encoder, tokenizer = sd15.build_models(ARGS.unet)
    _, adapter_kwargs = sd15.motion_config(ARGS.unet)
    adapter = oracle.build_adapter(formats.original_to_diffusers(sd15.random_motion_state_dict(ARGS.unet)),
                                   adapter_kwargs)
    motion_unet = oracle.build_motion_unet(unet, adapter)  # stock diffusers, as users run it
    del unet
    pipe = AnimateDiffVideoToVideoControlNetPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=motion_unet, motion_adapter=adapter,
        controlnet=net, scheduler=oracle.make_scheduler()).to(DEVICE)
    pipe.set_progress_bar_config(disable=True)
    video = [Image.fromarray(f) for f in (frames * 255).round().byte().numpy()]
    size = frames.shape[1]

    def run():
        with torch.no_grad():
            hint = control.map_frames(control.canny, frames, **CANNY)
            hints = [Image.fromarray(f) for f in (hint * 255).round().byte().numpy()]
            return pipe(video=video, conditioning_frames=hints, prompt=PROMPT, height=size, width=size,
                        num_inference_steps=STEPS, strength=DENOISE, guidance_scale=1.0,
                        generator=torch.Generator().manual_seed(SEED), output_type="pt").frames[0]
    return run


def measure(run):
    gc.collect()
    with PeakMemory() as mem:
        sync()
        t0 = time.perf_counter()
        video = run()
        sync()
        seconds = time.perf_counter() - t0
    assert FRAMES in video.shape[:2], video.shape
    return seconds, mem.mib


def main():
    if DEVICE == "cpu" and "MALLOC_MMAP_THRESHOLD_" not in os.environ:  # see bench_t2v.py
        os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, "MALLOC_MMAP_THRESHOLD_": "1048576"})
    sd15 = import_host()
    from fixtures import controlnet

    ARGS.cache.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    unet, vae, text_encoder, _ = sd15.build_models(ARGS.unet)
    net = controlnet.build_controlnet(unet)
    checkpoint = sd15.write_checkpoint(ARGS.cache / f"v2v_{ARGS.unet}.safetensors", unet, vae, text_encoder)
    controlnet_file = controlnet.write_controlnet(ARGS.cache / f"v2v_{ARGS.unet}_canny.pth", net, unet)
    del unet, vae, text_encoder
    frames = source_frames(ARGS.cache, ARGS.size)
    print(f"setup {time.perf_counter() - t0:.1f}s; torch {torch.__version__}, {DEVICE} {cpu_name()}, "
          f"{torch.get_num_threads()} threads", flush=True)

    runs = {"ours": ours_side(sd15, checkpoint, controlnet_file, frames), "diffusers": diffusers_side(sd15, net, frames)}
    for name, run in runs.items():
        t0 = time.perf_counter()
        run()
        print(f"  {name}: warm-up {time.perf_counter() - t0:.1f}s", flush=True)
    measured = {name: [] for name in runs}
    for rep in range(ARGS.reps):
        for name in list(runs) if rep % 2 == 0 else list(runs)[::-1]:
            seconds, mib = measure(runs[name])
            measured[name].append((seconds, mib))
            print(f"  {name}: {seconds:.2f}s, peak +{mib:.0f} MiB", flush=True)
    med = {name: (statistics.median(s for s, _ in rs), statistics.median(m for _, m in rs)) for name, rs in measured.items()}
    (o_s, o_m), (d_s, d_m) = med["ours"], med["diffusers"]
    md = ("| job | ours s | diffusers s | time ratio | ours peak MiB | diffusers peak MiB | memory ratio |\n"
          "|---|---|---|---|---|---|---|\n"
          f"| canny v2v, {FRAMES} frames {ARGS.size}x{ARGS.size}, {ARGS.unet} UNet, 3 of 4 steps | {o_s:.2f} | "
          f"{d_s:.2f} | **{o_s / d_s:.2f}** | {o_m:.0f} | {d_m:.0f} | {o_m / max(d_m, 1):.2f} |")
    header = (f"{datetime.date.today()}, torch {torch.__version__}, {DEVICE}: {cpu_name()}, "
              f"{torch.get_num_threads()} threads; median of {ARGS.reps}, sides alternating")
    print(f"\n{header}\n\n{md}")


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--unet", choices=["tiny", "full"], default="tiny")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--cache", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")) / "adl-bench")
    return parser.parse_args()


ARGS = parse_args() if __name__ == "__main__" else None

if __name__ == "__main__":
    main()
