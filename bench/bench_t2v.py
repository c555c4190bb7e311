"""Benchmark: our 4-step 16-frame text-to-video (ComfyUI in-process) against diffusers' AnimateDiffPipeline.

The same work on both sides: encode one prompt, 4 Euler steps over 16 frames at CFG 1, VAE-decode the 16
frames; float32, the same random SD1.5 weights (full size: 860M UNet + 453M motion module), the same noise.
Model loading is not timed. Each size is warmed up once per side, then timed `--reps` times (median).
See bench/README.md.

    .venv/bin/python bench/bench_t2v.py [--sizes 64 256] [--reps N]
"""
from __future__ import annotations

import argparse
import datetime
import gc
import importlib.util
import os
import platform
import statistics
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import psutil
import torch

REPO = Path(__file__).resolve().parents[1]
FRAMES, STEPS, SEED = 16, 4, 7
PROMPT = "a red fox running through snow"
# ComfyUI-AnimateDiff-Evolved, same work on this CPU, measured earlier (time / diffusers' time).
PEER = {64: 1.18, 128: 1.09}
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


# ----------------------------------------------------------------------------- imports

def import_host(pytorch_attention=False):
    """Imports ComfyUI (in-process, float32), our fixtures, and this repo as a package the way ComfyUI does."""
    sys.path.insert(0, str(REPO / "tests"))  # `fixtures`; the repo root itself must not shadow ComfyUI
    sys.path.insert(0, str(REPO))  # `lightning_core` for the fixtures (they import it top-level)
    from fixtures import sd15

    sys.path.append(str(sd15.comfy_dir()))
    import comfy.cli_args
    comfy.cli_args.args.cpu = DEVICE == "cpu"
    comfy.cli_args.args.force_fp32 = True  # fp32 on both sides (ComfyUI would pick fp16 on a GPU)
    # ComfyUI's default attention on CPU is sub-quadratic chunking; on GPUs it is already PyTorch SDPA.
    comfy.cli_args.args.use_pytorch_cross_attention = pytorch_attention
    comfy.cli_args.args.fp32_vae = True
    import comfy.model_management  # noqa: F401  (reads args now)
    import comfy.ldm.modules.attention  # noqa: F401
    import folder_paths  # noqa: F401  (the package's __init__ registers model folders)
    sd15.import_host_nodes_module()  # ComfyUI's nodes.py, which comfy_extras imports as `nodes`

    spec = importlib.util.spec_from_file_location("adl", REPO / "__init__.py", submodule_search_locations=[str(REPO)])
    adl = importlib.util.module_from_spec(spec)
    sys.modules["adl"] = adl
    spec.loader.exec_module(adl)
    import adl.nodes.host  # noqa: F401
    import adl.nodes.sampling  # noqa: F401
    return sd15


# ----------------------------------------------------------------------------- measuring

def sync():
    if DEVICE == "cuda":
        torch.cuda.synchronize()


class PeakMemory:
    """Peak memory above the level at entry, MiB: sampled RSS on CPU, the allocator's peak on CUDA."""

    def __enter__(self):
        if DEVICE == "cuda":
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated()
            return self
        self.proc, self.stop = psutil.Process(), threading.Event()
        self.base = self.peak = self.proc.memory_info().rss
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()
        return self

    def _sample(self):
        while not self.stop.wait(0.005):
            self.peak = max(self.peak, self.proc.memory_info().rss)

    def __exit__(self, *exc):
        if DEVICE == "cuda":
            self.mib = (torch.cuda.max_memory_allocated() - self.base) / 2**20
        else:
            self.stop.set()
            self.thread.join()
            self.peak = max(self.peak, self.proc.memory_info().rss)
            self.mib = (self.peak - self.base) / 2**20


class ModuleTimer:
    """Adds up the wall time spent inside forward() of the given modules (outermost calls only)."""

    def __init__(self, modules):
        self.total, self.calls, self._depth = 0.0, 0, 0
        for m in modules:
            m.register_forward_pre_hook(self._pre)
            m.register_forward_hook(self._post)

    def _pre(self, *_):
        if self._depth == 0:
            sync()
            self._t0 = time.perf_counter()
        self._depth += 1

    def _post(self, *_):
        self._depth -= 1
        if self._depth == 0:
            sync()
            self.total += time.perf_counter() - self._t0
            self.calls += 1

    def reset(self):
        self.total, self.calls = 0.0, 0


def measure(run, unet_timer, motion_timer):
    """Runs `run()` once; returns seconds, peak MiB, UNet seconds, motion-module seconds."""
    gc.collect()
    unet_timer.reset()
    motion_timer.reset()
    with PeakMemory() as mem:
        sync()
        t0 = time.perf_counter()
        video = run()
        sync()
        seconds = time.perf_counter() - t0
    assert unet_timer.calls == STEPS and motion_timer.calls == STEPS * 21, (unet_timer.calls, motion_timer.calls)
    assert video.shape[0] == FRAMES or video.shape[1] == FRAMES
    del video
    return dict(s=seconds, mib=mem.mib, unet=unet_timer.total, motion=motion_timer.total)


