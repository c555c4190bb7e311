"""Cross-model progressive adversarial distillation of an AnimateDiff motion module (AnimateDiff-Lightning).

One process (CPU or one GPU):
    python -m trainer train --config configs/tiny_cpu.toml
One machine, 8 GPUs (the paper's Table 1 on ranks 0-7):
    torchrun --standalone --nproc_per_node 8 -m trainer train --config configs/animatediff_lightning.toml
Several machines (run on each; the table repeats over ranks 8, 9, ...):
    torchrun --nnodes 8 --nproc_per_node 8 --rdzv-backend c10d --rdzv-endpoint HOST:29500 --rdzv-id RUN \
        -m trainer train --config configs/animatediff_lightning.toml
Every config field can be overridden: --optim.grad_accum 8 --stages.0.iterations 100.

Stages (AnimateDiff-Lightning 3.4, SDXL-Lightning 3.6): 128 -> 32 with MSE against the teacher with
CFG, then 32 -> 8 -> 4 -> 2 -> 1 adversarially, each first with the x_t-conditional and then with the
unconditional flow-conditional discriminator. The teacher of a stage is the student distilled to the
stage's teacher_steps (progressive distillation), or the original motion module for the first stage.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import math
import random
import time
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from lightning_core import losses
from trainer import checkpoint, distill, distributed
from trainer.config import Config, StageConfig, dump_toml, rank_config, to_dict
from trainer.data import build_loader
from trainer.discriminator import Discriminator
from trainer.export import export_student
from trainer.models import load_rank_models, motion_from_state, write_tiny_models


class NonFiniteLossError(FloatingPointError):
    """A loss became NaN or infinite; the message names the stage and step."""


def _autocast(cfg: Config, device):
    if device.type == "cuda" and cfg.run.mixed_precision == "bf16":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _adam(params, cfg: Config, stage: StageConfig):
    lr, betas = ((cfg.optim.mse_lr, cfg.optim.mse_betas) if stage.loss == "mse"
                 else (cfg.optim.lr, cfg.optim.betas))
    return torch.optim.Adam(params, lr=lr, betas=tuple(betas), weight_decay=0.0)


def _step(optimizer, params, grad_clip: float) -> float:
    """Average grads over ranks, clip, step; returns the global grad norm (before clipping)."""
    distributed.all_reduce_gradients(params)
    norm = torch.nn.utils.clip_grad_norm_(params, grad_clip if grad_clip > 0 else float("inf"))
    optimizer.step()
    return float(norm)


def _feature_shape(cfg: Config, base) -> tuple[int, int, int]:
    """(frames, h, w) of the mid-block features: latent size / 2^(levels - 1)."""
    down = 2 ** (len(base.config.channel_mult) - 1)
    latent = cfg.data.size // 8
    return (cfg.data.frames, max(1, latent // down), max(1, latent // down))


def build_discriminator(cfg: Config, models, stage_index: int, conditional: bool, device) -> Discriminator:
    """A fresh D per stage (SDXL-Lightning 3.6), identical on every rank: built from this rank's base, then
    rank 0's weights (ranks[0]'s base, the teacher motion module, a seeded head) are broadcast to all."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.run.seed * 1000 + stage_index)
        d = Discriminator(models.base.unet, models.teacher, models.num_flows, conditional,
                          _feature_shape(cfg, models.base)).to(device=device, dtype=torch.float32)
    d.unet.gradient_checkpointing = cfg.run.gradient_checkpointing
    distributed.broadcast_parameters(d)
    return d


def teacher_for(stage: StageConfig, distilled: dict, models, device):
    """Progressive distillation: the student distilled to teacher_steps, else the original teacher."""
    if stage.teacher_steps in distilled:
        return motion_from_state(distilled[stage.teacher_steps], device)
    return models.teacher


