"""Test harness around a real ComfyUI server (see comfy_server.py).

Helpers here read what a finished prompt produced.
"""
from __future__ import annotations

from pathlib import Path

from .comfy_server import REPO_ROOT, ComfyError, ComfyServer, PromptRejected, Result  # noqa: F401

PACKAGE_DIR_NAME = "ComfyUI-AnimateDiff-Lightning"  # as users clone it into custom_nodes/
REPO_ROOT_INIT = REPO_ROOT / "__init__.py"  # what ComfyUI imports as our package
MODEL_DIRS = ("checkpoints", "animatediff_models", "animatediff_motion_lora", "vae", "loras", "controlnet")
THIRD_PARTY = REPO_ROOT.parent / "shared" / "third_party"  # beside the checkout, as CI lays it out
NODE_PACKS = ("ComfyUI_IPAdapter_plus", "ComfyUI-Advanced-ControlNet")  # unmodified snapshots, see its README


def missing_node_packs() -> list[str]:
    """The NODE_PACKS not found in THIRD_PARTY."""
    return [name for name in NODE_PACKS if not (THIRD_PARTY / name).is_dir()]


def link_node_packs(custom_nodes: Path) -> None:
    """Installs the NODE_PACKS into a server's custom_nodes/ as symlinks (nothing of them is copied)."""
    for name in NODE_PACKS:
        (custom_nodes / name).symlink_to(THIRD_PARTY / name, target_is_directory=True)


def uses_node_packs(workflow: Path) -> bool:
    """Whether a workflow file (UI or API format) uses IPAdapter_plus or Advanced-ControlNet nodes, and so runs in
    the server that has them installed (`comfy_packs`) rather than the plain one."""
    import json

    data = json.loads(Path(workflow).read_text())
    types = [node["type"] for node in data["nodes"]] if "nodes" in data else [n["class_type"] for n in data.values()]
    return any(t.startswith(("IPAdapter", "ACN_")) for t in types)


def outputs_of(result: Result, node_id: str | int) -> dict:
    """The UI output of one node, e.g. {"images": [{"filename", "subfolder", "type"}]}."""
    result.raise_for_error()
    node_id = str(node_id)
    if node_id not in result.outputs:
        raise KeyError(f"node {node_id} has no output; nodes with output: {sorted(result.outputs)}")
    return result.outputs[node_id]


def output_files(base_dir: Path, result: Result, node_id: str | int) -> list[Path]:
    """Files a node saved, resolved under the server's base dir.

    Every list in a node's output whose items name a file counts (images,
    gifs, videos...); `type` is the folder: output/, temp/ or input/.
    """
    paths = []
    for items in outputs_of(result, node_id).values():
        for item in items if isinstance(items, list) else []:
            if isinstance(item, dict) and "filename" in item:
                folder = Path(base_dir) / item.get("type", "output")
                paths.append(folder / item.get("subfolder", "") / item["filename"])
    return paths


def saved_files(base_dir: Path, pattern: str = "*") -> list[Path]:
    """All files under the base dir's output/ matching a glob, oldest first."""
    out = Path(base_dir) / "output"
    return sorted((p for p in out.rglob(pattern) if p.is_file()), key=lambda p: p.stat().st_mtime)


def check_saved_video(base_dir: Path, result: Result, prompt: dict, frames: int, size: int, fps=None) -> None:
    """The shipped workflows' two outputs: an animated WEBP of `frames` frames of size x size, and an H.264 MP4
    with as many frames (at `fps` when given; nodes found by class in the API prompt)."""
    import av
    import pytest
    from PIL import Image

    ids = {node["class_type"]: nid for nid, node in prompt.items()}
    [webp] = output_files(base_dir, result, ids["SaveAnimatedWEBP"])
    with Image.open(webp) as image:
        assert image.n_frames == frames and image.size == (size, size)
    [mp4] = output_files(base_dir, result, ids["SaveVideo"])
    with av.open(str(mp4)) as container:
        stream = container.streams.video[0]
        assert stream.codec_context.name == "h264"
        assert fps is None or float(stream.average_rate) == pytest.approx(fps)
        assert sum(1 for _ in container.decode(stream)) == frames
