"""Benchmark: a 64-frame, 4-step text-to-video in windows of 16 (overlap 4), in one process, alternating

  ours sequential   UNet windows: ADL context handler, one window per UNet call (windows_per_batch 1)
  ours batched      UNet windows, as many per UNet call as memory allows (windows_per_batch 0)
  ours views        ADL View Options alone: the UNet sees all frames, the motion module attends in views of 16
                    (standard_static, pyramid: diffusers FreeNoise's windows and weights)
  ours views in UNet windows
                    views of 16 (overlap 4) inside UNet windows of 32 (overlap 8), one per call: the
                    memory-bounded composition (UNet windows as long as the position encoding allows twice over)
  stock             ComfyUI's ContextWindowsManual handler on the same patched model (IndexListContextHandler)
  diffusers         AnimateDiffPipeline.enable_free_noise(context_length 16, context_stride 12), same weights,
                    motion-module GroupNorm per frame as in tests/fixtures/oracle.py

AnimateDiff-Evolved's View Options are not run: the package is not installed in the host copy here, and its
code may not be copied into this project.

Same prompt, weights and noise; sampling only (prompt encoding and VAE decode are not timed; the decode of
long videos is the chunked decoder's business). Then each of our modes and diffusers at 64, 256 and 1,024 frames
at a tiny image size (one step): UNet windows keep peak memory flat apart from the latents; views alone grow
with the frame count, as the UNet then takes every frame in one call. Time and memory are measured as in
bench_t2v.py (median wall time; peak RSS above the level before the run, or the CUDA allocator's peak).

    .venv/bin/python bench/bench_long.py [--unet full|tiny] [--sizes 64 256] [--reps N]
"""
from __future__ import annotations

import argparse
import gc
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_t2v as t2v  # noqa: E402  (import_host, PeakMemory, cpu_name: measured the same way)

FRAMES, STEPS, SEED, LENGTH, OVERLAP = 64, 4, 7, 16, 4
UNET_LENGTH, UNET_OVERLAP = 32, 8  # the UNet windows around views of LENGTH
PROMPT = t2v.PROMPT
DEVICE = t2v.DEVICE