def train(cfg: Config, info: distributed.DistInfo) -> dict:
    """Runs (or resumes) every stage; returns the last logged metrics."""
    # ---------------------------------------------------------------- setup
    device, rank, world = info.device, info.rank, info.world_size
    out_dir, ckpt_dir = Path(cfg.run.out_dir), Path(cfg.run.out_dir) / "checkpoints"
    if info.is_master:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "config.toml").write_text(dump_toml(to_dict(cfg)))
    if cfg.run.cpu_threads:
        torch.set_num_threads(cfg.run.cpu_threads)
    if cfg.run.deterministic:
        torch.use_deterministic_algorithms(True)
    random.seed(cfg.run.seed + rank)
    np.random.seed(cfg.run.seed + rank)
    torch.manual_seed(cfg.run.seed + rank)
    noise_gen = torch.Generator().manual_seed(cfg.run.seed * 7919 + rank)  # all training noise; checkpointed

    if cfg.run.write_tiny_models:
        write_tiny_models(cfg, rank)
    base_dtype = torch.bfloat16 if device.type == "cuda" and cfg.run.mixed_precision == "bf16" else torch.float32
    models = load_rank_models(cfg, rank, device, base_dtype)
    base, student = models.base, models.student
    base.unet.gradient_checkpointing = cfg.run.gradient_checkpointing
    unet = torch.compile(base.unet) if cfg.run.compile else base.unet
    distributed.broadcast_parameters(student)  # equal already (same file); makes it explicit
    flow = torch.full((cfg.optim.batch_size,), models.flow, device=device, dtype=torch.long)
    uncond = base.encode_prompts([""]).float()
    alpha_bar = distill.alpha_bar_table(device)
    amp = _autocast(cfg, device)

    entry = rank_config(cfg, rank)
    if rank != 0:  # rank 0 first: it writes the synthetic videos of the tiny recipe when they are missing
        distributed.barrier()
    loader = build_loader(cfg.data, entry.dataset, rank, world, base, cfg.optim.batch_size, ranks=cfg.ranks)
    if rank == 0:
        distributed.barrier()

    # ---------------------------------------------------------------- resume
    start_stage, start_iteration, global_step, distilled, resumed = 0, 0, 0, {}, None
    path = checkpoint.latest(ckpt_dir) if cfg.checkpoint.resume else None
    if path is not None:
        resumed, mine = checkpoint.load(path, rank)
        checkpoint.check_compatible(resumed, path, world, to_dict(cfg.ranks))
        start_stage, start_iteration = resumed["stage"], resumed["iteration"]
        global_step, distilled = resumed["global_step"], resumed["distilled"]
        student.load_state_dict(resumed["student"])
        checkpoint.set_rng_state(mine["rng"], noise_gen)
        loader.load_state_dict(mine["data"])
        if info.is_master:
            print(f"resumed from {path}: stage {start_stage}, iteration {start_iteration}")
    batches = iter(loader)
    first_step = global_step
    metrics_file = open(out_dir / "metrics.jsonl", "a") if info.is_master else None
    tb = _tensorboard(out_dir) if info.is_master else None
    last = {}

    for stage_index in range(start_stage, len(cfg.stages)):
        stage = cfg.stages[stage_index]
        adversarial = stage.loss == "adversarial"
        teacher = teacher_for(stage, distilled, models, device)
        student_params = [p for p in student.parameters() if p.requires_grad]
        opt_g = _adam(student_params, cfg, stage)
        d = opt_d = None
        if adversarial:
            d = build_discriminator(cfg, models, stage_index, stage.discriminator == "conditional", device)
            opt_d = _adam(list(d.parameters()), cfg, stage)
        first = start_iteration if stage_index == start_stage else 0
        if resumed is not None and stage_index == start_stage:
            if resumed["opt_g"] is not None:
                opt_g.load_state_dict(resumed["opt_g"])
            if adversarial and resumed["discriminator"] is not None:
                d.load_state_dict(resumed["discriminator"])
                opt_d.load_state_dict(resumed["opt_d"])
            resumed = None

        stopped_mid_stage = False
        bar = tqdm(range(first, stage.iterations), desc=stage.name, disable=not info.is_master,
                   initial=first, total=stage.iterations)
        for iteration in bar:
            t0 = time.perf_counter()
            # ------------------------------------------------ G phase: student update (D frozen)
            if d is not None:
                d.requires_grad_(False)
            micro, g_loss = [], 0.0
            for _ in range(cfg.optim.grad_accum):
                batch = next(batches)
                x0 = batch.latents.to(device, torch.float32)
                context = (batch.text_embeddings if batch.text_embeddings is not None
                           else base.encode_prompts(batch.prompts)).to(device, torch.float32)
                b = x0.shape[0]
                u0 = distill.sample_start(b, stage.student_steps, stage.timesteps, noise_gen)
                plan = distill.plan_timesteps(u0, stage.teacher_steps, stage.student_steps).to(device)
                noise = torch.randn(x0.shape, generator=noise_gen).to(device)
                x_t = distill.add_noise(x0, noise, plan[:, 0], alpha_bar)
                with amp:
                    target = distill.teacher_solve(unet, teacher, x_t, plan, context, uncond, stage.cfg_scale,
                                                   alpha_bar)
                    fake = distill.student_jump(unet, student, x_t, plan, context, alpha_bar)
                    if adversarial:
                        t_d, d_noise = distill.sample_d_noise(plan[:, -1], x0.shape, stage.d_noise_timesteps,
                                                              stage.d_noise_weights, noise_gen)
                        with torch.no_grad():  # x_t does not depend on the student, and D is frozen here
                            cond = d.features(x_t, plan[:, 0], context, flow[:b]) if d.conditional else None
                        fake_d = distill.renoise(fake, plan[:, -1], t_d, d_noise, alpha_bar)
                        loss = losses.generator_loss(d(fake_d, t_d, context, flow[:b], cond))
                        micro.append((x_t, plan, context, target, t_d, d_noise))
                    else:
                        loss = losses.mse_distillation_loss(fake, target)
                (loss / cfg.optim.grad_accum).backward()
                g_loss += loss.item() / cfg.optim.grad_accum
            g_norm = _step(opt_g, student_params, cfg.optim.grad_clip)
            opt_g.zero_grad(set_to_none=True)
            if opt_d is not None:
                opt_d.zero_grad(set_to_none=True)
            stats = {"loss_g": g_loss, "grad_norm_g": g_norm}

            # ------------------------------------------------ D phase: discriminator update (fresh fakes)
            if d is not None:
                d.requires_grad_(True)
                d_loss, d_acc = 0.0, 0.0
                for x_t, plan, context, target, t_d, d_noise in micro:
                    b = x_t.shape[0]
                    with amp:
                        with torch.no_grad():  # fresh fakes from the just-updated student, same t* and eps*
                            fake = distill.student_jump(unet, student, x_t, plan, context, alpha_bar)
                            fake_d = distill.renoise(fake, plan[:, -1], t_d, d_noise, alpha_bar)
                            real_d = distill.renoise(target, plan[:, -1], t_d, d_noise, alpha_bar)
                        cond = d.features(x_t, plan[:, 0], context, flow[:b]) if d.conditional else None
                        real_logits = d(real_d, t_d, context, flow[:b], cond)
                        fake_logits = d(fake_d, t_d, context, flow[:b], cond)
                        loss = losses.discriminator_loss(real_logits, fake_logits)
                    (loss / cfg.optim.grad_accum).backward()
                    d_loss += loss.item() / cfg.optim.grad_accum
                    d_acc += losses.discriminator_accuracy(real_logits, fake_logits).item() / cfg.optim.grad_accum
                d_params = list(d.parameters())
                stats.update(loss_d=d_loss, d_accuracy=d_acc, grad_norm_d=_step(opt_d, d_params, cfg.optim.grad_clip))
                opt_d.zero_grad(set_to_none=True)
                opt_g.zero_grad(set_to_none=True)

            global_step += 1
            stats = distributed.all_reduce_mean(stats, device)
            if not all(math.isfinite(v) for v in stats.values()):
                bad = ", ".join(f"{k}={v}" for k, v in stats.items() if not math.isfinite(v))
                raise NonFiniteLossError(f"non-finite loss in stage {stage.name!r} at iteration {iteration} "
                                         f"(global step {global_step}): {bad}")
            last = {"stage": stage.name, "iteration": iteration + 1, "global_step": global_step,
                    "step_time_s": time.perf_counter() - t0, **stats}
            if info.is_master and (iteration + 1) % cfg.run.log_every == 0:
                metrics_file.write(json.dumps(last) + "\n")
                metrics_file.flush()
                bar.set_postfix({k: f"{v:.4g}" for k, v in stats.items() if k.startswith("loss")})
                if tb is not None:
                    for k, v in stats.items():
                        tb.add_scalar(f"{stage.name}/{k}", v, global_step)

            done = iteration + 1 == stage.iterations
            stop = cfg.run.max_steps and global_step - first_step >= cfg.run.max_steps
            if not done and ((iteration + 1) % cfg.checkpoint.every == 0 or stop):
                _save(cfg, ckpt_dir, info, stage_index, iteration + 1, global_step, models, distilled, opt_g, d,
                      opt_d, noise_gen, loader)
            if stop and not done:
                stopped_mid_stage = True
                break
        if stopped_mid_stage:  # checkpointed above: no export, no stage-end checkpoint
            break

        # ---------------------------------------------------------------- end of stage
        if info.is_master and stage.export:
            export_student(student, out_dir / "exports", stage.student_steps, cfg.checkpoint.export_dtype)
        distilled[stage.student_steps] = {k: v.detach().cpu().clone() for k, v in student.state_dict().items()}
        needed = {s.teacher_steps for s in cfg.stages[stage_index + 1:]}
        distilled = {k: v for k, v in distilled.items() if k in needed}
        _save(cfg, ckpt_dir, info, stage_index + 1, 0, global_step, models, distilled, None, None, None,
              noise_gen, loader)
        del d, opt_d, opt_g
        if cfg.run.max_steps and global_step - first_step >= cfg.run.max_steps:
            break

    if metrics_file is not None:
        metrics_file.close()
    if tb is not None:
        tb.close()
    return last


