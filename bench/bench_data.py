"""Benchmark: the trainer's data path (issue 10) against a training step, in one process.

Clips per second for
  decode + augment   opencv read of one clip, resize + centre crop, flip (no VAE): the paper's setting
                     (16 frames at stride 4 from 596x336 WebVid-sized mp4 videos, to 512x512) and the tiny
                     recipe's (8 frames at stride 2 from 96x64 videos, to 64x64);
  on-the-fly loader  ClipLoader batches of the tiny recipe: decode + augment + the tiny VAE's encode;
  cached latents     ClipLoader over a `cache` folder (latents + CLIP embeddings), tiny and full-size latents;
  teacher generation generate.sample_clips at the tiny recipe's size: DPM-Solver++(2M), 32 steps, CFG 7.5;
and a training step of the tiny CPU recipe's first stage (one clip: 4 teacher CFG steps + student forward and
backward, trainer.distill) plus the bare student forward + backward. The loader runs in the training process,
so "step / load" says how many clips the loader delivers in the time of one step (> 1: not the bottleneck).

    .venv/bin/python bench/bench_data.py [--reps 5]
"""
from __future__ import annotations

import argparse
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from trainer import generate, shards  # noqa: E402
from trainer.config import Config, from_dict  # noqa: E402
from trainer.data import DataConfig, DatasetConfig, build_loader, index_dataset, sample_rng  # noqa: E402
from trainer.models import load_motion, write_tiny_models  # noqa: E402
from trainer.sd15 import load_base_model  # noqa: E402
from trainer.synthetic_videos import write_synthetic_videos  # noqa: E402

TINY = dict(frames=8, frame_stride=2, size=64)  # configs/tiny_cpu.toml
PAPER = dict(frames=16, frame_stride=4, size=512)


def median_seconds(fn, reps: int, warmup: bool = True) -> float:
    if warmup:
        fn()
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def decode_rate(folder: Path, settings: dict, reps: int) -> float:
    """Clips/s of VideoSource.load (decode + resize + crop + flip)."""
    data = DataConfig(datasets={"v": DatasetConfig("folder", str(folder))}, **settings)
    source, _ = index_dataset("v", data.datasets["v"], data)
    counter = iter(range(10**9))

    def one():
        i = next(counter)
        source.load(i % len(source), sample_rng(0, i, i % len(source)), hflip=True)
    return 1 / median_seconds(one, reps)


def loader_rate(loader, batch_size: int, reps: int) -> float:
    return batch_size / median_seconds(lambda: next(loader), reps)


def write_cached(folder: Path, count: int, frames: int, latent: int, width: int):
    """A fake `cache` output: random latents and embeddings in the real shard layout."""
    records = [{"index": i, "prompt": f"clip {i}", "sample_id": str(i)} for i in range(count)]
    shards.write_shard(folder, shards.shard_name("cache", 0), {
        "latents": torch.randn(count, frames, 4, latent, latent).half(),
        "text_embeddings": torch.randn(count, 77, width).half()}, records)
    shards.append_manifest(folder, 0, shards.shard_name("cache", 0), records)


def tiny_config(root: Path) -> Config:
    return from_dict(Config, {
        "run": {"write_tiny_models": True, "device": "cpu"},
        "model": {"teacher": str(root / "teacher.safetensors")},
        "ranks": [{"base": str(root / "base.safetensors"), "dataset": "synthetic"}],
        "data": {**TINY, "datasets": {"synthetic": {"kind": "synthetic", "path": str(root / "tiny_videos"),
                                                    "synthetic_count": 8}}}})


def mse_step(base, teacher, student, latents, prompts):
    """The tiny recipe's first-stage micro-step (128 -> 32, CFG 7.5): teacher solve, student jump, backward."""
    from trainer import distill

    alpha_bar = distill.alpha_bar_table("cpu")
    context, uncond = base.encode_prompts(prompts), base.encode_prompts([""])
    u0 = distill.sample_start(1, 32, [], torch.Generator().manual_seed(0))
    plan = distill.plan_timesteps(u0, 128, 32)
    x_t = distill.add_noise(latents, torch.randn_like(latents), plan[:, 0], alpha_bar)
    target = distill.teacher_solve(base.unet, teacher, x_t, plan, context, uncond, 7.5, alpha_bar)
    fake = distill.student_jump(base.unet, student, x_t, plan, context, alpha_bar)
    torch.nn.functional.mse_loss(fake, target).backward()


def student_forward_backward(base, student, latents, prompts):
    """The bare minimum of any step: one student forward and backward through the UNet."""
    b, f = latents.shape[:2]
    context = base.encode_prompts(prompts).repeat_interleave(f, 0)
    t = torch.full((b * f,), 500.0)
    base.unet(latents.flatten(0, 1), t, context, f, motion=student).square().mean().backward()


