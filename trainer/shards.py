"""Clip shards on disk, shared by `generate`, `cache` and the loaders that read them.

A shard `<prefix>-<number:06d>.safetensors` holds stacked tensors (row r = clip r) and a single metadata key
"clips": a JSON list with one record per row (sorted keys, so equal shards are equal bytes). It is written
under a temporary name and renamed, so a shard file is always complete. Each writer (rank) appends one
line per finished shard to its own `manifest-<rank:05d>.jsonl`: {"shard": name, "clips": [records]}.
A shard is done once a manifest lists it; a kill between the rename and the append leaves a complete
but unlisted shard, which the writer adopts on resume. Readers use the manifests, never the file listing.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from lightning_core.files import atomic_path

MANIFEST_GLOB = "manifest-*.jsonl"
DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}
"""Storage dtypes the trainer writes tensors in (shards, caches, exports), by their config names."""


def shard_name(prefix: str, number: int) -> str:
    return f"{prefix}-{number:06d}.safetensors"


def manifest_path(folder, rank: int) -> Path:
    return Path(folder) / f"manifest-{rank:05d}.jsonl"


def write_shard(folder, name: str, tensors: dict[str, torch.Tensor], records: list[dict]) -> Path:
    """Writes one shard atomically (temporary file, fsync, rename)."""
    path = Path(folder) / name
    tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={"clips": json.dumps(records, sort_keys=True)})
    return path


def read_records(path) -> list[dict]:
    """The per-row records stored in a shard's metadata."""
    with safe_open(str(path), "pt") as f:
        return json.loads((f.metadata() or {})["clips"])


def read_row(path, keys: tuple[str, ...], row: int) -> dict[str, torch.Tensor]:
    """Row `row` of each named tensor (only that row is read from disk); keys not in the shard are left out."""
    with safe_open(str(path), "pt") as f:
        present = set(f.keys())
        return {k: f.get_slice(k)[row] for k in keys if k in present}


def append_manifest(folder, rank: int, name: str, records: list[dict], extra: dict | None = None) -> None:
    """Appends one shard's line to this writer's manifest (one write, then fsync); `extra` adds fields."""
    path = manifest_path(folder, rank)
    repair_manifest(path)
    line = json.dumps({**(extra or {}), "shard": name, "clips": records}, sort_keys=True) + "\n"
    with open(path, "a", encoding="utf-8") as f:
        f.write(line)
        f.flush()
        os.fsync(f.fileno())


def repair_manifest(path) -> None:
    """Cuts a partial last line (a kill during the append), so the next append starts on a fresh line."""
    path = Path(path)
    if not path.exists():
        return
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        with open(path, "r+b") as f:
            f.truncate(data.rfind(b"\n") + 1)


def read_manifests(folder) -> dict[str, list[dict]]:
    """Every shard listed by any manifest in `folder`: {shard name: records}, sorted by name.

    A line that does not parse can only be the partial last line of a killed writer; it is ignored.
    """
    shards = {}
    for manifest in sorted(Path(folder).glob(MANIFEST_GLOB)):
        for line in manifest.read_text(encoding="utf-8").splitlines():
            try:
                entry = json.loads(line)
                shards.setdefault(entry["shard"], entry["clips"])
            except (json.JSONDecodeError, KeyError, TypeError):
                continue
    return dict(sorted(shards.items()))