def _save(cfg, ckpt_dir, info, stage, iteration, global_step, models, distilled, opt_g, d, opt_d, noise_gen, loader):
    student = models.student
    shared = None
    if info.is_master:
        shared = {"stage": stage, "iteration": iteration, "global_step": global_step,
                  "student": student.state_dict(), "distilled": distilled,
                  "opt_g": opt_g.state_dict() if opt_g is not None else None,
                  "discriminator": d.state_dict() if d is not None else None,
                  "opt_d": opt_d.state_dict() if opt_d is not None else None,
                  "world_size": info.world_size, "ranks": to_dict(cfg.ranks), "config": to_dict(cfg)}
    # Per-rank fingerprints let anyone check that ranks hold one student and D but their own base.
    fingerprints = {"student": fingerprint(student), "base": fingerprint(models.base),
                    "discriminator": fingerprint(d) if d is not None else ""}
    mine = {"rng": checkpoint.rng_state(noise_gen), "data": loader.state_dict(), "fingerprints": fingerprints}
    checkpoint.save(ckpt_dir, global_step, shared, mine, info.rank, dump_toml(to_dict(cfg)), cfg.checkpoint.keep)


def fingerprint(module: torch.nn.Module) -> str:
    """sha256 over the exact bytes of every parameter and buffer, in state_dict order."""
    h = hashlib.sha256()
    for key, value in module.state_dict().items():
        h.update(key.encode())
        h.update(value.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _tensorboard(out_dir: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard not installed: JSONL only
        return None
    return SummaryWriter(str(out_dir / "tensorboard"))