def blocked_per_step(loader, step, steps: int) -> float:
    """Median seconds the loop spends in next(loader) when a step runs between batches."""
    step(next(loader))  # warm-up; also gives the prefetch threads a head start like a real first step
    waits = []
    for _ in range(steps):
        start = time.perf_counter()
        batch = next(loader)
        waits.append(time.perf_counter() - start)
        step(batch)
    loader.close()
    return statistics.median(waits)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reps", type=int, default=5)
    args = parser.parse_args()
    torch.manual_seed(0)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        cfg = tiny_config(root)
        write_tiny_models(cfg, 0)
        base = load_base_model(root / "base.safetensors")
        teacher = load_motion(root / "teacher.safetensors", "cpu").requires_grad_(False)
        student = load_motion(root / "teacher.safetensors", "cpu").requires_grad_(True)

        paper_videos = write_synthetic_videos(root / "paper_videos", 3, 70, (596, 336), seed=0)
        rows.append(("decode + augment, paper: 16 f / stride 4, 596x336 -> 512", decode_rate(paper_videos, PAPER,
                                                                                             args.reps)))
        tiny_videos = write_synthetic_videos(root / "tiny_videos", 8, 24, (96, 64), seed=0)
        rows.append(("decode + augment, tiny: 8 f / stride 2, 96x64 -> 64", decode_rate(tiny_videos, TINY,
                                                                                        args.reps)))
        loader = build_loader(cfg.data, "synthetic", 0, 1, base, batch_size=1)
        load_tiny = loader_rate(loader, 1, args.reps)
        rows.append(("on-the-fly loader, tiny (decode + augment + tiny VAE), batch 1", load_tiny))

        cached_tiny, cached_full = root / "cached_tiny", root / "cached_full"
        write_cached(cached_tiny, 16, TINY["frames"], TINY["size"] // 8, 32)
        write_cached(cached_full, 4, PAPER["frames"], PAPER["size"] // 8, 768)
        data = DataConfig(datasets={"t": DatasetConfig("cached", str(cached_tiny))}, **TINY)
        cached_rate = loader_rate(build_loader(data, "t", 0, 1, base, batch_size=1), 1, args.reps)
        rows.append(("cached latents, tiny (8x4x8x8 + 77x32 fp16), batch 1", cached_rate))
        data = DataConfig(datasets={"f": DatasetConfig("cached", str(cached_full))}, **PAPER)
        rows.append(("cached latents, paper (16x4x64x64 + 77x768 fp16), batch 1",
                     loader_rate(build_loader(data, "f", 0, 1, None, batch_size=1), 1, args.reps)))

        gen_seconds = median_seconds(lambda: generate.sample_clips(
            base, teacher, ["a red fox running through snow"], [0], TINY["frames"], TINY["size"], 32, 7.5),
            1, warmup=False)
        rows.append(("teacher generation, tiny (DPM++ 2M 32 steps, CFG 7.5)", 1 / gen_seconds))

        batch = next(build_loader(cfg.data, "synthetic", 0, 1, base, batch_size=1))
        step = median_seconds(lambda: mse_step(base, teacher, student, batch.latents, batch.prompts), args.reps)
        bare = median_seconds(lambda: student_forward_backward(base, student, batch.latents, batch.prompts),
                              args.reps)
        waits = {}
        for prefetch in (0, 2):  # what a training loop waits for: next(loader) between steps
            cfg.data.prefetch = prefetch
            waits[prefetch] = blocked_per_step(build_loader(cfg.data, "synthetic", 0, 1, base, batch_size=1),
                                               lambda b: student_forward_backward(base, student, b.latents, b.prompts),
                                               args.reps)

    print(f"# bench_data: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
          f"torch {torch.__version__}, CPU only (no GPU in this session), median of {args.reps}\n")
    print("| data path | clips/s | ms/clip |")
    print("|---|---:|---:|")
    for name, rate in rows:
        print(f"| {name} | {rate:.2f} | {1000 / rate:.1f} |")
    print("\n| tiny training step (1 clip) | ms | step / on-the-fly load | step / cached load |")
    print("|---|---:|---:|---:|")
    for name, seconds in (("stage 1 micro-step (4 teacher CFG steps + student fwd/bwd)", step),
                          ("student forward + backward only", bare)):
        print(f"| {name} | {1000 * seconds:.1f} | {seconds * load_tiny:.1f} | {seconds * cached_rate:.1f} |")
    print("\n| on-the-fly loader between student fwd/bwd steps, tiny | ms blocked in next() per step | share of step |")
    print("|---|---:|---:|")
    for prefetch, seconds in waits.items():
        print(f"| data.prefetch = {prefetch} | {1000 * seconds:.1f} | {seconds / (seconds + bare):.1%} |")


if __name__ == "__main__":
    main()