def ours_sides(sd15, motion_sd, checkpoint):
    """(name, run_for_size) for ours sequential, ours batched and the stock handler, on one patched model."""
    import comfy.context_windows
    import comfy.sample
    import comfy.samplers
    import comfy.sd
    from adl.lightning_core import sampling
    from adl.nodes import host
    from adl.nodes.sampling import lightning_sigmas

    model, clip, _, _ = comfy.sd.load_checkpoint_guess_config(str(checkpoint), output_vae=False, output_clip=True)
    motion_set = host.build_motion_set(model, motion_sd)
    settings = {"name": "bench", "lightning_steps": STEPS, "position_encoding_length": 32,
                "effect": 1.0, "motion_scale": 1.0}
    model = host.inject_motion_module(model, motion_set, settings)
    sampler = comfy.samplers.KSAMPLER(sampling.sample_euler)
    _, sigmas = lightning_sigmas(model, STEPS)
    positive = clip.encode_from_tokens_scheduled(clip.tokenize(PROMPT))

    def stock_model():
        patched = model.clone()
        patched.model_options["context_handler"] = comfy.context_windows.IndexListContextHandler(
            comfy.context_windows.get_matching_context_schedule("standard_uniform"),
            comfy.context_windows.get_matching_fuse_method("pyramid"), LENGTH, OVERLAP, dim=0)
        comfy.context_windows.create_prepare_sampling_wrapper(patched)
        return patched

    views = {"length": LENGTH, "overlap": OVERLAP, "schedule": "standard_static", "fuse_method": "pyramid"}
    models = {
        "ours sequential": host.with_context_windows(model, host.LightningContextHandler(
            "standard_uniform", "pyramid", LENGTH, OVERLAP, windows_per_batch=1)),
        "ours batched": host.with_context_windows(model, host.LightningContextHandler(
            "standard_uniform", "pyramid", LENGTH, OVERLAP, windows_per_batch=0)),
        "ours views": host.with_views(model, views),
        "ours views in UNet windows": host.with_context_windows(host.with_views(model, views), (
            host.LightningContextHandler("standard_uniform", "pyramid", UNET_LENGTH, UNET_OVERLAP))),
        "stock ContextWindowsManual": stock_model(),
    }

    def side(name):
        def run_for_size(size, frames=FRAMES, steps_sigmas=sigmas):
            noise = sd15.comfy_noise((frames, 4, size // 8, size // 8), SEED)

            @torch.inference_mode()
            def run():
                return comfy.sample.sample_custom(models[name], noise, 1.0, sampler, steps_sigmas, positive, positive,
                                                  torch.zeros_like(noise), disable_pbar=True, seed=SEED)
            return run
        return name, run_for_size

    return [side(name) for name in models]


def diffusers_side(sd15, motion_sd, unet_size):
    from diffusers import AnimateDiffPipeline
    from fixtures import oracle
    from lightning_core import formats

    unet, vae, text_encoder, tokenizer = sd15.build_models(unet_size)
    _, adapter_kwargs = sd15.motion_config(unet_size)
    adapter = oracle.build_adapter(formats.original_to_diffusers(motion_sd), adapter_kwargs)
    motion_unet = oracle.build_motion_unet(unet, adapter)
    oracle.patch_per_frame_norm(motion_unet)
    pipe = AnimateDiffPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=motion_unet,
                               motion_adapter=adapter, scheduler=oracle.make_scheduler()).to(DEVICE)
    pipe.enable_free_noise(context_length=LENGTH, context_stride=LENGTH - OVERLAP, weighting_scheme="pyramid",
                           noise_type="random")  # "random": the given latents are used as they are
    pipe.set_progress_bar_config(disable=True)

    def run_for_size(size, frames=FRAMES, steps=STEPS):
        noise = sd15.comfy_noise((frames, 4, size // 8, size // 8), SEED)
        latents = noise.permute(1, 0, 2, 3)[None].to(DEVICE)

        def run():
            with torch.no_grad():
                return pipe(PROMPT, num_frames=frames, height=size, width=size, num_inference_steps=steps,
                            guidance_scale=1.0, latents=latents, output_type="latent").frames
        return run

    return "diffusers FreeNoise", run_for_size


def measure(run):
    """Seconds and peak MiB of one run, or the error it raised."""
    gc.collect()
    try:
        with t2v.PeakMemory() as mem:
            t2v.sync()
            t0 = time.perf_counter()
            run()
            t2v.sync()
            seconds = time.perf_counter() - t0
    except Exception as error:  # the stock handler on frame batches: reported, not hidden
        return {"error": f"{type(error).__name__}: {str(error)[:120]}"}
    return {"s": seconds, "mib": mem.mib}


def bench(sides, size, reps):
    runs = {name: run_for_size(size) for name, run_for_size in sides}
    results = {}
    for name, run in runs.items():
        first = measure(run)
        print(f"  {name} {size}x{size}: warm-up {first}", flush=True)
        if "error" in first or reps == 0:  # --reps 0: the first run is the measurement (cold)
            results[name] = first
    timed = {name: [] for name in runs if name not in results}
    for rep in range(reps):
        for name in (list(timed) if rep % 2 == 0 else list(timed)[::-1]):
            r = measure(runs[name])
            print(f"  {name} {size}x{size}: {r}", flush=True)
            timed[name].append(r)
    for name, rs in timed.items():
        results[name] = {k: statistics.median(r[k] for r in rs) for k in ("s", "mib")}
    return results


def table(results, size):
    base, peer = results["ours sequential"], results.get("diffusers FreeNoise", {})
    rows = [f"| {size}x{size}, {FRAMES} frames | wall s | peak MiB | time / ours sequential "
            "| memory / ours sequential | time / diffusers FreeNoise |",
            "|---|---|---|---|---|---|"]
    for name, r in results.items():
        if "error" in r:
            rows.append(f"| {name} | fails: `{r['error']}` | | | | |")
        else:
            versus_peer = f"{r['s'] / peer['s']:.2f}" if "s" in peer else ""
            rows.append(f"| {name} | {r['s']:.2f} | {r['mib']:.0f} | {r['s'] / base['s']:.2f} | "
                        f"{r['mib'] / max(base['mib'], 1e-9):.2f} | {versus_peer} |")
    return "\n".join(rows)


def frame_scaling(sides, size, frame_counts=(64, 256, 1024)):
    """Peak memory of each mode, one step, at growing frame counts; the latents themselves listed beside."""
    from adl.lightning_core import schedule
    rows = [f"| {size}x{size}, one step, peak MiB | " + " | ".join(f"{f} frames" for f in frame_counts) + " |",
            "|---|" + "---|" * len(frame_counts),
            "| latents (x, noise, output: 3 copies) | "
            + " | ".join(f"{3 * f * 4 * (size // 8) ** 2 * 4 / 2**20:.1f}" for f in frame_counts) + " |"]
    for name, run_for_size in sides:
        if name.startswith("stock"):  # fails on frame batches (see the speed table)
            continue
        cells = []
        for frames in frame_counts:
            if name.startswith("diffusers"):
                run = run_for_size(size, frames=frames, steps=1)
            else:
                run = run_for_size(size, frames=frames, steps_sigmas=schedule.get_sigmas_trailing(1))
            r = measure(run)
            cells.append(f"{r['mib']:.0f} ({r['s']:.1f} s)" if "mib" in r else "fails")
            print(f"  {name} {frames} frames at {size}x{size}: {r}", flush=True)
        rows.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--unet", choices=["full", "tiny"], default="full",
                        help="the SD1.5 UNet (860M) or the tests' reduced one (320/640 channels)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 256])
    parser.add_argument("--reps", type=int, default=2)
    parser.add_argument("--no-diffusers", action="store_true")
    parser.add_argument("--scaling-size", type=int, default=32,
                        help="image size of the 64/256/1,024-frame runs (0 skips them)")
    parser.add_argument("--scaling-frames", type=int, nargs="+", default=[64, 256, 1024])
    parser.add_argument("--cache", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")) / "adl-bench")
    args = parser.parse_args()
    if DEVICE == "cpu" and "MALLOC_MMAP_THRESHOLD_" not in os.environ:  # see bench_t2v.py
        os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, "MALLOC_MMAP_THRESHOLD_": "1048576"})
    sd15 = t2v.import_host()
    checkpoint = args.cache / f"sd15_{args.unet}_random.safetensors"
    if not checkpoint.is_file():
        print(f"writing {checkpoint} ...", flush=True)
        sd15.write_checkpoint(checkpoint, *sd15.build_models(args.unet)[:3], dtype=torch.float32)
        gc.collect()
    motion_sd = sd15.random_motion_state_dict(args.unet)
    print(f"torch {torch.__version__}, {DEVICE} {t2v.cpu_name()}, {torch.get_num_threads()} threads, "
          f"UNet {args.unet}", flush=True)
    sides = ours_sides(sd15, motion_sd, checkpoint)
    all_sides = sides + ([] if args.no_diffusers else [diffusers_side(sd15, motion_sd, args.unet)])
    tables = [table(bench(all_sides, size, args.reps), size) for size in args.sizes if size]  # --sizes 0: none
    if args.scaling_size:
        tables.append(frame_scaling(all_sides, args.scaling_size, tuple(args.scaling_frames)))
    print("\n" + "\n\n".join(tables))


if __name__ == "__main__":
    main()
