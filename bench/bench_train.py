"""Training throughput of the tiny CPU recipe, and the "does it distil" check on a finished tiny run.

    .venv/bin/python bench/bench_train.py                 # step time, samples/s, peak memory, FLOPs per stage type
    .venv/bin/python bench/bench_train.py --proof runs/proof   # distances to the teacher before/after each stage

Step time comes from the trainer's own metrics.jsonl (first iteration of each stage dropped as warm-up).
FLOPs per optimizer step are counted by torch.utils.flop_counter over one step (teacher solve + student
forward/backward + discriminator phases). MFU needs a peak: on a GPU we divide by the card's dense bf16
peak; on CPU there is no trustworthy peak, so we print the achieved GFLOP/s instead.
"""
from __future__ import annotations

import argparse
import copy
import json
import resource
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from trainer import checkpoint, distill  # noqa: E402
from trainer.config import Config, from_dict, load_config, to_dict  # noqa: E402
from trainer.distributed import DistInfo  # noqa: E402
from trainer.models import load_motion, motion_from_state  # noqa: E402
from trainer.sd15 import load_base_model  # noqa: E402
from trainer.train import train  # noqa: E402

GPU_PEAK_BF16 = {"H100": 989e12, "H200": 989e12, "A100": 312e12}  # dense, from the vendors' data sheets
STAGE_TYPES = {"mse (128->32, CFG 7.5)": 0, "adversarial, conditional D (32->8)": 1,
               "adversarial, unconditional D, multi-t + x0 noise (2->1)": 8}
HELD_OUT_PROMPTS = ["a green triangle drifting slowly to the right", "two red circles bouncing on a white wall",
                    "a yellow square spinning in the dark", "a blue star falling down"]


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def bench(config_path: str, iterations: int) -> None:
    base_cfg = load_config(["--config", config_path])
    print(f"tiny CPU recipe ({config_path}), batch {base_cfg.optim.batch_size} x accum {base_cfg.optim.grad_accum}, "
          f"{base_cfg.data.frames} frames at {base_cfg.data.size}px, torch threads {base_cfg.run.cpu_threads or 'default'}")
    print("| stage type | step time (s) | clips/s | GFLOP/step | achieved GFLOP/s | MFU | peak RSS (MB) |")
    print("|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        data = to_dict(base_cfg)
        assets = Path(tmp)
        data["run"]["out_dir"] = str(assets / "warm")
        for stage_name, index in STAGE_TYPES.items():
            stage = dict(data["stages"][index], iterations=iterations, export=False)
            run = copy.deepcopy(data)
            run["run"]["out_dir"] = str(assets / f"run{index}")
            run["stages"] = [stage]
            cfg = from_dict(Config, run)
            train(cfg, DistInfo())
            rows = [json.loads(line) for line in (assets / f"run{index}" / "metrics.jsonl").read_text().splitlines()]
            step = sum(r["step_time_s"] for r in rows[1:]) / max(1, len(rows) - 1)
            run["run"]["out_dir"] = str(assets / f"flops{index}")
            run["stages"] = [dict(stage, iterations=1)]
            with FlopCounterMode(display=False) as counter:
                train(from_dict(Config, run), DistInfo())
            flops = counter.get_total_flops()
            clips = cfg.optim.batch_size * cfg.optim.grad_accum
            mfu = "n/a (CPU)"
            if torch.cuda.is_available():
                name = torch.cuda.get_device_name()
                peak = next((v for k, v in GPU_PEAK_BF16.items() if k in name), None)
                mfu = f"{flops / step / peak:.1%}" if peak else "n/a"
            print(f"| {stage_name} | {step:.3f} | {clips / step:.2f} | {flops / 1e9:.2f} | {flops / step / 1e9:.2f} "
                  f"| {mfu} | {_peak_rss_mb():.0f} |")
    print("Full SD1.5 size needs a GPU; none was available in this session.")


# ----------------------------------------------------------------------------- proof of distillation

@torch.no_grad()
def sample(unet, motion, noise, context, uncond, steps, cfg_scale, alpha_bar):
    """Euler/DDIM at the trailing timesteps from pure noise (what the ComfyUI sampler runs), optional CFG."""
    u0 = torch.full((noise.shape[0],), 1000.0, dtype=torch.float64)
    plan = distill.plan_timesteps(u0, steps, 1)  # every step of a `steps`-step schedule from t = 999
    return distill.teacher_solve(unet, motion, noise, plan, context, uncond, cfg_scale, alpha_bar)


def proof(run_dir: Path) -> None:
    cfg = load_config(["--config", str(run_dir / "config.toml")])
    torch.set_num_threads(cfg.run.cpu_threads or torch.get_num_threads())
    alpha_bar = distill.alpha_bar_table("cpu")
    teacher = load_motion(cfg.model.teacher, "cpu").eval()
    stage_ends = {}
    for path in checkpoint.complete_checkpoints(run_dir / "checkpoints"):
        shared, _ = checkpoint.load(path, 0)
        if shared["iteration"] == 0 and shared["stage"] > 0:
            stage_ends[shared["stage"] - 1] = shared["student"]
    if 0 not in stage_ends:
        raise SystemExit(f"{run_dir} has no stage-end checkpoints (train with a large checkpoint.keep)")
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]

    print(f"distance = mean squared difference of final latents to the teacher's 128-step CFG {cfg.stages[0].cfg_scale} "
          f"samples; same noise, {len(HELD_OUT_PROMPTS)} held-out prompts, {cfg.data.frames} frames")
    print("| base | stage | student steps | distance before | distance after | change | D accuracy first->last 5 it |")
    print("|---|---|---|---|---|---|---|")
    for entry in list(dict.fromkeys(r.base for r in cfg.ranks)):
        base = load_base_model(entry)
        context, uncond = base.encode_prompts(HELD_OUT_PROMPTS), base.encode_prompts([""])
        size = cfg.data.size // 8
        noise = torch.randn(len(HELD_OUT_PROMPTS), cfg.data.frames, 4, size, size,
                            generator=torch.Generator().manual_seed(1234))
        reference = sample(base.unet, teacher, noise, context, uncond, 128, cfg.stages[0].cfg_scale, alpha_bar)
        before = teacher
        for index, stage in enumerate(cfg.stages):
            if index not in stage_ends:  # not trained yet (or its checkpoint was pruned)
                break
            after = motion_from_state(stage_ends[index], "cpu")
            n = stage.student_steps
            d0 = (sample(base.unet, before, noise, context, uncond, n, 1.0, alpha_bar) - reference).pow(2).mean().item()
            d1 = (sample(base.unet, after, noise, context, uncond, n, 1.0, alpha_bar) - reference).pow(2).mean().item()
            acc = [r["d_accuracy"] for r in rows if r["stage"] == stage.name and "d_accuracy" in r]
            acc_text = f"{sum(acc[:5]) / len(acc[:5]):.2f} -> {sum(acc[-5:]) / len(acc[-5:]):.2f}" if acc else "-"
            print(f"| {Path(entry).stem} | {stage.name} | {n} | {d0:.5f} | {d1:.5f} | {(d1 - d0) / d0:+.1%} | {acc_text} |")
            before = after


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(REPO_ROOT / "configs" / "tiny_cpu.toml"))
    parser.add_argument("--iterations", type=int, default=4)
    parser.add_argument("--proof", type=Path, help="a finished tiny run (out_dir) to evaluate instead")
    args = parser.parse_args()
    t0 = time.perf_counter()
    if args.proof:
        proof(args.proof)
    else:
        bench(args.config, args.iterations)
    print(f"({time.perf_counter() - t0:.0f} s)")
