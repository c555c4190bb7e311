"""`python -m trainer cache`: VAE latents and CLIP text embeddings of a video dataset, computed once.

Reads dataset `cache.dataset` (a video kind) and writes shards of `cache.shard_size` consecutive samples to
`cache.output`, round robin over the ranks, with the same atomic shard + manifest scheme as `generate`
(trainer/shards.py); a rerun after a kill recomputes only unlisted shards. Training then reads the folder
as a dataset of kind "cached": no decoding, no VAE, no CLIP. Each video is cached as one clip, the one an
uncached loader would take in epoch 0 (same start frame), unflipped; flips happen in latent space, or
exactly from the mirrored clip's latents when `store_flipped` is set (twice the disk).
The base model (VAE and CLIP) is `cache.base`, or else the one the ranks table pairs with this data.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from trainer import shards
from trainer.shards import DTYPES
from trainer.config import Config, check
from trainer.data import DataError, Skip, index_dataset, sample_rng

log = logging.getLogger("trainer.cache")

SHARD_PREFIX = "cache"


def cache_base(cfg: Config) -> str:
    """The base model to encode with: cache.base, or the single base the ranks table uses on this data."""
    if cfg.cache.base:
        return cfg.cache.base
    output = Path(cfg.cache.output).resolve()
    readers = {name for name, ds in cfg.data.datasets.items()
               if name == cfg.cache.dataset or (ds.kind == "cached" and Path(ds.path).resolve() == output)}
    bases = list(dict.fromkeys(r.base for r in cfg.ranks if r.dataset in readers))
    if len(bases) != 1:
        raise DataError(f"cache: set cache.base; the ranks table pairs {sorted(readers)} with "
                        f"{len(bases)} base models ({', '.join(bases) or 'none'})")
    return bases[0]


def _encode(base, examples, store_flipped: bool) -> dict[str, torch.Tensor]:
    pixels = torch.stack([e.pixels for e in examples])
    out = {"latents": base.encode_video(pixels), "text_embeddings": base.encode_prompts([e.prompt for e in examples])}
    if store_flipped:
        out["latents_flipped"] = base.encode_video(pixels.flip(-1))
    return out


def main(cfg: Config, rank: int = 0, world_size: int = 1) -> None:
    """Encodes this rank's shards of `cache.dataset` into `cache.output`."""
    from trainer import distributed
    from trainer.generate import _device
    from trainer.models import write_tiny_models
    from trainer.sd15 import load_base_model

    check(cfg, "cache", world_size)
    c = cfg.cache
    if cfg.run.write_tiny_models:  # before any early return: it ends with a barrier every rank must reach
        write_tiny_models(cfg, rank)
    source, _ = index_dataset(c.dataset, cfg.data.datasets[c.dataset], cfg.data)
    out = Path(c.output)
    done = shards.read_manifests(out) if out.is_dir() else {}
    count = -(-len(source) // c.shard_size)
    todo = [n for n in range(count) if n % world_size == rank and shards.shard_name(SHARD_PREFIX, n) not in done]
    mine = [n for n in range(count) if n % world_size == rank]
    size = {n: min(c.shard_size, len(source) - n * c.shard_size) for n in mine}
    bar = tqdm(total=sum(size.values()), initial=sum(size.values()) - sum(size[n] for n in todo), unit="clip",
               desc=f"cache {c.dataset}", disable=rank != 0, dynamic_ncols=True)
    if not todo:
        bar.close()
        distributed.barrier()
        return
    base_path = cache_base(cfg)
    base = load_base_model(base_path, device=_device(cfg), tokenizer_dir=cfg.model.tokenizer_dir or None)
    dtype, started, encoded = DTYPES[c.latent_dtype], time.perf_counter(), 0
    for number in todo:
        name = shards.shard_name(SHARD_PREFIX, number)
        for stale in out.glob(f".{name}.*.tmp"):  # a write cut short by a kill; this rank owns the shard now
            stale.unlink(missing_ok=True)
        records, skipped, pending, parts = [], [], [], []
        indices = range(number * c.shard_size, number * c.shard_size + size[number])
        for index in indices:
            try:
                example = source.load(index, sample_rng(cfg.data.seed, 0, index), hflip=False)
            except Skip as skip:
                skipped.append({"index": index, "reason": skip.reason, "message": str(skip)})
                log.warning("cache: skipped (%s) %s", skip.reason.replace("_", " "), skip)
            else:
                records.append({"index": index, "prompt": example.prompt, "sample_id": example.sample_id})
                pending.append(example)
            if len(pending) == c.batch_size or (index == indices[-1] and pending):
                parts.append(_encode(base, pending, c.store_flipped))
                pending = []
            bar.update(1)
        if records:
            tensors = {k: torch.cat([p[k] for p in parts]).to(dtype) for k in parts[0]}
            shards.write_shard(out, name, tensors, records)
        shards.append_manifest(out, rank, name, records, extra={"skipped": skipped, "base": Path(base_path).name})
        encoded += len(records)
    bar.close()
    seconds = time.perf_counter() - started
    log.info("cache: rank %d encoded %d clips into %s in %.1f s (%.2f clips/s)", rank, encoded, out, seconds,
             encoded / max(seconds, 1e-9))
    distributed.barrier()
