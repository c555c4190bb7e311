"""Cross-rank integrity and checkpoints at scale: diverging ranks and non-finite losses are named (2 gloo ranks),
`run.on_nonfinite = "skip"`, a resume with a changed config, and rank 0's checkpoint write in the background."""
import json
import math
import os
import socket
import subprocess
import threading

import pytest
import torch

from train_recipe import PYTHON, REPO_ROOT, STAGES, load, recipe, restore_threads, tiny_assets, write_config  # noqa: F401
import trainer.train as train_module
from trainer import checkpoint
from trainer.__main__ import main
from trainer.distributed import DistInfo
from trainer.models import load_motion

TWO_RANKS = r"""
import types, torch
from trainer import distributed, train
info = distributed.setup("cpu", 60)
torch.manual_seed(0)
student = torch.nn.Linear(4, 4)
if info.rank == 1:  # one bit of drift on one rank
    with torch.no_grad():
        student.weight[0, 0] += 1e-6
fingerprints = {"student": train.fingerprint(student), "base": "one base file", "discriminator": ""}
try:
    train.check_ranks_agree(fingerprints, flow=0, global_step=7)
except train.RankDivergenceError as e:
    print("DIVERGED:", e)
ns = types.SimpleNamespace
run = ns(cfg=ns(run=ns(on_nonfinite="stop")), device=torch.device("cpu"))
try:
    train.finite_on_every_rank(run, ns(config=ns(name="s1")), ns(iteration=3, global_step=9),
                               {"loss_g": float("nan") if info.rank == 1 else 0.5})
except train.NonFiniteLossError as e:
    print("NONFINITE:", e)
distributed.cleanup()
"""


def test_two_ranks_name_the_diverging_rank_and_the_non_finite_one():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    procs = []
    for rank in range(2):
        env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1", "MASTER_ADDR": "127.0.0.1",
               "MASTER_PORT": str(port), "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": "2"}
        procs.append(subprocess.Popen([PYTHON, "-c", TWO_RANKS], cwd=REPO_ROOT, env=env, text=True,
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT))
    outputs = [p.communicate(timeout=180)[0] for p in procs]
    for p, out in zip(procs, outputs):
        assert p.returncode == 0, out[-3000:]
        assert ("DIVERGED: ranks diverged at global step 7: the student of rank 1 differs from rank 0. "
                "Nothing was saved") in out, out[-3000:]
        assert ("NONFINITE: non-finite loss in stage 's1' at iteration 3 (global step 10) on rank 1: "
                "loss_g=nan (rank 1)") in out, out[-3000:]


def test_skip_non_finite_steps_counts_them(tiny_assets, tmp_path, monkeypatch):
    mse, calls = train_module.losses.mse_distillation_loss, []

    def nan_on_first_step(a, b):  # grad_accum = 2 micro-batches per step
        calls.append(1)
        return mse(a, b) * (float("nan") if len(calls) <= 2 else 1.0)

    monkeypatch.setattr(train_module.losses, "mse_distillation_loss", nan_on_first_step)
    data = recipe(tiny_assets, tmp_path / "run", stages=[dict(STAGES[0], iterations=3)],
                  checkpoint={"every": 1, "keep": 10})
    data["run"]["on_nonfinite"] = "skip"
    train_module.train(load(data), DistInfo())
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [(r["skipped"], r["skipped_steps"]) for r in rows] == [(1, 1), (0, 1), (0, 1)]
    assert math.isnan(rows[0]["loss_g"]) and all(math.isfinite(r["loss_g"]) for r in rows[1:])
    assert math.isfinite(rows[1]["loss_g/a"]) and "loss_g/b" not in rows[1]  # one process: ranks[0]'s base only
    teacher = load_motion(tiny_assets / "teacher.safetensors", "cpu").state_dict()
    ckpts = tmp_path / "run" / "checkpoints"
    after_skip, trained = (checkpoint.load(ckpts / f"step-0000000{n}", 0)[0] for n in (1, 2))
    assert after_skip["skipped_steps"] == 1
    assert all(torch.equal(after_skip["student"][k], v) for k, v in teacher.items())  # the skipped step changed nothing
    assert any(not torch.equal(trained["student"][k], v) for k, v in teacher.items())


def test_resume_with_a_changed_config_names_the_keys(tiny_assets, tmp_path, capsys):
    data = recipe(tiny_assets, tmp_path / "run", stages=[dict(STAGES[0], iterations=2)])
    data["run"]["max_steps"] = 1
    config = write_config(tmp_path / "config.toml", data)
    assert main(["train", "--config", str(config)]) == 0
    shared, _ = checkpoint.load(checkpoint.latest(tmp_path / "run" / "checkpoints"), 0)
    assert shared["versions"]["torch"] == str(torch.__version__) and len(shared["config_digest"]) == 64
    changed = ["--optim.mse_lr", "0.002", "--stages.0.cfg_scale", "2.0", "--run.max_steps", "0"]
    capsys.readouterr()
    assert main(["train", "--config", str(config), *changed]) == 1
    err = capsys.readouterr().err
    assert "another config (2 changed keys: optim.mse_lr: 0.001 -> 0.002; stages.0.cfg_scale: 7.5 -> 2.0)" in err
    assert "--resume.allow_changed optim.mse_lr stages.0.cfg_scale" in err  # run.max_steps is always allowed
    assert main(["train", "--config", str(config), *changed, "--resume.allow_changed", "optim", "stages.0.cfg_scale"]) == 0
    assert "config changed as allowed: optim.mse_lr, stages.0.cfg_scale" in capsys.readouterr().out
    assert checkpoint.latest(tmp_path / "run" / "checkpoints").name == "step-00000002"


def test_rank_zero_writes_in_the_background(tmp_path, monkeypatch):
    """Writer.save returns once the rank files are on disk; state.pt, the marker and the rename follow."""
    release, original = threading.Event(), checkpoint._save_synced

    def slow_state(obj, path):
        if path.name == "state.pt":
            assert release.wait(60)
        original(obj, path)

    monkeypatch.setattr(checkpoint, "_save_synced", slow_state)
    writer = checkpoint.Writer(tmp_path, rank=0, keep=2)
    live = {"w": torch.zeros(3)}
    final = writer.save(5, checkpoint.cpu_snapshot(live), {"rng": 1}, "x = 1\n")
    live["w"] += 1  # training goes on while the write is in flight: the snapshot must not see it
    assert not final.exists() and (tmp_path / "step-00000005.tmp" / "rank-0.pt").is_file()
    assert checkpoint.latest(tmp_path) is None
    release.set()
    writer.wait()
    assert checkpoint.latest(tmp_path) == final
    assert torch.equal(checkpoint.load(final, 0)[0]["w"], torch.zeros(3))
    def disk_full(obj, path):
        if path.name == "state.pt":
            raise OSError("disk full")
        original(obj, path)

    monkeypatch.setattr(checkpoint, "_save_synced", disk_full)
    writer.save(6, {}, {}, "")
    with pytest.raises(checkpoint.CheckpointError, match="disk full"):
        writer.wait()
