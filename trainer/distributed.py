"""torch.distributed for cross-model distillation: sync what trains, never the frozen base models.

Choice (AnimateDiff-Lightning 3.2 patches DDP; we do not need DDP at all): every rank holds a
different frozen base model and the SAME trainable student motion module and discriminator. Gradients
of the trainable parameters are averaged with an explicit bucketed all_reduce after the last
accumulation micro-step, and trainable parameters are broadcast from rank 0 when they are (re)built.
Nothing else ever crosses ranks, so no wrapper can broadcast rank 0's base model over the others
(DistributedDataParallel's constructor does that for every parameter not on its ignore list), and a
forward through the base UNet cannot bypass the sync (a DDP wrapper around the motion module alone
would). The price is no overlap of communication with the backward pass, small next to the
teacher's n forward passes per step.
"""
from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

BUCKET_ELEMENTS = 1 << 25  # 128 MB of float32 per all_reduce call


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def is_master(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1 or dist.is_initialized()


def setup(device: str = "auto", timeout_s: float = 1800.0) -> DistInfo:
    """Reads torchrun's env (RANK, LOCAL_RANK, WORLD_SIZE); init NCCL on GPU, gloo on CPU (nanoGPT style).
    Every collective then fails after timeout_s seconds instead of hanging (a rank that died, a stuck save)."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if int(os.environ.get("RANK", -1)) == -1:
        return DistInfo(device=torch.device(device))
    rank, local_rank = int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"])
    world_size = int(os.environ["WORLD_SIZE"])
    if device == "cuda":
        torch.cuda.set_device(local_rank)
        dev = torch.device("cuda", local_rank)
    else:
        dev = torch.device("cpu")
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo",
                                timeout=datetime.timedelta(seconds=timeout_s))
    return DistInfo(rank, local_rank, world_size, dev)


def cleanup() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def broadcast_parameters(module: torch.nn.Module, src: int = 0) -> None:
    """Copies every parameter and buffer of `module` from rank src (used on trainable modules only)."""
    if not dist.is_initialized():
        return
    with torch.no_grad():
        for tensor in list(module.parameters()) + list(module.buffers()):
            dist.broadcast(tensor.data, src)


def _buckets(tensors: list[torch.Tensor]):
    """Groups tensors (same dtype and device) into runs of at most BUCKET_ELEMENTS elements."""
    bucket, size = [], 0
    for t in tensors:
        if bucket and (size + t.numel() > BUCKET_ELEMENTS or t.dtype != bucket[0].dtype):
            yield bucket
            bucket, size = [], 0
        bucket.append(t)
        size += t.numel()
    if bucket:
        yield bucket


def all_reduce_gradients(params: list[torch.nn.Parameter]) -> None:
    """Averages .grad over ranks in flat buckets; a missing grad counts as zero (same on every rank)."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return
    world = dist.get_world_size()
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    for bucket in _buckets([p.grad for p in params]):
        flat = torch.cat([g.reshape(-1) for g in bucket])
        dist.all_reduce(flat)
        flat /= world
        offset = 0
        for g in bucket:
            g.copy_(flat[offset:offset + g.numel()].view_as(g))
            offset += g.numel()


def all_reduce_mean(values: dict[str, float], device) -> dict[str, float]:
    """Averages scalar metrics over ranks (for logging)."""
    if not dist.is_initialized() or not values:
        return values
    keys = sorted(values)
    t = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    t /= dist.get_world_size()
    return dict(zip(keys, t.tolist()))


def all_gather_objects(obj) -> list:
    """Every rank's obj (rank order); [obj] without a process group."""
    if not dist.is_initialized():
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def ranks_where(flag: bool, device) -> list[int]:
    """The ranks on which flag is True (the same list on every rank)."""
    return [r for r, v in enumerate(gather_floats(1.0 if flag else 0.0, device)) if v]


def any_rank(flag: bool, device) -> bool:
    """True on every rank when flag is True on any rank (e.g. a non-finite loss)."""
    if not dist.is_initialized():
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def gather_floats(value: float, device) -> list[float]:
    """Every rank's value, in rank order (one all_reduce of a world-size vector); [value] without a group."""
    if not dist.is_initialized():
        return [float(value)]
    t = torch.zeros(dist.get_world_size(), dtype=torch.float64, device=device)
    t[dist.get_rank()] = value
    dist.all_reduce(t)
    return t.tolist()


def mean_by_group(values: dict[str, float], group: int, num_groups: int, device) -> dict[str, list[float | None]]:
    """Per-group means over ranks ({key: [mean of group g, ...]}, None for a group no rank is in)."""
    keys = sorted(values)
    t = torch.zeros(num_groups, len(keys) + 1, dtype=torch.float64, device=device)
    t[group, :-1] = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64)
    t[group, -1] = 1
    if dist.is_initialized():
        dist.all_reduce(t)
    counts = t[:, -1].tolist()
    return {k: [row[i] / n if n else None for row, n in zip(t[:, :-1].tolist(), counts)] for i, k in enumerate(keys)}