@dataclass
class Side:
    """One implementation under test: `run_for_size(size)` returns a function making one video."""

    name: str
    run_for_size: Callable
    unet_timer: ModuleTimer
    motion_timer: ModuleTimer


def bench(sides, sizes, reps):
    """Warms each side up once per size, then alternates them rep by rep so drift hits both alike."""
    results = {side.name: {} for side in sides}
    for size in sizes:
        runs = {side.name: side.run_for_size(size) for side in sides}
        for side in sides:
            t0 = time.perf_counter()
            runs[side.name]()
            print(f"  {side.name} {size}x{size}: warm-up {time.perf_counter() - t0:.1f}s", flush=True)
        measured = {side.name: [] for side in sides}
        for rep in range(reps(size)):
            for side in sides if rep % 2 == 0 else sides[::-1]:
                r = measure(runs[side.name], side.unet_timer, side.motion_timer)
                measured[side.name].append(r)
                print(f"  {side.name} {size}x{size}: {r['s']:.2f}s (UNet {r['unet']:.2f}s, motion {r['motion']:.2f}s), "
                      f"peak +{r['mib']:.0f} MiB", flush=True)
        for name, rs in measured.items():
            results[name][size] = {k: statistics.median(r[k] for r in rs) for k in rs[0]}
    return results


# ----------------------------------------------------------------------------- the two sides

