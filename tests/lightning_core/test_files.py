"""lightning_core.files: the one atomic write the nodes, trainer and fixtures share."""
import pytest

from lightning_core.files import atomic_path, write_text_atomic


def test_atomic_path_replaces_whole_or_not_at_all(tmp_path):
    target = tmp_path / "sub" / "clip.mp4"
    with atomic_path(target, keep_suffix=True) as tmp:
        assert tmp.parent == target.parent and tmp.name.startswith(".clip.mp4.") and tmp.suffix == ".mp4"
        tmp.write_bytes(b"new")
        assert not target.exists()  # nothing at the final name until the block ends
    assert target.read_bytes() == b"new"
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("writer failed")
    assert target.read_bytes() == b"new" and [p.name for p in target.parent.iterdir()] == ["clip.mp4"]
    write_text_atomic(tmp_path / "caption.txt", "a red circle")
    assert (tmp_path / "caption.txt").read_text() == "a red circle"
