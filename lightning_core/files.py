"""Atomic file writes, shared by the nodes, the trainer and the test fixtures: readers see the old file or the
new one, never half of one, and a process killed mid-write leaves only a hidden temporary file behind."""
from __future__ import annotations

import contextlib
import os
import uuid
from pathlib import Path


@contextlib.contextmanager
def atomic_path(path, keep_suffix: bool = False):
    """Yields a temporary path beside `path` to write to; on success it is fsynced and renamed onto `path`
    (one os.replace on one filesystem); an error removes it (an interrupt leaves it, as a kill would: writers
    that resume clean up their own stale temporaries). The name is `.<name>.<pid>.<random>.tmp`, or ends
    in `path`'s own suffix with keep_suffix (for writers that choose the format by it, such as opencv's)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp"
                         + (path.suffix if keep_suffix else ""))
    try:
        yield tmp
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except Exception:
        tmp.unlink(missing_ok=True)
        raise


def write_text_atomic(path, text: str) -> None:
    """Replaces a text file's content atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)
