"""Exact resume (N steps straight == N/2 + resume + N/2, bit for bit on CPU) and kill -9 during a checkpoint write."""
import os
import signal
import subprocess
import time

import torch

from train_recipe import (PYTHON, REPO_ROOT, STAGES, load, recipe, restore_threads, tiny_assets,  # noqa: F401
                          write_config)
from trainer import checkpoint
from trainer.distributed import DistInfo
from trainer.train import train

RESUME_STAGES = [dict(STAGES[0], iterations=2), dict(STAGES[2], iterations=3)]  # kill mid-adversarial stage


def assert_same(a, b, where="state"):
    """Bit-exact equality of nested checkpoint contents."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), f"{where}: keys {sorted(a)} != {sorted(b)}"
        for k in a:
            assert_same(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{where}.{i}")
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


def test_resume_is_bit_exact(tiny_assets, tmp_path):
    def config(name, **run):
        data = recipe(tiny_assets, tmp_path / name, stages=RESUME_STAGES, checkpoint={"every": 1, "keep": 10})
        data["run"].update(run)
        return load(data)

    train(config("straight"), DistInfo())
    train(config("resumed", max_steps=3), DistInfo())  # stops after step 3 (mid-stage) with a checkpoint
    assert checkpoint.latest(tmp_path / "resumed" / "checkpoints").name == "step-00000003"
    train(config("resumed"), DistInfo())  # a fresh start: resumes from step 3 alone

    for step in (4, 5):  # mid-stage (D and both Adam states) and stage end (export, next-stage teacher)
        name = f"step-{step:08d}"
        a_shared, a_rank = checkpoint.load(tmp_path / "straight" / "checkpoints" / name, 0)
        b_shared, b_rank = checkpoint.load(tmp_path / "resumed" / "checkpoints" / name, 0)
        for key in ("config",):  # the resumed run had a different max_steps
            a_shared.pop(key), b_shared.pop(key)
        assert_same(a_shared, b_shared, f"{name}/state")
        assert_same(a_rank, b_rank, f"{name}/rank-0")
    assert a_shared["stage"] == 2 and checkpoint.load(tmp_path / "straight" / "checkpoints" / "step-00000004", 0)[0][
        "discriminator"] is not None


KILLER = r"""
import sys, time
from pathlib import Path
from trainer import checkpoint
original, seen = checkpoint._save_synced, []

def save_then_hang(obj, path):
    if path.name == "state.pt":
        seen.append(path)
        if len(seen) == 2:  # the second checkpoint: leave a half-written file and wait for the kill
            path.write_bytes(b"half a checkpoint")
            Path(sys.argv[2]).write_text("writing")
            time.sleep(600)
    return original(obj, path)

checkpoint._save_synced = save_then_hang
from trainer.__main__ import main
main(["train", "--config", sys.argv[1]])
"""


def test_kill_during_checkpoint_write_leaves_the_previous_one(tiny_assets, tmp_path):
    data = recipe(tiny_assets, tmp_path / "run", stages=[dict(STAGES[0], iterations=3)], checkpoint={"every": 1})
    config = write_config(tmp_path / "config.toml", data)
    marker = tmp_path / "writing"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO_ROOT)}
    proc = subprocess.Popen([PYTHON, "-c", KILLER, str(config), str(marker)], cwd=REPO_ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 300
    while not marker.exists():
        assert proc.poll() is None, proc.stderr.read().decode()[-3000:]
        assert time.monotonic() < deadline, "the second checkpoint write never started"
        time.sleep(0.2)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()

    ckpt_dir = tmp_path / "run" / "checkpoints"
    assert (ckpt_dir / "step-00000002.tmp" / "state.pt").read_bytes() == b"half a checkpoint"
    latest = checkpoint.latest(ckpt_dir)
    assert latest.name == "step-00000001"
    shared, mine = checkpoint.load(latest, 0)
    assert shared["global_step"] == 1 and mine["data"]["position"] > 0

    train(load(data), DistInfo())  # resumes from step 1 and finishes
    assert [p.name for p in checkpoint.complete_checkpoints(ckpt_dir)] == ["step-00000002", "step-00000003"]
    assert not (ckpt_dir / "step-00000002.tmp").exists()
