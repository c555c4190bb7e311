"""A tiny training recipe for the trainer tests: two tiny random bases, a tiny teacher, synthetic videos.

Every stage type in a few iterations at 4 frames of 32x32 pixels (4x4 latents); building the assets
once per session keeps each test to its training steps.
"""
from __future__ import annotations

import copy
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
PYTHON = sys.executable

STAGES = [
    dict(name="mse", loss="mse", teacher_steps=8, student_steps=4, iterations=2, cfg_scale=7.5),
    dict(name="4to2_conditional", loss="adversarial", teacher_steps=4, student_steps=2, iterations=2,
         discriminator="conditional", timesteps=[250, 500, 750, 1000], export=False),
    dict(name="2to1_unconditional", loss="adversarial", teacher_steps=2, student_steps=1, iterations=2,
         discriminator="unconditional", timesteps=[250, 500, 750, 1000], d_noise_timesteps=[10, 250, 500, 750]),
]


def recipe(assets: Path, out_dir: Path, stages=None, **sections) -> dict:
    """The config dict of the tiny recipe; `sections` update whole sections, e.g. checkpoint={'every': 1}."""
    data = {
        "run": {"out_dir": str(out_dir), "device": "cpu", "mixed_precision": "no", "gradient_checkpointing": False,
                "write_tiny_models": True, "deterministic": True,
                "cpu_threads": 1},
        "model": {"teacher": str(assets / "teacher.safetensors")},
        "ranks": [{"base": str(assets / "base_a.safetensors"), "dataset": "synthetic", "name": "a"},
                  {"base": str(assets / "base_b.safetensors"), "dataset": "synthetic", "name": "b"}],
        "optim": {"batch_size": 1, "grad_accum": 2, "mse_lr": 1e-3, "lr": 1e-4},
        "checkpoint": {"every": 100, "keep": 2, "export_dtype": "float32"},
        "data": {"frames": 4, "frame_stride": 1, "size": 32,
                 "datasets": {"synthetic": {"kind": "synthetic", "path": str(assets / "videos"), "synthetic_count": 4}}},
        "stages": copy.deepcopy(STAGES if stages is None else stages),
    }
    for section, values in sections.items():
        data[section].update(values)
    return data


def write_config(path: Path, data: dict) -> Path:
    from trainer.config import dump_toml

    path.write_text(dump_toml(data))
    return path


def load(data: dict):
    from trainer.config import Config, from_dict

    return from_dict(Config, copy.deepcopy(data))


def run_trainer(args: list[str], *, launcher: list[str] | None = None, timeout=300, env=None, check=True):
    """Runs `python -m trainer ...` (or under a torchrun launcher) from the repo root; returns the process."""
    cmd = (launcher or [PYTHON]) + ["-m", "trainer"] + args
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO_ROOT), **(env or {})}
    proc = subprocess.run(cmd, cwd=REPO_ROOT, env=full_env, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
    return proc


@pytest.fixture(autouse=True)
def restore_threads():
    """train() sets torch's thread count for the process; give the rest of the session its own back."""
    import torch

    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tiny_assets(tmp_path_factory) -> Path:
    """Folder with the tiny bases, teacher and synthetic videos (written by one single-process 0-step run)."""
    from trainer.distributed import DistInfo
    from trainer.train import train

    assets = tmp_path_factory.mktemp("tiny_assets")
    cfg = load(recipe(assets, assets / "warmup", stages=[dict(STAGES[0], iterations=0)]))
    train(cfg, DistInfo())
    return assets
