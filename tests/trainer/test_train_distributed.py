"""Cross-model training on torchrun (gloo, CPU): one student and one discriminator for all ranks, a distinct
frozen base per rank. Checked through the per-rank fingerprints (sha256 of exact bytes) in every checkpoint."""
import json
import os
import socket
import subprocess

import pytest
import torch

from train_recipe import PYTHON, REPO_ROOT, STAGES, recipe, restore_threads, run_trainer, tiny_assets, write_config  # noqa: F401
from trainer import checkpoint
from trainer.sd15 import load_base_model
from trainer.train import fingerprint

TWO_STAGES = [dict(STAGES[0], iterations=2), dict(STAGES[1], iterations=2)]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _config(tiny_assets, tmp_path):
    data = recipe(tiny_assets, tmp_path / "run", stages=TWO_STAGES, checkpoint={"every": 1, "keep": 10})
    return write_config(tmp_path / "config.toml", data), tmp_path / "run" / "checkpoints"


def _check_ranks_agree(ckpt_dir, tiny_assets):
    found = checkpoint.complete_checkpoints(ckpt_dir)
    assert [int(p.name[5:]) for p in found] == [1, 2, 3, 4]
    fresh = [fingerprint(load_base_model(tiny_assets / f"base_{r}.safetensors")) for r in "ab"]
    assert fresh[0] != fresh[1]
    for path in found:
        shared, rank0 = checkpoint.load(path, 0)
        _, rank1 = checkpoint.load(path, 1)
        assert shared["world_size"] == 2
        f0, f1 = rank0["fingerprints"], rank1["fingerprints"]
        assert f0["student"] == f1["student"], f"students differ across ranks at {path.name}"
        assert f0["discriminator"] == f1["discriminator"], f"discriminators differ across ranks at {path.name}"
        assert [f0["base"], f1["base"]] == fresh, f"a base model changed or was synchronised at {path.name}"
        assert rank0["data"]["shard"] == 0 and rank1["data"]["shard"] == 1  # each rank reads its own shard
    assert found[2].joinpath("state.pt").exists() and checkpoint.load(found[2], 0)[0]["discriminator"] is not None
    first, last = (checkpoint.load(p, 0)[0]["student"] for p in (found[0], found[-1]))
    assert any(not torch.equal(first[k], last[k]) for k in first)  # it trained
    rows = [json.loads(line) for line in (ckpt_dir.parent / "metrics.jsonl").read_text().splitlines()]
    for row in rows:  # per base model, and their mean (one rank per base here)
        for key in ("loss_g",) + (("loss_d", "d_accuracy") if "loss_d" in row else ()):
            assert row[key] == pytest.approx((row[f"{key}/a"] + row[f"{key}/b"]) / 2, rel=1e-9, abs=1e-12)
    assert sum("loss_d/a" in row for row in rows) == 2


def test_two_ranks_one_student_two_bases(tiny_assets, tmp_path):
    config, ckpt_dir = _config(tiny_assets, tmp_path)
    launcher = [PYTHON, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master-port", str(_free_port())]
    run_trainer(["train", "--config", str(config)], launcher=launcher)
    _check_ranks_agree(ckpt_dir, tiny_assets)


def test_two_nodes_on_one_machine(tiny_assets, tmp_path):
    """Two torchrun launchers (one per "node") meet through a c10d rendezvous and train together."""
    config, ckpt_dir = _config(tiny_assets, tmp_path)
    port = _free_port()
    launchers = []
    for node in range(2):
        launcher = [PYTHON, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc_per_node", "1",
                    "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{port}", "--rdzv-id", "two-nodes",
                    "-m", "trainer", "train", "--config", str(config)]
        env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO_ROOT)}
        launchers.append(subprocess.Popen(launcher, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE,
                                          stderr=subprocess.STDOUT, text=True))
    outputs = [p.communicate(timeout=400)[0] for p in launchers]
    for p, out in zip(launchers, outputs):
        assert p.returncode == 0, out[-4000:]
    _check_ranks_agree(ckpt_dir, tiny_assets)
