"""Training clips for the distillation loop: dataset configs, per-rank deterministic loading, `Batch`.

Dataset kinds ([data.datasets.<name>] kind = ...):
- "webvid_csv": a WebVid-style CSV. Columns: `name` (caption; `caption_column`), and the video path relative
  to `video_root` (default: the CSV's folder) in column `path` (`path_column`); without that column the
  path is `{page_dir}/{videoid}.mp4` (the layout of the WebVid download scripts) or `{videoid}.mp4`.
- "folder": every video under `path` (recursive) with a same-stem .txt caption.
- "synthetic": a "folder" that is first filled with `write_synthetic_videos` (the tiny CPU recipe).
- "latent_shards": the teacher clips of `python -m trainer generate` (latents, no pixels).
- "cached": the output of `python -m trainer cache` (latents and CLIP text embeddings).
Video kinds decode `frames` frames every `frame_stride` frames from a random start, resize + centre-crop
to `size`, flip horizontally at random, and encode with the rank's VAE; latent kinds flip the latents.

Determinism: the dataset is an indexed list. Epoch e visits randperm(len, seed + e) and rank k of the n
ranks sharing a dataset takes every n-th entry from k (disjoint; the union is the dataset). Each
sample's random choices come from a generator seeded with (seed, epoch, index), so the data position
(epoch, position) in `state_dict` is all a resumed run needs to continue with the exact next batch.
Unusable samples are skipped and counted (`loader.stats`), never raised mid-run.
"""
from __future__ import annotations

import csv
import logging
from collections import Counter, deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import cv2
import numpy as np
import torch
from safetensors import SafetensorError, safe_open

from trainer import shards
from trainer.config import DATASET_KINDS, VIDEO_KINDS, DataConfig, DatasetConfig
from trainer.synthetic_videos import write_synthetic_videos
from trainer.video_clips import (ClipTooShort, VideoReadError, clip_frame_indices, count_frames, frames_to_pixels,
                                 num_clip_starts, read_frames)

__all__ = ["Batch", "ClipLoader", "DataConfig", "DataError", "DatasetConfig", "build_loader", "dataset_shard",
           "write_synthetic_videos"]

log = logging.getLogger("trainer.data")

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v")


class DataError(ValueError):
    """A dataset is misconfigured or has nothing usable; raised before training starts."""


@dataclass
class Batch:
    latents: torch.Tensor
    """[b, f, 4, h, w], scaled by the VAE factor (0.18215)."""
    prompts: list[str]
    text_embeddings: torch.Tensor | None = None
    """[b, 77, d] for cached datasets, else None (the loop encodes the prompts with its own base)."""
    sample_ids: list[str] = field(default_factory=list)
    """Where each clip came from (file, start frame, flip): for logs and tests."""


@dataclass
class Example:
    """One loaded sample, before batching: pixels (video kinds) or latents (latent kinds)."""
    prompt: str
    sample_id: str
    pixels: torch.Tensor | None = None
    latents: torch.Tensor | None = None
    text_embedding: torch.Tensor | None = None