def diffusers_side(sd15, motion_sd):
    from diffusers import AnimateDiffPipeline
    from diffusers.models.unets.unet_motion_model import AnimateDiffTransformer3D
    from fixtures import oracle
    from lightning_core import formats

    unet, vae, text_encoder, tokenizer = sd15.build_models("full")
    _, adapter_kwargs = sd15.motion_config("full")
    adapter = oracle.build_adapter(formats.original_to_diffusers(motion_sd), adapter_kwargs)
    motion_unet = oracle.build_motion_unet(unet, adapter)  # stock diffusers: its own all-frames norm kept
    del unet
    pipe = AnimateDiffPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=motion_unet,
                               motion_adapter=adapter, scheduler=oracle.make_scheduler()).to(DEVICE)
    pipe.set_progress_bar_config(disable=True)
    unet_timer = ModuleTimer([pipe.unet])
    motion_timer = ModuleTimer([m for m in pipe.unet.modules() if isinstance(m, AnimateDiffTransformer3D)])

    def run_for_size(size):
        noise = sd15.comfy_noise((FRAMES, 4, size // 8, size // 8), SEED)
        latents = noise.permute(1, 0, 2, 3)[None].to(DEVICE)  # [1, c, f, h, w]; the pipeline scales it

        def run():
            with torch.no_grad():
                return pipe(PROMPT, num_frames=FRAMES, height=size, width=size, num_inference_steps=STEPS,
                            guidance_scale=1.0, latents=latents, output_type="pt").frames[0]
        return run

    return Side("diffusers", run_for_size, unet_timer, motion_timer)


def ours_side(sd15, motion_sd, checkpoint):
    import comfy.model_management as mm
    import comfy.sample
    import comfy.samplers
    import comfy.sd
    from adl.lightning_core import sampling
    from adl.lightning_core.motion_module import MotionModule, MotionModuleSet
    from adl.nodes import host
    from adl.nodes.sampling import lightning_sigmas

    model, clip, vae, _ = comfy.sd.load_checkpoint_guess_config(str(checkpoint), output_vae=True, output_clip=True)
    motion_set = MotionModuleSet.from_state_dict(motion_sd, dtype=host.unet_dtype(model)).eval().requires_grad_(False)
    settings = {"name": "bench", "lightning_steps": STEPS, "position_encoding_length": 32,
                "effect": 1.0, "motion_scale": 1.0}
    model = host.inject_motion_module(model, motion_set, settings)
    print(f"  ComfyUI: UNet {host.unet_dtype(model)}, VAE {vae.vae_dtype}, attention "
          f"{comfy.ldm.modules.attention.optimized_attention.__name__}, device {mm.get_torch_device()}", flush=True)
    unet_timer = ModuleTimer([model.model.diffusion_model])
    motion_timer = ModuleTimer([m for m in motion_set.modules() if isinstance(m, MotionModule)])
    sampler = comfy.samplers.KSAMPLER(sampling.sample_euler)
    _, sigmas = lightning_sigmas(model, STEPS)

    def run_for_size(size):
        noise = sd15.comfy_noise((FRAMES, 4, size // 8, size // 8), SEED)
        empty = torch.zeros_like(noise)

        @torch.inference_mode()  # as ComfyUI's executor runs every node
        def run():
            positive = clip.encode_from_tokens_scheduled(clip.tokenize(PROMPT))
            samples = comfy.sample.sample_custom(model, noise, 1.0, sampler, sigmas, positive, positive, empty,
                                                 disable_pbar=True, seed=SEED)
            return vae.decode(samples)
        return run

    return Side("ours", run_for_size, unet_timer, motion_timer)


# ----------------------------------------------------------------------------- report

def cpu_name():
    if DEVICE == "cuda":
        return torch.cuda.get_device_name()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def table(ours, theirs):
    rows = ["| size | ours s | diffusers s | ratio | ours UNet s | diffusers UNet s | UNet ratio | "
            "ours motion s | diffusers motion s | ours peak MiB | diffusers peak MiB | AD-Evolved ratio |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for size in ours:
        o, d = ours[size], theirs[size]
        peer = f"{PEER[size]:.2f}" if size in PEER else "-"
        rows.append(f"| {size}x{size} | {o['s']:.2f} | {d['s']:.2f} | **{o['s'] / d['s']:.2f}** | {o['unet']:.2f} | "
                    f"{d['unet']:.2f} | {o['unet'] / d['unet']:.2f} | {o['motion']:.2f} | {d['motion']:.2f} | "
                    f"{o['mib']:.0f} | {d['mib']:.0f} | {peer} |")
    rows.append("| peer reference (AD-Evolved / diffusers) | | | | | | | | | | | " +
                ", ".join(f"{s}x{s}: {r:.2f}" for s, r in PEER.items()) + " |")
    return "\n".join(rows)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+",
                        default=[64, 256] + ([512] if DEVICE == "cuda" else []))
    parser.add_argument("--reps", type=int, default=None, help="timed runs per size and side (default 5 up to 64x64, else 2)")
    parser.add_argument("--cache", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")) / "adl-bench",
                        help="where the SD1.5 checkpoint is written (once, ~4.3 GB)")
    parser.add_argument("--attention", choices=["default", "pytorch"], default="default",
                        help="ComfyUI's attention: its default, or as with --use-pytorch-cross-attention")
    parser.add_argument("--side", choices=["both", "ours", "diffusers"], default="both",
                        help="one side alone is for profiling; the table needs both")
    parser.add_argument("--out", type=Path, help="where the table goes (default bench/results*.md)")
    args = parser.parse_args()
    if DEVICE == "cpu" and "MALLOC_MMAP_THRESHOLD_" not in os.environ:
        # glibc keeps freed blocks below its (growing) mmap threshold in the heap, so the resident set
        # would remember the previous run's peak; with every block over 1 MiB mapped and unmapped on
        # its own, sampled RSS follows the live tensors on both sides alike.
        os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, "MALLOC_MMAP_THRESHOLD_": "1048576"})
    reps = (lambda size: args.reps) if args.reps else (lambda size: 5 if size <= 64 else 2)

    sd15 = import_host(args.attention == "pytorch")
    checkpoint = args.cache / "sd15_full_random.safetensors"
    t0 = time.perf_counter()
    if not checkpoint.is_file():
        print(f"writing {checkpoint} ...", flush=True)
        sd15.write_checkpoint(checkpoint, *sd15.build_models("full")[:3], dtype=torch.float32)
        gc.collect()
    motion_sd = sd15.random_motion_state_dict("full")
    print(f"setup {time.perf_counter() - t0:.1f}s; torch {torch.__version__}, {DEVICE} {cpu_name()}, "
          f"{torch.get_num_threads()} threads", flush=True)

    sides = ([ours_side(sd15, motion_sd, checkpoint)] if args.side != "diffusers" else []) + \
            ([diffusers_side(sd15, motion_sd)] if args.side != "ours" else [])
    results = bench(sides, args.sizes, reps)
    if args.side != "both":
        return
    ours, theirs = results["ours"], results["diffusers"]
    import comfy.ldm.modules.attention

    ours_attention = comfy.ldm.modules.attention.optimized_attention.__name__
    md = table(ours, theirs)
    print("\n" + md)
    header = (f"{datetime.date.today()}, torch {torch.__version__}, {DEVICE}: {cpu_name()}, "
              f"{torch.get_num_threads()} threads; ComfyUI attention: {ours_attention}; "
              "16 frames, 4 steps, fp32, median of "
              + ", ".join(f"{reps(s)} at {s}x{s}" for s in args.sizes))
    out = args.out or REPO / "bench" / ("results.md" if args.attention == "default" else "results_pytorch_attention.md")
    out.write_text(f"# bench_t2v results\n\n{header}\n\n{md}\n")
    print(f"\nwritten to {out}")


if __name__ == "__main__":
    main()
