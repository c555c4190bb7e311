"""`python -m trainer eval`: the paper's Table 2 protocol (AnimateDiff-Lightning 4.2) as a command.

For every base in `eval.bases` (seen and unseen in training), every prompt i is rendered with seed
`clip_seed(eval.seed, i)`, the same seed on every base: by the student (`eval.student`, Euler on the
trailing schedule at its step count, no CFG, as the Lightning models are used) and by the reference (the
original AnimateDiff, `model.teacher`: 32 Euler steps, CFG 7.5, the empty prompt as the negative). The
reference latents are cached per base in the output folder, so the evaluation at every stage end renders
them once.

Metrics per base, one JSON line each in `<output>/eval.jsonl`:
  latent_rmse        RMS distance of the student's latents to the reference's (same prompt and seed)
  frame_diff_student, frame_diff_reference
                     temporal consistency of the decoded frames: mean |frame_k+1 - frame_k| in [-1, 1] pixels
  fvd                with `eval.i3d` (an I3D Kinetics-400 state dict): Frechet distance of the student's
                     clips to the reference's in I3D logit space (the paper's FVD, on our prompt count)
  clip_score         with `eval.clip` (a CLIP ViT checkpoint): 100 x mean cosine(frame, prompt), clipped at 0
Grids (`<base>.png`: per prompt, the student's frames above the reference's) and MP4s (student | reference
side by side) land next to the JSONL.
"""
from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import cv2
import numpy as np
import torch
from safetensors.torch import load_file, save_file

from lightning_core import sampling
from trainer.config import EvalBase, EvalConfig
from trainer.data import DataError

log = logging.getLogger("trainer.eval")

DEFAULT_PROMPTS = ["a red fox running through snow", "waves crashing on a rocky beach at sunset",
                   "a woman walking in a busy city street", "fireworks over a river at night"]


# ----------------------------------------------------------------------------- metrics

def latent_rmse(student: torch.Tensor, reference: torch.Tensor) -> float:
    """RMS of the difference of two latent batches [b, f, c, h, w]."""
    return float((student.double() - reference.double()).square().mean().sqrt())


def frame_difference(pixels: torch.Tensor) -> float:
    """Mean absolute change between consecutive frames of [b, f, 3, H, W] pixels (lower: steadier video)."""
    return float((pixels[:, 1:].double() - pixels[:, :-1].double()).abs().mean())


def frechet_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    """||mu_a - mu_b||^2 + Tr(S_a + S_b - 2 (S_a S_b)^1/2) of two feature sets [n, d] (FVD, FID).

    Tr((S_a S_b)^1/2) = sum of sqrt(eig(S_a^1/2 S_b S_a^1/2)), a symmetric PSD product, so one eigh each."""
    a, b = a.double(), b.double()
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = (torch.cov(x.T).reshape(x.shape[1], x.shape[1]) for x in (a, b))
    w, v = torch.linalg.eigh(cov_a)
    root_a = (v * w.clamp(min=0).sqrt()) @ v.T
    middle = torch.linalg.eigvalsh(root_a @ cov_b @ root_a).clamp(min=0).sqrt().sum()
    return float((mu_a - mu_b).square().sum() + cov_a.trace() + cov_b.trace() - 2 * middle)


def load_state_dict(path: str, what: str) -> dict:
    """A state dict from .safetensors or a tensors-only torch file (weights_only: no code runs)."""
    file = Path(path)
    if not file.is_file():
        raise DataError(f"eval.{what}: {path!r} is not a file")
    try:
        if file.suffix == ".safetensors":
            return load_file(str(file))
        sd = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as e:
        raise DataError(f"eval.{what}: cannot read {file} as .safetensors or a tensors-only torch file: {e}") from None
    if not isinstance(sd, dict):
        raise DataError(f"eval.{what}: {file} does not hold a state dict")
    return sd.get("state_dict", sd)


def load_i3d(path: str, device):
    from trainer.i3d import InceptionI3d

    sd = load_state_dict(path, "i3d")
    model = InceptionI3d()
    try:
        model.load_state_dict(sd, strict=True)
    except RuntimeError as e:
        raise DataError(f"eval.i3d: {path} is not an I3D Kinetics-400 state dict in the layout trainer/i3d.py "
                        f"names ({str(e).splitlines()[0]})") from None
    return model.to(device).eval().requires_grad_(False)


@torch.no_grad()
def i3d_features(i3d, pixels: torch.Tensor, batch: int = 4) -> torch.Tensor:
    """FVD features [b, 400] of decoded clips [b, f, 3, H, W] in [-1, 1]."""
    from trainer.i3d import prepare_video

    device = next(i3d.parameters()).device
    return torch.cat([i3d.features(prepare_video(c).to(device)).float().cpu() for c in pixels.split(batch)])


# ----------------------------------------------------------------------------- rendering

def reference_key(base_path: str, teacher_path: str, prompts, seeds, ev: EvalConfig, frames: int, size: int) -> str:
    """Cache name of a base's reference latents: everything they depend on, hashed."""
    parts = [Path(base_path).resolve(), Path(teacher_path).resolve(), Path(base_path).stat().st_size,
             Path(teacher_path).stat().st_size, prompts, seeds, ev.reference_steps, ev.reference_cfg, frames, size]
    return hashlib.sha256(json.dumps(parts, default=str).encode()).hexdigest()[:16]


