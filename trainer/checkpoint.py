"""Atomic, exactly resumable checkpoints: out_dir/checkpoints/step-NNNNNNNN/{state.pt, rank-R.pt, config.toml, done}.

A checkpoint is written into step-N.tmp/ (every rank writes its own rank-R.pt: RNG states and data
position; rank 0 writes state.pt: student, teacher, discriminator, optimisers, stage and step, config),
each file is fsynced, rank 0 adds the `done` marker and renames the folder to step-N in one os.replace.
So a kill -9 at any moment leaves either the previous complete checkpoints or the new one; folders
without `done` (or still named .tmp) are never loaded. The last `keep` (>= 2) are kept.
Needs a filesystem shared by all nodes (as Slurm clusters have).

At scale (`Writer`): the other ranks wait only while the small rank files are written. Rank 0 has copied
its shared state to CPU memory before; a background thread writes state.pt (tens of GB at full size),
the marker and the rename while every rank trains on, and the next save (or the end of the run) waits
for that thread first. So no rank sits in a collective for the length of the big write.
Files are read with weights_only=True and memory-mapped: the ranks of one machine share the page cache
of state.pt instead of each holding a private copy, and only the tensors a rank uses are read.
"""
from __future__ import annotations

import os
import random
import re
import shutil
import threading
from pathlib import Path

import numpy as np
import torch

from trainer import distributed
from trainer.config import changed_keys, flatten

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


def cpu_snapshot(obj):
    """A copy of a nested state (dicts, lists, tensors) in CPU memory that later training steps cannot change."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, dict):
        return {k: cpu_snapshot(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(cpu_snapshot(v) for v in obj)
    return obj


class Writer:
    """Saves checkpoints (a collective: every rank calls `save`); rank 0's big write runs in a background thread."""

    def __init__(self, ckpt_dir, rank: int, keep: int):
        self.ckpt_dir, self.rank, self.keep = Path(ckpt_dir), rank, keep
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    def save(self, step: int, shared_state: dict | None, rank_state: dict, config_toml: str) -> Path:
        """Writes the rank files now; rank 0's state.pt, marker and rename follow in the background.
        shared_state (rank 0 only) must not change afterwards: pass a cpu_snapshot."""
        self.wait()  # one checkpoint in flight at most, and each completes before the next starts
        final = self.ckpt_dir / f"step-{step:08d}"
        tmp = self.ckpt_dir / f"step-{step:08d}.tmp"
        if self.rank == 0:
            self.ckpt_dir.mkdir(parents=True, exist_ok=True)
            if tmp.exists():  # left by a run killed mid-save
                shutil.rmtree(tmp)
            tmp.mkdir()
        distributed.barrier()
        _save_synced(rank_state, tmp / f"rank-{self.rank}.pt")
        distributed.barrier()  # every rank file is on disk before rank 0 can mark the folder done
        if self.rank == 0:
            self._thread = threading.Thread(target=self._finish, args=(step, tmp, final, shared_state, config_toml),
                                            name=f"checkpoint-{step}")
            self._thread.start()
        return final

    def _finish(self, step: int, tmp: Path, final: Path, shared_state: dict, config_toml: str) -> None:
        try:
            _save_synced(shared_state, tmp / "state.pt")
            with open(tmp / "config.toml", "w") as f:
                f.write(config_toml)
                f.flush()
                os.fsync(f.fileno())
            (tmp / DONE).write_text(f"{step}\n")
            _fsync_dir(tmp)
            if final.exists():  # a re-run of the same step after a resume: replace it
                shutil.rmtree(final)
            os.replace(tmp, final)
            _fsync_dir(self.ckpt_dir)
            for old in complete_checkpoints(self.ckpt_dir)[:-self.keep]:
                shutil.rmtree(old, ignore_errors=True)
        except BaseException as e:  # reported by the next wait(), in the training thread
            self._error = e

    def wait(self) -> None:
        """Blocks until the checkpoint in flight (rank 0) is complete; raises CheckpointError if its write failed."""
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._error is not None:
            error, self._error = self._error, None
            raise CheckpointError(f"writing a checkpoint in {self.ckpt_dir} failed: {error}") from error


def load(path, rank: int) -> tuple[dict, dict]:
    """(shared state, this rank's state) of a complete checkpoint folder."""
    path = Path(path)
    if not (path / DONE).is_file():
        raise CheckpointError(f"{path} is not a complete checkpoint (no '{DONE}' marker)")
    rank_file = path / f"rank-{rank}.pt"
    if not rank_file.is_file():
        raise CheckpointError(f"{path} has no {rank_file.name}: it was written by fewer ranks than this run has")
    try:
        shared = torch.load(path / "state.pt", map_location="cpu", weights_only=True, mmap=True)
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


def check_config_changes(old_config: dict, new_config: dict, path, allowed) -> list[str]:
    """The config keys changed since the checkpoint; CheckpointError unless `allowed` names each (a key or a
    section prefix such as 'optim'). Keys that do not change the training (trainer.config.OPERATIONAL_KEYS)
    are never counted."""
    changed = changed_keys(old_config, new_config)
    old, new = flatten(old_config), flatten(new_config)
    refused = [k for k in changed if not any(k == a or k.startswith(a + ".") for a in allowed)]
    if refused:
        lines = "; ".join(f"{k}: {old.get(k, '(absent)')!r} -> {new.get(k, '(absent)')!r}" for k in refused)
        raise CheckpointError(f"{path} was written with another config ({len(refused)} changed key"
                              f"{'s' if len(refused) != 1 else ''}: {lines}). Resume with the checkpoint's config "
                              f"(its config.toml), or allow the change with --resume.allow_changed "
                              f"{' '.join(refused)}")
    return changed