class Skip(Exception):
    """A sample that cannot be used; `reason` is the stats key it is counted under."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


def sample_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    """The random choices (clip start, flip) of sample `index` in `epoch`."""
    return np.random.default_rng([seed, epoch, index])


# ----------------------------------------------------------------------------- sources

class VideoSource:
    """(video, caption) entries of the video kinds, decoded on demand."""

    def __init__(self, entries: list[tuple[Path, str]], data_cfg: DataConfig):
        self.entries, self.cfg = entries, data_cfg

    def __len__(self):
        return len(self.entries)

    def load(self, index: int, rng: np.random.Generator, hflip: bool) -> Example:
        path, caption = self.entries[index]
        frames, stride = self.cfg.frames, self.cfg.frame_stride
        try:
            starts = num_clip_starts(count_frames(path), frames, stride)
            if starts == 0:
                raise Skip("too_short", f"{path}: fewer than the {frames}-frame clip's span of "
                                        f"{(frames - 1) * stride + 1} frames at stride {stride}")
            start = int(rng.integers(starts))
            flip = hflip and bool(rng.random() < 0.5)
            clip = read_frames(path, clip_frame_indices(start, frames, stride))
        except VideoReadError as e:
            raise Skip("unreadable", str(e)) from None
        except ClipTooShort as e:
            raise Skip("too_short", str(e)) from None
        except cv2.error as e:  # opencv refusing a damaged stream
            raise Skip("unreadable", f"{path}: {e}") from None
        pixels = frames_to_pixels(clip, self.cfg.size, flip)
        return Example(caption, f"{path}@{start}{'/flip' if flip else ''}", pixels=pixels)


class ShardSource:
    """Rows of latent shards (generator output, or the cache's latents + text embeddings)."""

    def __init__(self, entries: list[tuple[Path, int, dict]], with_text: bool):
        self.entries, self.with_text = entries, with_text

    def __len__(self):
        return len(self.entries)

    def load(self, index: int, rng: np.random.Generator, hflip: bool) -> Example:
        path, row, record = self.entries[index]
        flip = hflip and bool(rng.random() < 0.5)
        keys = ("latents_flipped" if flip else "latents", "latents") + (("text_embeddings",) if self.with_text else ())
        try:
            tensors = shards.read_row(path, keys, row)
        except (OSError, SafetensorError, ValueError) as e:
            raise Skip("unreadable", f"{path}: {e}") from None
        if "latents" not in tensors or (self.with_text and "text_embeddings" not in tensors):
            raise Skip("unreadable", f"{path}: missing latents or text_embeddings")
        # A shard without stored mirror images is flipped in latent space (close to, not equal to, encoding
        # mirrored pixels; the VAE is not exactly flip-equivariant).
        latents = tensors.get("latents_flipped") if flip else tensors["latents"]
        if latents is None:
            latents = tensors["latents"].flip(-1)
        return Example(record.get("prompt", ""), f"{path.name}#{row}{'/flip' if flip else ''}",
                       latents=latents, text_embedding=tensors.get("text_embeddings"))


def index_dataset(name: str, ds: DatasetConfig, data_cfg: DataConfig):
    """Builds the indexed list of a dataset -> (source, index-time skip counts). Raises DataError if empty."""
    skipped: Counter = Counter()
    if ds.kind not in DATASET_KINDS:  # trainer.config checks this; callers that build a DataConfig by hand too
        raise DataError(f"dataset {name!r}: kind {ds.kind!r} is not one of {', '.join(DATASET_KINDS)}")
    if ds.kind in VIDEO_KINDS:
        if ds.kind == "synthetic":
            if not ds.path:  # else the videos would land in the working directory
                raise DataError(f"dataset {name!r} (synthetic) needs a path: the folder to write its videos into")
            frames = ds.synthetic_frames or (data_cfg.frames - 1) * data_cfg.frame_stride + 9
            write_synthetic_videos(ds.path, ds.synthetic_count, frames, (data_cfg.size * 3 // 2, data_cfg.size),
                                   seed=data_cfg.seed)
        entries = _csv_entries(name, ds, skipped) if ds.kind == "webvid_csv" else _folder_entries(name, ds, skipped)
        source = VideoSource(entries[: ds.max_items or None], data_cfg)
    else:
        entries = _shard_entries(name, ds, data_cfg, skipped)
        source = ShardSource(entries[: ds.max_items or None], with_text=ds.kind == "cached")
    if len(source) == 0:
        detail = f" ({_describe(skipped)} skipped)" if skipped else ""
        raise DataError(f"dataset {name!r} ({ds.kind} at {ds.path}) has no usable samples{detail}")
    return source, skipped


def _require_path(name: str, ds: DatasetConfig, want_dir: bool) -> Path:
    path = Path(ds.path)
    if not ds.path or not (path.is_dir() if want_dir else path.is_file()):
        raise DataError(f"dataset {name!r} ({ds.kind}): path {ds.path!r} is not an existing "
                        f"{'folder' if want_dir else 'file'}")
    return path


def _csv_entries(name: str, ds: DatasetConfig, skipped: Counter) -> list[tuple[Path, str]]:
    path = _require_path(name, ds, want_dir=False)
    root = Path(ds.video_root) if ds.video_root else path.parent
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        columns = reader.fieldnames or []
        if ds.caption_column not in columns:
            raise DataError(f"dataset {name!r}: {path} has no caption column {ds.caption_column!r} "
                            f"(columns: {', '.join(columns)})")
        if ds.path_column not in columns and "videoid" not in columns:
            raise DataError(f"dataset {name!r}: {path} has neither a {ds.path_column!r} column nor 'videoid' "
                            f"(columns: {', '.join(columns)})")
        entries = []
        for row in reader:
            caption = (row.get(ds.caption_column) or "").strip()
            if not caption:
                skipped["no_caption"] += 1
                continue
            entries.append((root / _relative_video_path(row, ds.path_column), caption))
    return entries


def _relative_video_path(row: dict, path_column: str) -> str:
    if row.get(path_column):
        return row[path_column]
    if row.get("page_dir"):
        return f"{row['page_dir']}/{row['videoid']}.mp4"
    return f"{row['videoid']}.mp4"


def _folder_entries(name: str, ds: DatasetConfig, skipped: Counter) -> list[tuple[Path, str]]:
    folder = _require_path(name, ds, want_dir=True)
    entries = []
    for video in sorted(p for p in folder.rglob("*") if p.suffix.lower() in VIDEO_EXTENSIONS and p.is_file()
                        and not p.name.startswith(".")):
        text = video.with_suffix(".txt")
        caption = text.read_text(encoding="utf-8", errors="replace").strip() if text.is_file() else ""
        if not caption:
            skipped["no_caption"] += 1
            log.warning("data[%s]: %s has no caption (%s missing or empty); skipped", name, video, text.name)
            continue
        entries.append((video, caption))
    return entries


def _shard_entries(name: str, ds: DatasetConfig, data_cfg: DataConfig, skipped: Counter):
    folder = _require_path(name, ds, want_dir=True)
    entries = []
    for shard, records in shards.read_manifests(folder).items():
        path = folder / shard
        if not records:  # a cache shard whose videos were all unusable has no file
            continue
        if not path.is_file():
            skipped["missing_shard"] += 1
            log.warning("data[%s]: %s is listed in a manifest but missing; skipped", name, path)
            continue
        entries.extend((path, row, record) for row, record in enumerate(records))
    if entries:
        _check_latent_shape(name, entries[0][0], data_cfg)
    return entries


def _check_latent_shape(name: str, path: Path, data_cfg: DataConfig) -> None:
    with safe_open(str(path), "pt") as f:
        shape = tuple(f.get_slice("latents").get_shape()[1:])
    want = (data_cfg.frames, 4, data_cfg.size // 8, data_cfg.size // 8)
    if shape != want:
        raise DataError(f"dataset {name!r}: {path} holds latents of shape {shape} per clip, but data.frames and "
                        f"data.size ask for {want}")


def _describe(counts: Counter) -> str:
    return ", ".join(f"{n} {reason.replace('_', ' ')}" for reason, n in sorted(counts.items())) or "none"


# ----------------------------------------------------------------------------- loader

def dataset_shard(ranks, rank: int, world_size: int, dataset: str) -> tuple[int, int]:
    """(shard index, shard count) of `rank` among the ranks whose table entry uses `dataset`.

    `ranks` is the ranks table (entries with a `.dataset`); global rank r uses ranks[r % len(ranks)].
    """
    peers = [r for r in range(world_size) if ranks[r % len(ranks)].dataset == dataset]
    if rank not in peers:
        raise DataError(f"rank {rank} is not assigned dataset {dataset!r} in the ranks table")
    return peers.index(rank), len(peers)


class ClipLoader:
    """Infinite iterator of `Batch`es over this rank's share of one dataset, resumable at any batch.

    Samples are consumed strictly in visiting order; with data.prefetch > 0 the next ones are loaded in
    background threads meanwhile (opencv decodes without the GIL). Their results are the same either way,
    so the state (epoch, position of the next sample to consume) is all that resuming needs.
    """

    def __init__(self, name: str, source, skipped: Counter, data_cfg: DataConfig, shard: int, num_shards: int,
                 base=None, batch_size: int = 1):
        self.name, self.source, self.cfg = name, source, data_cfg
        self.shard, self.num_shards, self.base, self.batch_size = shard, num_shards, base, batch_size
        self.epoch, self.position = 0, 0
        self.stats: Counter = Counter(skipped)
        self.stats["loaded"] = 0
        self.shard_len = len(range(shard, len(source), num_shards))
        self._order_epoch, self._order = None, []
        self._queue: deque = deque()  # (epoch, position after, load result thunk), in visiting order
        self._cursor = (0, 0)  # the next (epoch, position) to queue
        self._pool = (ThreadPoolExecutor(data_cfg.prefetch, thread_name_prefix=f"data-{name}")
                      if data_cfg.prefetch else None)

    def __iter__(self) -> Iterator[Batch]:
        return self

    def epoch_order(self, epoch: int) -> list[int]:
        """Dataset indices this rank visits in `epoch`, in order."""
        if self._order_epoch != epoch:
            generator = torch.Generator().manual_seed(self.cfg.seed + epoch)
            self._order = torch.randperm(len(self.source), generator=generator)[self.shard::self.num_shards].tolist()
            self._order_epoch = epoch
        return self._order

    def _load(self, index: int, epoch: int):
        """The sample, or the Skip explaining why not (returned, so it crosses threads as a value)."""
        try:
            return self.source.load(index, sample_rng(self.cfg.seed, epoch, index), self.cfg.hflip)
        except Skip as skip:
            return skip

    def _fill(self) -> None:
        while len(self._queue) < max(1, self.cfg.prefetch):
            epoch, position = self._cursor
            if position >= self.shard_len:
                self._cursor = (epoch + 1, 0)
                continue
            index = self.epoch_order(epoch)[position]
            self._cursor = (epoch, position + 1)
            if self._pool is None:
                thunk = lambda index=index, epoch=epoch: self._load(index, epoch)  # noqa: E731
            else:
                thunk = self._pool.submit(self._load, index, epoch).result
            self._queue.append((epoch, position + 1, thunk))

    def __next__(self) -> Batch:
        examples, misses = [], 0
        while len(examples) < self.batch_size:
            self._fill()
            epoch, position, thunk = self._queue.popleft()
            outcome = thunk()
            self.epoch, self.position = epoch, position
            if isinstance(outcome, Skip):
                misses += 1
                self.stats[outcome.reason] += 1
                log.warning("data[%s] rank shard %d/%d: skipped (%s) %s; skipped so far: %s", self.name, self.shard,
                            self.num_shards, outcome.reason.replace("_", " "), outcome, self.skip_summary())
                if misses > self.shard_len:
                    raise DataError(f"dataset {self.name!r}: a whole epoch of this rank's shard is unusable "
                                    f"({self.skip_summary()})")
                continue
            examples.append(outcome)
            self.stats["loaded"] += 1
            misses = 0
        return self._collate(examples)

    def _collate(self, examples: list[Example]) -> Batch:
        device = self.base.vae.quant_conv.weight.device if self.base is not None else torch.device("cpu")
        if examples[0].pixels is not None:
            latents = self.base.encode_video(torch.stack([e.pixels for e in examples]))
        else:  # stored half precision goes to the device first, then float32
            latents = torch.stack([e.latents for e in examples]).to(device).float()
        texts = [e.text_embedding for e in examples]
        text = torch.stack(texts).to(device).float() if all(t is not None for t in texts) else None
        return Batch(latents=latents, prompts=[e.prompt for e in examples], text_embeddings=text,
                     sample_ids=[e.sample_id for e in examples])

    def close(self) -> None:
        """Stops the prefetch threads (queued loads are dropped)."""
        self._queue.clear()
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)

    def skip_summary(self) -> str:
        return _describe(Counter({k: v for k, v in self.stats.items() if k != "loaded"}))

    def state_dict(self) -> dict:
        return {"dataset": self.name, "num_items": len(self.source), "shard": self.shard,
                "num_shards": self.num_shards, "epoch": self.epoch, "position": self.position,
                "stats": dict(self.stats)}

    def load_state_dict(self, state: dict) -> None:
        mine = (self.name, len(self.source), self.shard, self.num_shards)
        theirs = (state["dataset"], state["num_items"], state["shard"], state["num_shards"])
        if mine != theirs:
            raise DataError(f"cannot resume the data position: the checkpoint read dataset {theirs[0]!r} with "
                            f"{theirs[1]} samples as shard {theirs[2]} of {theirs[3]}, this run reads {mine[0]!r} "
                            f"with {mine[1]} samples as shard {mine[2]} of {mine[3]}")
        self.epoch, self.position = state["epoch"], state["position"]
        self.stats = Counter(state.get("stats", {}))
        self._queue.clear()  # loads queued for the old position are dropped
        self._cursor = (self.epoch, self.position)

    def probe(self) -> None:
        """Loads samples of this rank's first epoch until one works; DataError if none does."""
        reasons: Counter = Counter()
        for index in self.epoch_order(0):
            try:
                self.source.load(index, sample_rng(self.cfg.seed, 0, index), False)
                return
            except Skip as skip:
                reasons[skip.reason] += 1
        raise DataError(f"dataset {self.name!r}: none of the {sum(reasons.values())} samples of shard "
                        f"{self.shard}/{self.num_shards} is usable ({_describe(reasons)})")


def build_loader(data_cfg: DataConfig, dataset_name: str, rank: int, world_size: int, base=None,
                 batch_size: int = 1, ranks=None) -> ClipLoader:
    """The loader of `dataset_name` for global `rank`; checks that the rank's share has a usable sample.

    With `ranks` (the ranks table), the dataset is split only over the ranks that use it; without it,
    over all `world_size` ranks (every rank then reads the same dataset).
    """
    if dataset_name not in data_cfg.datasets:
        raise DataError(f"dataset {dataset_name!r} is not defined; [data.datasets] has: "
                        f"{', '.join(sorted(data_cfg.datasets)) or 'nothing'}")
    ds = data_cfg.datasets[dataset_name]
    if ds.kind in VIDEO_KINDS and base is None:
        raise DataError(f"dataset {dataset_name!r} ({ds.kind}) holds pixels: the loader needs the base model's VAE")
    if batch_size < 1:
        raise DataError(f"batch_size must be >= 1, got {batch_size}")
    shard, num_shards = dataset_shard(ranks, rank, world_size, dataset_name) if ranks else (rank, world_size)
    source, skipped = index_dataset(dataset_name, ds, data_cfg)
    if len(source) < num_shards:
        raise DataError(f"dataset {dataset_name!r} ({ds.path}) has {len(source)} samples for {num_shards} ranks")
    loader = ClipLoader(dataset_name, source, skipped, data_cfg, shard, num_shards, base, batch_size)
    loader.probe()
    log.info("data[%s]: %d samples (%s), rank %d reads shard %d of %d (%d per epoch); skipped when indexing: %s",
             dataset_name, len(source), ds.kind, rank, shard, num_shards, len(loader.epoch_order(0)),
             _describe(skipped))
    return loader