def render(base, motion, prompts, seeds, frames, size, steps, cfg_scale) -> torch.Tensor:
    """Euler on the trailing schedule, one clip at a time (memory), float32 latents [b, f, 4, h, w]."""
    from trainer.generate import sample_clips

    return torch.cat([sample_clips(base, motion, [p], [s], frames, size, steps, cfg_scale,
                                   sampler=sampling.sample_euler).float().cpu() for p, s in zip(prompts, seeds)])


def write_grid(path: Path, student: torch.Tensor, reference: torch.Tensor) -> None:
    """PNG: for each clip, the student's frames in one row and the reference's in the row below."""
    rows = [torch.cat(list(clip), dim=-1) for pair in zip(student, reference) for clip in pair]  # [3, H, f W]
    image = ((torch.cat(rows, dim=-2).clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).numpy()
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_RGB2BGR))


def evaluate_base(base, student, teacher, entry: EvalBase, prompts, seeds, ev: EvalConfig, frames: int, size: int,
                  out: Path, teacher_path: str, i3d=None, clip=None) -> dict:
    """One base's row of the table (see the module docstring)."""
    cache = out / "reference" / f"{Path(entry.path).stem}-{reference_key(entry.path, teacher_path, prompts, seeds, ev, frames, size)}.safetensors"
    if cache.is_file():
        reference = load_file(str(cache))["latents"]
    else:
        reference = render(base, teacher, prompts, seeds, frames, size, ev.reference_steps, ev.reference_cfg)
        cache.parent.mkdir(parents=True, exist_ok=True)
        save_file({"latents": reference.contiguous()}, str(cache))
    latents = render(base, student, prompts, seeds, frames, size, ev.student_steps, 1.0)
    pixels, ref_pixels = base.decode_video(latents).cpu(), base.decode_video(reference).cpu()
    row = {"base": entry.name, "seen": entry.seen, "student_steps": ev.student_steps, "clips": len(prompts),
           "latent_rmse": latent_rmse(latents, reference), "frame_diff_student": frame_difference(pixels),
           "frame_diff_reference": frame_difference(ref_pixels)}
    if i3d is not None:
        row["fvd"] = frechet_distance(i3d_features(i3d, pixels), i3d_features(i3d, ref_pixels))
    if clip is not None:
        row["clip_score"] = clip.score(pixels, prompts)
    stem = entry.name.replace("/", "_").replace(" ", "_")
    write_grid(out / f"{stem}-{ev.student_steps}step.png", pixels, ref_pixels)
    if ev.save_mp4:
        from trainer.generate import write_mp4
        for i, (a, b) in enumerate(zip(pixels, ref_pixels)):
            write_mp4(out / "mp4" / f"{stem}-{ev.student_steps}step-{i:03d}.mp4", torch.cat([a, b], dim=-1), ev.fps)
    return row


def eval_bases(cfg) -> list[EvalBase]:
    if cfg.eval.bases:
        return cfg.eval.bases
    distinct = {}
    for r in cfg.ranks:
        distinct.setdefault(r.base, r.name or Path(r.base).stem)
    return [EvalBase(name, path, True) for path, name in distinct.items()]


@torch.no_grad()
def run_eval(cfg, device, student=None, label: str = "", student_steps: int | None = None) -> list[dict]:
    """Evaluates `student` (a MotionModuleSet; default: the file eval.student) on every eval base; appends
    one JSON line per base (with `label`, e.g. the stage name) to <output>/eval.jsonl and returns the rows."""
    from dataclasses import replace

    from trainer.generate import clip_seed, read_prompts
    from trainer.models import load_motion
    from trainer.sd15 import load_base_model

    ev = cfg.eval if student_steps is None else replace(cfg.eval, student_steps=student_steps)
    out = Path(ev.output or Path(cfg.run.out_dir) / "eval")
    prompts = read_prompts(ev.prompts, ev.prompt_column) if ev.prompts else list(DEFAULT_PROMPTS)
    prompts = prompts[:ev.num_prompts] if ev.num_prompts else prompts
    seeds = [clip_seed(ev.seed, i) for i in range(len(prompts))]
    frames, size = ev.frames or cfg.data.frames, ev.size or cfg.data.size
    if student is None:
        if not ev.student:
            raise DataError("eval.student: give the motion module to evaluate (e.g. an export of the trainer)")
        student = load_motion(ev.student, device).requires_grad_(False).eval()
    teacher = load_motion(cfg.model.teacher, device).requires_grad_(False).eval()
    i3d = load_i3d(ev.i3d, device) if ev.i3d else None
    clip = None
    if ev.clip:
        from trainer.clip_score import load_clip_scorer
        clip = load_clip_scorer(ev.clip, device, cfg.model.tokenizer_dir or None)
    rows = []
    for entry in eval_bases(cfg):
        base = load_base_model(entry.path, device=device, tokenizer_dir=cfg.model.tokenizer_dir or None)
        was_training = student.training
        student.eval()
        row = evaluate_base(base, student, teacher, entry, prompts, seeds, ev, frames, size, out, cfg.model.teacher,
                            i3d, clip)
        student.train(was_training)
        rows.append({"label": label, **row} if label else row)
        del base
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "eval.jsonl", "a") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    return rows


def main(cfg, info) -> None:
    """`python -m trainer eval`: rank 0 evaluates eval.student; other ranks wait."""
    from trainer import distributed

    if info.is_master:
        for row in run_eval(cfg, info.device):
            print(json.dumps(row))
    distributed.barrier()
