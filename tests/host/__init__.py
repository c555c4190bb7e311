"""Test harness around a real ComfyUI server (see comfy_server.py).

Helpers here read what a finished prompt produced.
"""
from __future__ import annotations

from pathlib import Path

from .comfy_server import REPO_ROOT, ComfyError, ComfyServer, PromptRejected, Result  # noqa: F401

PACKAGE_DIR_NAME = "ComfyUI-AnimateDiff-Lightning"  # as users clone it into custom_nodes/
REPO_ROOT_INIT = REPO_ROOT / "__init__.py"  # what ComfyUI imports as our package
MODEL_DIRS = ("checkpoints", "animatediff_models", "animatediff_motion_lora", "vae", "loras", "controlnet")


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
