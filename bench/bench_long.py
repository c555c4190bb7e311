r"""Benchmark: long text-to-video (64 frames, 4 steps) in UNet windows, in views, and both; against diffusers' FreeNoise

Modes (windows and views 16 frames with overlap 4 unless named otherwise):

  ours sequential 16/4     UNet windows of 16 (ADL context handler, standard_uniform, pyramid), one per UNet call
  ours sequential 32/8     the same with UNet windows of 32, overlap 8: the comparator of the next-but-one mode
  ours batched 16/4        UNet windows of 16, as many per UNet call as memory allows (windows_per_batch 0)
  ours views 16/4          View Options alone (standard_static, pyramid): the UNet sees all frames, the
                           motion module's temporal attention runs in views of 16
  ours views 16/4 in UNet windows 32/8
                           View Options inside UNet windows of 32 / overlap 8, one window per call
  stock ContextWindowsManual 16/4
                           ComfyUI's own handler (IndexListContextHandler) on the same patched model
  diffusers FreeNoise 16/4 AnimateDiffPipeline.enable_free_noise(context_length 16, context_stride 12, pyramid):
                           the same windows and weights as ours views; motion-module GroupNorm per frame as in
                           tests/fixtures/oracle.py

Both sides do the same work: the same random weights (full-size SD1.5 UNet 860M + 453M motion module, or the
tests' reduced UNet), prompt, noise, Euler steps at the trailing timesteps, CFG 1 (Lightning; ComfyUI then skips
the uncond), float32, PyTorch SDPA attention on both sides (ComfyUI as with --use-pytorch-cross-attention; its
CPU default is sub-quadratic chunking). Sampling only: prompt encoding and VAE decode are not timed.
AnimateDiff-Evolved's View Options are not run (see docs/long_video.md: not loadable here, and its code may
not be copied into this project).

Time: every mode in this one process, each warmed up once (one step), then `--reps` timed runs in alternating
order (forward, then backward); median, min and max. `--threads` sets torch's threads (pin the process with
`taskset -c N` too, so that other jobs on a shared machine disturb it less).

Memory (`--memory`): each mode at each of `--memory-frames` in a fresh subprocess that loads only its own
models, encodes the prompt, then resets the kernel's peak-RSS mark (/proc/self/clear_refs) and runs one
sampling step; the peak is VmHWM minus the RSS just before the run. Large blocks are mmap'ed
(MALLOC_MMAP_THRESHOLD_ 1 MiB), so freed tensors leave the resident set. On CUDA: the allocator's peak.

The runs behind docs/long_video.md (a shared 2-vCPU machine; 2 steps to fit the session):

    taskset -c 1 .venv/bin/python bench/bench_long.py --unet full --reps 3 --steps 2 --threads 1
    taskset -c 1 .venv/bin/python bench/bench_long.py --unet full --reps 3 --steps 2 --threads 1 \
        --modes "ours views 16/4" "diffusers FreeNoise 16/4"
    taskset -c 0 .venv/bin/python bench/bench_long.py --unet full --reps 0 --threads 1 --memory --memory-frames 64
    taskset -c 0 .venv/bin/python bench/bench_long.py --unet tiny --reps 0 --threads 1 --memory
    .venv/bin/python bench/bench_long.py --unet tiny --reps 0 --threads 1 --profile "ours views 16/4" \
        "diffusers FreeNoise 16/4"
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_t2v as t2v  # noqa: E402  (import_host, cpu_name: set up the same way)

SEED = 7
PROMPT = t2v.PROMPT
DEVICE = t2v.DEVICE
LENGTH, OVERLAP = 16, 4  # windows and views
LONG_LENGTH, LONG_OVERLAP = 32, 8  # the UNet windows around views, and their sequential comparator

MODES = {
    "ours sequential 16/4": dict(windows=(LENGTH, OVERLAP), per_call=1),
    "ours sequential 32/8": dict(windows=(LONG_LENGTH, LONG_OVERLAP), per_call=1),
    "ours batched 16/4": dict(windows=(LENGTH, OVERLAP), per_call=0),
    "ours views 16/4": dict(views=(LENGTH, OVERLAP)),
    "ours views 16/4 in UNet windows 32/8": dict(views=(LENGTH, OVERLAP), windows=(LONG_LENGTH, LONG_OVERLAP),
                                                 per_call=1),
    "stock ContextWindowsManual 16/4": dict(stock=(LENGTH, OVERLAP)),
    "diffusers FreeNoise 16/4": dict(diffusers=(LENGTH, OVERLAP)),
}
SEQUENTIAL, FREENOISE = "ours sequential 16/4", "diffusers FreeNoise 16/4"


# ----------------------------------------------------------------------------- the two sides

def load_ours(sd15, motion_sd, checkpoint, names):
    """{mode: run_for(frames, size, steps)} for our modes (and the stock handler) on one patched model."""
    import comfy.context_windows
    import comfy.sample
    import comfy.samplers
    import comfy.sd
    from adl.lightning_core import sampling, schedule
    from adl.nodes import host

    model, clip, _, _ = comfy.sd.load_checkpoint_guess_config(str(checkpoint), output_vae=False, output_clip=True)
    with torch.inference_mode():
        positive = clip.encode_from_tokens_scheduled(clip.tokenize(PROMPT))
    del clip  # not timed, and not part of the sampling's memory
    settings = {"name": "bench", "lightning_steps": 4, "position_encoding_length": 32,
                "effect": 1.0, "motion_scale": 1.0}
    model = host.inject_motion_module(model, host.build_motion_set(model, motion_sd), settings)
    sampler = comfy.samplers.KSAMPLER(sampling.sample_euler)

    def mode_model(name):
        mode = MODES[name]
        if "stock" in mode:
            patched = model.clone()
            patched.model_options["context_handler"] = comfy.context_windows.IndexListContextHandler(
                comfy.context_windows.get_matching_context_schedule("standard_uniform"),
                comfy.context_windows.get_matching_fuse_method("pyramid"), *mode["stock"], dim=0)
            comfy.context_windows.create_prepare_sampling_wrapper(patched)
            return patched
        patched = model
        if "views" in mode:
            length, overlap = mode["views"]
            patched = host.with_views(patched, {"length": length, "overlap": overlap, "schedule": "standard_static",
                                                "fuse_method": "pyramid"})
        if "windows" in mode:
            patched = host.with_context_windows(patched, host.LightningContextHandler(
                "standard_uniform", "pyramid", *mode["windows"], windows_per_batch=mode["per_call"]))
        return patched

    def runner(name):
        patched = mode_model(name)

        def run_for(frames, size, steps):
            noise = sd15.comfy_noise((frames, 4, size // 8, size // 8), SEED)
            sigmas = schedule.get_sigmas_trailing(steps)

            @torch.inference_mode()  # as ComfyUI's executor runs every node
            def run():
                return comfy.sample.sample_custom(patched, noise, 1.0, sampler, sigmas, positive, positive,
                                                  torch.zeros_like(noise), disable_pbar=True, seed=SEED)
            return run
        return run_for

    return {name: runner(name) for name in names}


def load_diffusers(sd15, motion_sd, unet_size):
    """run_for(frames, size, steps) of diffusers' AnimateDiffPipeline with FreeNoise, on the same weights."""
    from diffusers import AnimateDiffPipeline
    from fixtures import oracle
    from lightning_core import formats

    unet, vae, text_encoder, tokenizer = sd15.build_models(unet_size)
    _, adapter_kwargs = sd15.motion_config(unet_size)
    adapter = oracle.build_adapter(formats.original_to_diffusers(motion_sd), adapter_kwargs)
    motion_unet = oracle.build_motion_unet(unet, adapter)  # shares the weights of unet and adapter
    del unet
    oracle.patch_per_frame_norm(motion_unet)
    pipe = AnimateDiffPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=motion_unet,
                               motion_adapter=adapter, scheduler=oracle.make_scheduler()).to(DEVICE)
    length, overlap = MODES[FREENOISE]["diffusers"]
    pipe.enable_free_noise(context_length=length, context_stride=length - overlap, weighting_scheme="pyramid",
                           noise_type="random")  # "random": the given latents are used as they are
    pipe.set_progress_bar_config(disable=True)
    # FreeNoise encodes the prompt of its first and last frame in every call; encoded once here, as ours is.
    encode_prompt, encoded = pipe.encode_prompt, {}

    def encode_prompt_once(prompt, *args, **kwargs):
        key = (tuple(prompt) if isinstance(prompt, list) else prompt, *args, *sorted(kwargs.items(), key=str))
        if repr(key) not in encoded:
            encoded[repr(key)] = encode_prompt(prompt, *args, **kwargs)
        return encoded[repr(key)]
    pipe.encode_prompt = encode_prompt_once

    def run_for(frames, size, steps):
        noise = sd15.comfy_noise((frames, 4, size // 8, size // 8), SEED)
        latents = noise.permute(1, 0, 2, 3)[None].to(DEVICE)  # [1, c, f, h, w]; the pipeline scales it

        def run():
            with torch.no_grad():
                return pipe(PROMPT, num_frames=frames, height=size, width=size,
                            num_inference_steps=steps, guidance_scale=1.0, latents=latents,
                            output_type="latent").frames
        return run

    return run_for


def load_modes(args, names):
    """{mode: run_for(frames, size, steps)}: the ComfyUI host and the models each selected mode needs."""
    sd15 = t2v.import_host(pytorch_attention=True)
    checkpoint = args.cache / f"sd15_{args.unet}_random.safetensors"
    if not checkpoint.is_file():
        print(f"writing {checkpoint} ...", flush=True)
        sd15.write_checkpoint(checkpoint, *sd15.build_models(args.unet)[:3], dtype=torch.float32)
        gc.collect()
    motion_sd = sd15.random_motion_state_dict(args.unet)  # shared by our motion set and diffusers' adapter
    runs = {}
    if FREENOISE in names:  # first: its build holds the UNet twice for a moment, better before ours is loaded
        runs[FREENOISE] = load_diffusers(sd15, motion_sd, args.unet)
    ours = [name for name in names if name != FREENOISE]
    if ours:
        runs.update(load_ours(sd15, motion_sd, checkpoint, ours))
    del motion_sd
    gc.collect()
    return {name: runs[name] for name in names}


# ----------------------------------------------------------------------------- measuring

def _status_kib(field):
    return int(re.search(rf"^{field}:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.M).group(1))


class PeakMemory:
    """Peak memory above the level at entry, MiB: the kernel's peak-RSS mark, reset at entry (CPU), or the CUDA
    allocator's peak."""

    def __enter__(self):
        gc.collect()
        if DEVICE == "cuda":
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated()
        else:
            Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
            self.base = _status_kib("VmRSS") * 1024
        return self

    def __exit__(self, *exc):
        if DEVICE == "cuda":
            self.mib = (torch.cuda.max_memory_allocated() - self.base) / 2**20
        else:
            self.mib = (_status_kib("VmHWM") * 1024 - self.base) / 2**20


def measure(run):
    """Wall seconds, CPU seconds of this process and peak MiB of one run, or the error it raised."""
    try:
        with PeakMemory() as mem:
            t2v.sync()
            t0, cpu0 = time.perf_counter(), time.process_time()
            run()
            t2v.sync()
            seconds, cpu_seconds = time.perf_counter() - t0, time.process_time() - cpu0
    except Exception as error:  # the stock handler on frame batches: reported, not hidden
        return {"error": f"{type(error).__name__}: {str(error)[:120]}"}
    return {"s": seconds, "cpu_s": cpu_seconds, "mib": mem.mib}


def time_modes(runs, frames, size, steps, reps):
    """Warm-up (one step) per mode, then `reps` alternating rounds; {mode: [results]} or {mode: error}."""
    timed, results = {}, {}
    for name, run_for in runs.items():
        warm = measure(run_for(frames, size, 1))
        print(f"  {name}: warm-up (1 step) {warm}", flush=True)
        if "error" in warm:
            results[name] = warm
        else:
            timed[name] = run_for(frames, size, steps)
    order = list(timed)
    for name in order:
        results[name] = []
    for rep in range(reps):
        for name in (order if rep % 2 == 0 else order[::-1]):
            r = measure(timed[name])
            print(f"  rep {rep + 1} {name}: {r['s']:.1f} s, CPU {r['cpu_s']:.1f} s, in-process peak "
                  f"+{r['mib']:.0f} MiB", flush=True)
            results[name].append(r)
    return results


def time_table(results, frames, size, steps):
    """Medians and ranges of wall and CPU time; the ratios against ours sequential 16/4 and diffusers' FreeNoise."""
    def median(name, key):
        return statistics.median(r[key] for r in results[name])

    def spread(name, key):
        values = [r[key] for r in results[name]]
        return f"{median(name, key):.1f} ({min(values):.1f} - {max(values):.1f})"

    def ratios(name, key):
        return " / ".join(f"{median(name, key) / median(base, key):.2f}" if isinstance(results.get(base), list)
                          else "-" for base in (SEQUENTIAL, FREENOISE))

    rows = [f"| {size}x{size}, {frames} frames, {steps} steps | wall s, median (min - max) | CPU s, median "
            "(min - max) | in-process peak MiB | wall / ours sequential 16/4 / diffusers FreeNoise "
            "| CPU / ours sequential 16/4 / diffusers FreeNoise |", "|---|---|---|---|---|---|"]
    for name, rs in results.items():
        if isinstance(rs, dict):
            rows.append(f"| {name} | fails: `{rs['error']}` | | | | |")
            continue
        rows.append(f"| {name} | {spread(name, 's')} | {spread(name, 'cpu_s')} | {median(name, 'mib'):.0f} | "
                    f"{ratios(name, 's')} | {ratios(name, 'cpu_s')} |")
    return "\n".join(rows)


def memory_table(args, names):
    """Each mode at each frame count in a fresh subprocess (one step); peak MiB above the level after loading."""
    header = f"| {args.memory_size}x{args.memory_size}, one step, UNet {args.unet}: peak MiB | "
    rows = [header + " | ".join(f"{f} frames" for f in args.memory_frames) + " |",
            "|---|" + "---|" * len(args.memory_frames),
            "| latents x, noise, output (3 copies, for scale) | " + " | ".join(
                f"{3 * f * 4 * (args.memory_size // 8) ** 2 * 4 / 2**20:.1f}" for f in args.memory_frames) + " |"]
    for name in names:
        cells = []
        for frames in args.memory_frames:
            command = [sys.executable, __file__, "--child", name, "--unet", args.unet, "--frames", str(frames),
                       "--size", str(args.memory_size), "--threads", str(args.threads), "--cache", str(args.cache)]
            done = subprocess.run(command, capture_output=True, text=True)
            lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
            r = json.loads(lines[-1][7:]) if lines else {"error": f"exit {done.returncode}: {done.stderr[-300:]}"}
            print(f"  memory {name}, {frames} frames: {r}", flush=True)
            cells.append(f"{r['mib']:.0f}" if "mib" in r else f"fails: `{r['error'][:80]}`")  # its time is cold
        rows.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def profile(runs, frames, size, rows=25):
    """One step of each mode under torch.profiler: where the time goes (self CPU time per operator)."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    for name, run_for in runs.items():
        run = run_for(frames, size, 1)
        run()  # warm-up
        with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
            run()
        print(f"\n### {name}\n" + prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows), flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--unet", choices=["full", "tiny"], default="full",
                        help="the SD1.5 UNet (860M) or the tests' reduced one (320/640 channels)")
    parser.add_argument("--modes", nargs="+", choices=list(MODES), default=list(MODES))
    parser.add_argument("--frames", type=int, default=64)
    parser.add_argument("--size", type=int, default=64, help="image size in pixels (latents are size / 8)")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--reps", type=int, default=3, help="timed runs per mode (0: no timing)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--memory", action="store_true", help="the peak-memory table, one subprocess per cell")
    parser.add_argument("--memory-frames", type=int, nargs="+", default=[64, 256, 1024])
    parser.add_argument("--memory-size", type=int, default=64)
    parser.add_argument("--profile", nargs="+", choices=list(MODES), help="profile one step of these modes")
    parser.add_argument("--child", choices=list(MODES), help=argparse.SUPPRESS)
    parser.add_argument("--cache", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")) / "adl-bench")
    args = parser.parse_args()
    if DEVICE == "cpu" and "MALLOC_MMAP_THRESHOLD_" not in os.environ:  # see bench_t2v.py
        os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, "MALLOC_MMAP_THRESHOLD_": "1048576"})
    torch.set_num_threads(args.threads)

    if args.child:
        run = load_modes(args, [args.child])[args.child](args.frames, args.size, 1)
        print("RESULT " + json.dumps(measure(run)), flush=True)
        return
    affinity = sorted(os.sched_getaffinity(0))
    print(f"torch {torch.__version__}, {DEVICE} {t2v.cpu_name()}, {torch.get_num_threads()} threads, "
          f"CPUs {affinity}, UNet {args.unet}, {args.frames} frames at {args.size}x{args.size}", flush=True)
    tables = []
    if args.profile:
        profile(load_modes(args, args.profile), args.frames, args.size)
    if args.reps:
        results = time_modes(load_modes(args, args.modes), args.frames, args.size, args.steps, args.reps)
        tables.append(time_table(results, args.frames, args.size, args.steps))
        print("\n" + tables[-1], flush=True)
    if args.memory:
        gc.collect()
        tables.append(memory_table(args, [name for name in args.modes if not name.startswith("stock")]))
    print("\n" + "\n\n".join(tables))


if __name__ == "__main__":
    main()
