"""Exports the student motion module as the official AnimateDiff-Lightning files, through lightning_core.formats.

animatediff_lightning_{N}step_comfyui.safetensors (original naming, as ByteDance's _comfyui files) and
animatediff_lightning_{N}step_diffusers.safetensors (MotionAdapter naming), both with the step count
in the `animatediff_lightning_steps` metadata our loader reads.
"""
from __future__ import annotations

from pathlib import Path

import torch

from lightning_core import formats
from trainer.shards import DTYPES



def export_paths(out_dir, steps: int) -> dict[str, Path]:
    out_dir = Path(out_dir)
    return {layout: out_dir / f"animatediff_lightning_{steps}step_{suffix}.safetensors"
            for layout, suffix in (("original", "comfyui"), ("diffusers", "diffusers"))}


def export_student(student: torch.nn.Module, out_dir, steps: int, dtype: str = "float16") -> dict[str, Path]:
    """Writes both layouts atomically; returns {layout: path}."""
    if dtype not in DTYPES:
        raise ValueError(f"checkpoint.export_dtype must be one of {', '.join(DTYPES)}, not {dtype!r}")
    sd = {k: v.detach().to("cpu", DTYPES[dtype]) for k, v in student.state_dict().items()}
    metadata = {formats.STEPS_METADATA_KEY: str(steps), "format": "pt"}
    paths = export_paths(out_dir, steps)
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    for layout, path in paths.items():
        formats.save_motion_module(path, sd, layout=layout, metadata=metadata)
    return paths
