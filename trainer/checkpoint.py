"""Atomic, exactly resumable checkpoints: out_dir/checkpoints/step-NNNNNNNN/{state.pt, rank-R.pt, config.toml, done}.

A checkpoint is written into step-N.tmp/ (every rank writes its own rank-R.pt: RNG states and data
position; rank 0 writes state.pt: student, teacher, discriminator, optimisers, stage and step, config),
each file is fsynced, rank 0 adds the `done` marker and renames the folder to step-N in one os.replace.
So a kill -9 at any moment leaves either the previous complete checkpoints or the new one; folders
without `done` (or still named .tmp) are never loaded. The last `keep` (>= 2) are kept.
Needs a filesystem shared by all nodes (as Slurm clusters have). Files are read with weights_only=True.
"""
from __future__ import annotations

import os
import random
import re
import shutil
from pathlib import Path

import numpy as np
import torch

from trainer import distributed

STEP_RE = re.compile(r"^step-(\d{8})$")
DONE = "done"


class CheckpointError(RuntimeError):
    """A checkpoint is missing, incomplete, or does not fit this run."""


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _save_synced(obj, path: Path) -> None:
    with open(path, "wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())


def rng_state(generator: torch.Generator | None = None) -> dict:
    """torch (CPU, CUDA), python random, numpy and the training-noise generator states, all weights_only-safe."""
    np_state = np.random.get_state()
    state = {"torch": torch.get_rng_state(), "python": random.getstate(),
             "numpy": [np_state[0], torch.from_numpy(np_state[1].copy()), *np_state[2:]]}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()
    if generator is not None:
        state["generator"] = generator.get_state()
    return state


def set_rng_state(state: dict, generator: torch.Generator | None = None) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(_tuples(state["python"]))
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), *rest))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])
    if generator is not None and "generator" in state:
        generator.set_state(state["generator"])


def _tuples(x):
    """random.setstate wants tuples where a round trip may have produced lists."""
    return tuple(_tuples(v) for v in x) if isinstance(x, (list, tuple)) else x


def complete_checkpoints(ckpt_dir) -> list[Path]:
    """Complete checkpoint folders, oldest first."""
    ckpt_dir = Path(ckpt_dir)
    if not ckpt_dir.is_dir():
        return []
    found = [p for p in ckpt_dir.iterdir() if STEP_RE.match(p.name) and (p / DONE).is_file()]
    return sorted(found, key=lambda p: int(STEP_RE.match(p.name).group(1)))


def latest(ckpt_dir) -> Path | None:
    found = complete_checkpoints(ckpt_dir)
    return found[-1] if found else None


def save(ckpt_dir, step: int, shared_state: dict | None, rank_state: dict, rank: int, config_toml: str,
         keep: int) -> Path:
    """Collective: every rank calls it; shared_state is only used on rank 0."""
    ckpt_dir = Path(ckpt_dir)
    final = ckpt_dir / f"step-{step:08d}"
    tmp = ckpt_dir / f"step-{step:08d}.tmp"
    if rank == 0:
        ckpt_dir.mkdir(parents=True, exist_ok=True)
        if tmp.exists():  # left by a run killed mid-save
            shutil.rmtree(tmp)
        tmp.mkdir()
    distributed.barrier()
    _save_synced(rank_state, tmp / f"rank-{rank}.pt")
    if rank == 0:
        _save_synced(shared_state, tmp / "state.pt")
        with open(tmp / "config.toml", "w") as f:
            f.write(config_toml)
            f.flush()
            os.fsync(f.fileno())
    distributed.barrier()
    if rank == 0:
        (tmp / DONE).write_text(f"{step}\n")
        _fsync_dir(tmp)
        if final.exists():  # a re-run of the same step after a resume: replace it
            shutil.rmtree(final)
        os.replace(tmp, final)
        _fsync_dir(ckpt_dir)
        for old in complete_checkpoints(ckpt_dir)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    distributed.barrier()
    return final


def load(path, rank: int) -> tuple[dict, dict]:
    """(shared state, this rank's state) of a complete checkpoint folder."""
    path = Path(path)
    if not (path / DONE).is_file():
        raise CheckpointError(f"{path} is not a complete checkpoint (no '{DONE}' marker)")
    rank_file = path / f"rank-{rank}.pt"
    if not rank_file.is_file():
        raise CheckpointError(f"{path} has no {rank_file.name}: it was written by fewer ranks than this run has")
    try:
        shared = torch.load(path / "state.pt", map_location="cpu", weights_only=True)
        mine = torch.load(rank_file, map_location="cpu", weights_only=True)
    except Exception as e:
        raise CheckpointError(f"{path} could not be read: {e}") from e
    return shared, mine


def check_compatible(shared: dict, path, world_size: int, ranks: list[dict]) -> None:
    """Refuse to resume with another world size or rank-to-base table (data shards and flows would change)."""
    if shared["world_size"] != world_size:
        raise CheckpointError(f"{path} was written by {shared['world_size']} ranks; this run has {world_size}. "
                              f"Resume with the same world size or start a new out_dir")
    if shared["ranks"] != ranks:
        raise CheckpointError(f"{path} was written with another ranks table ({shared['ranks']}); this run has "
                              f"{ranks}. Resume with the same table or start a new out_dir")
