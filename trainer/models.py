"""What each rank holds: its own frozen base model, the frozen teacher motion module, the trainable student.

AnimateDiff-Lightning 3.2: F_i = f_i o m. Rank r loads base f_i from ranks[r % len(ranks)]; every rank
initialises the student m from the same teacher file (AnimateDiff v2), so the students start equal.
The flow index i of a rank is the position of its base path among the table's distinct bases (SD1.5 on
two ranks is one flow).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from lightning_core import context, formats
from lightning_core.motion_module import MotionModuleSet
from trainer import distributed
from trainer.config import Config, ConfigError, rank_config
from trainer.sd15 import BaseModel, BaseModelError, load_base_model, tiny_motion_config, write_tiny_base_model


@dataclass
class RankModels:
    base: BaseModel
    teacher: MotionModuleSet
    """The original (AnimateDiff v2) teacher: stage-1 teacher and the discriminator's motion backbone."""
    student: MotionModuleSet
    flow: int
    num_flows: int


def flow_indices(cfg: Config) -> list[int]:
    """Flow index of every entry of the ranks table: distinct base paths, numbered in order of first use."""
    distinct = list(dict.fromkeys(r.base for r in cfg.ranks))
    return [distinct.index(r.base) for r in cfg.ranks]


def flow_names(cfg: Config) -> list[str]:
    """A name per flow for the metrics: the ranks table's `name` of its first entry, else its base file's stem."""
    names = {}
    for flow, entry in zip(flow_indices(cfg), cfg.ranks):
        names.setdefault(flow, entry.name or Path(entry.base).stem)
    return [names[f] for f in sorted(names)]


def write_tiny_models(cfg: Config, rank: int) -> None:
    """Tiny CPU recipe: rank 0 writes every missing base (seed = flow index) and a tiny random teacher."""
    if rank == 0:
        for flow, entry in zip(flow_indices(cfg), cfg.ranks):
            if not Path(entry.base).exists():
                write_tiny_base_model(entry.base, seed=0, style=flow)  # fine-tunes of one tiny "SD1.5"
        teacher = Path(cfg.model.teacher)
        if not teacher.exists():
            base = load_base_model(cfg.ranks[0].base)
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(cfg.run.seed + 12345)
                module = MotionModuleSet(tiny_motion_config(base.config))
            teacher.parent.mkdir(parents=True, exist_ok=True)
            formats.save_motion_module(teacher, module.state_dict())
    distributed.barrier()


def load_motion(path, device) -> MotionModuleSet:
    """A motion module from any layout lightning_core.formats loads, in float32."""
    sd, _ = formats.load_motion_module(path)
    return MotionModuleSet.from_state_dict({k: v.float() for k, v in sd.items()}).to(device)


def load_rank_models(cfg: Config, rank: int, device, base_dtype=torch.float32) -> RankModels:
    entry = rank_config(cfg, rank)
    base = load_base_model(entry.base, device=device, dtype=base_dtype, tokenizer_dir=cfg.model.tokenizer_dir or None)
    teacher = load_motion(cfg.model.teacher, device).requires_grad_(False).eval()
    try:
        base.unet.motion_layout(teacher)
    except ValueError as e:
        raise BaseModelError(f"base model {entry.base} (rank {rank}) does not fit the teacher motion module "
                             f"{cfg.model.teacher}: {e}") from None
    try:  # the same rule the sampler nodes apply to a latent batch
        context.check_frames("data.frames", cfg.data.frames, teacher.config.position_encoding_length,
                             f"the teacher {cfg.model.teacher} was trained on 16")
    except ValueError as e:
        raise ConfigError(str(e)) from None
    student = load_motion(cfg.model.teacher, device).requires_grad_(True).train()
    flows = flow_indices(cfg)
    return RankModels(base=base, teacher=teacher, student=student, flow=flows[rank % len(cfg.ranks)],
                      num_flows=max(flows) + 1)


def motion_from_state(sd: dict, device) -> MotionModuleSet:
    """A frozen MotionModuleSet from a canonical state dict (a distilled stage's snapshot)."""
    return MotionModuleSet.from_state_dict({k: v.float() for k, v in sd.items()}).to(device).requires_grad_(False).eval()
