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

Read top to bottom: `train` is the whole run; the phases it calls follow in the order they run
(setup, resume, start_stage, train_step = draw_micro_batches + g_phase + d_phase, log, save_checkpoint, end_stage).
Three small objects carry the state: `Run` (built once), `Progress` (what a checkpoint stores to
continue exactly) and `Stage` (the optimizers and discriminator of the current stage).
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import math
import platform
import random
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from lightning_core import losses
from trainer import checkpoint, distill, distributed, memory
from trainer.config import Config, StageConfig, check, config_digest, dump_toml, rank_config, teacher_steps, to_dict
from trainer.data import ClipLoader, build_loader
from trainer.discriminator import Discriminator
from trainer.export import export_student
from trainer.memory import MemoryPlanError
from trainer.models import RankModels, flow_names, load_rank_models, motion_from_state, write_tiny_models

PER_BASE_KEYS = ("loss_g", "loss_d", "d_accuracy")
"""Metrics also logged per base model (flow) as '<key>/<flow name>', next to their mean over all ranks."""


class NonFiniteLossError(FloatingPointError):
    """A loss or grad norm became NaN or infinite; the message names the ranks, stage and step."""


class RankDivergenceError(RuntimeError):
    """Ranks that must hold the same student / D (or the same base) do not; the message names them."""


@dataclass
class Run:
    """What stays fixed for the whole run: config, rank, models, data, training-noise generator."""
    cfg: Config
    info: distributed.DistInfo
    models: RankModels
    unet: torch.nn.Module
    """The frozen base UNet the student and teacher run inside (torch.compile'd when run.compile)."""
    flow: torch.Tensor
    """[batch_size] this rank's flow index (its base model among the table's distinct bases)."""
    uncond: torch.Tensor
    """CLIP embedding of the empty prompt (the teacher's CFG branch)."""
    alpha_bar: torch.Tensor
    noise_gen: torch.Generator
    """Every random draw of the training math comes from here (checkpointed per rank)."""
    loader: ClipLoader
    writer: checkpoint.Writer
    batches: object = None

    @property
    def device(self) -> torch.device:
        return self.info.device

    @property
    def out_dir(self) -> Path:
        return Path(self.cfg.run.out_dir)

    @property
    def ckpt_dir(self) -> Path:
        return self.out_dir / "checkpoints"


@dataclass
class Progress:
    """Where the run stands: all a checkpoint needs (besides the models) to continue exactly."""
    stage: int = 0
    """Index into cfg.stages of the stage being trained."""
    iteration: int = 0
    """Optimizer steps already done in that stage."""
    global_step: int = 0
    distilled: dict = field(default_factory=dict)
    """student_steps -> state dict of the students that later stages use as teachers."""
    skipped_steps: int = 0
    """Optimizer steps skipped for a non-finite loss (run.on_nonfinite = 'skip')."""


@dataclass
class Stage:
    """One stage's teacher, optimizers and (adversarial stages) fresh discriminator."""
    index: int
    config: StageConfig
    teacher: torch.nn.Module
    student_params: list
    opt_g: torch.optim.Optimizer
    d: Discriminator | None = None
    opt_d: torch.optim.Optimizer | None = None
    teacher_steps: int = 0
    """The teacher's step count: config.teacher_steps, or one level above with skip_level_teacher."""

    @property
    def adversarial(self) -> bool:
        return self.config.loss == "adversarial"


def train(cfg: Config, info: distributed.DistInfo, allow_changed=()) -> dict:
    """Runs (or resumes) every stage; returns the last logged metrics. `allow_changed`: config keys a resume
    may find changed since the checkpoint (--resume.allow_changed)."""
    check(cfg, "train", info.world_size)
    run = setup(cfg, info)
    log = MetricsLog(run)
    try:
        progress, resumed = resume(run, allow_changed)
        first_step, last = progress.global_step, {}
        out_of_time = False
        while progress.stage < len(cfg.stages) and not out_of_time:
            stage = start_stage(run, progress, resumed)
            resumed = None
            bar = tqdm(range(progress.iteration, stage.config.iterations), desc=stage.config.name,
                       disable=not info.is_master, initial=progress.iteration, total=stage.config.iterations)
            for iteration in bar:
                t0 = time.perf_counter()
                local = train_step(run, stage, progress)
                progress.iteration, progress.global_step = iteration + 1, progress.global_step + 1
                progress.skipped_steps += int(local.get("skipped", 0))
                stats = {**distributed.all_reduce_mean(local, run.device), **per_base(run, local)}
                last = log.step(stage, progress, time.perf_counter() - t0, stats, bar)
                finished = progress.iteration == stage.config.iterations
                out_of_time = bool(cfg.run.max_steps) and progress.global_step - first_step >= cfg.run.max_steps
                if not finished and (progress.iteration % cfg.checkpoint.every == 0 or out_of_time):
                    save_checkpoint(run, progress, stage)
                if out_of_time and not finished:
                    break  # checkpointed above: no export, no stage-end checkpoint
            else:
                end_stage(run, progress, stage)
            del stage
    except BaseException:
        with contextlib.suppress(checkpoint.CheckpointError):  # report the first error, not a failed save after it
            run.writer.wait()
        raise
    else:
        run.writer.wait()  # the checkpoint rank 0 is still writing completes before the run ends
    finally:
        log.close()
    return last


# ----------------------------------------------------------------------------- setup and resume

def setup(cfg: Config, info: distributed.DistInfo) -> Run:
    """Seeds, this rank's models (own base, teacher, student) and its data loader."""
    device, rank, world = info.device, info.rank, info.world_size
    out_dir = Path(cfg.run.out_dir)
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
    noise_gen = torch.Generator().manual_seed(cfg.run.seed * 7919 + rank)

    if cfg.run.write_tiny_models:
        write_tiny_models(cfg, rank)
    base_dtype = torch.bfloat16 if device.type == "cuda" and cfg.run.mixed_precision == "bf16" else torch.float32
    models = load_rank_models(cfg, rank, device, base_dtype)
    base = models.base
    check_memory(cfg, info, models)
    if offload_teacher(cfg, device):
        models.teacher.to("cpu")
    base.unet.gradient_checkpointing = cfg.run.gradient_checkpointing
    unet = torch.compile(base.unet) if cfg.run.compile else base.unet
    distributed.broadcast_parameters(models.student)  # equal already (same file); makes it explicit
    flow = torch.full((cfg.optim.batch_size,), models.flow, device=device, dtype=torch.long)
    uncond = base.encode_prompts([""]).float()

    entry = rank_config(cfg, rank)
    if rank != 0:  # rank 0 first: it writes the synthetic videos of the tiny recipe when they are missing
        distributed.barrier()
    loader = build_loader(cfg.data, entry.dataset, rank, world, base, cfg.optim.batch_size, ranks=cfg.ranks)
    if rank == 0:
        distributed.barrier()
    writer = checkpoint.Writer(Path(cfg.run.out_dir) / "checkpoints", rank, cfg.checkpoint.keep)
    return Run(cfg, info, models, unet, flow, uncond, distill.alpha_bar_table(device), noise_gen, loader, writer)


def resume(run: Run, allow_changed=()) -> tuple[Progress, dict | None]:
    """Progress from the newest complete checkpoint (student, RNG and data position restored), else a fresh start.
    Refuses another world size or ranks table, and config changes that allow_changed does not name.
    Returns the checkpoint's shared state too: start_stage takes the optimizer and D states from it."""
    path = checkpoint.latest(run.ckpt_dir) if run.cfg.checkpoint.resume else None
    if path is None:
        run.batches = iter(run.loader)
        return Progress(), None
    shared, mine = checkpoint.load(path, run.info.rank)
    checkpoint.check_compatible(shared, path, run.info.world_size, to_dict(run.cfg.ranks))
    changed = checkpoint.check_config_changes(shared["config"], to_dict(run.cfg), path, allow_changed)
    progress = Progress(shared["stage"], shared["iteration"], shared["global_step"], shared["distilled"],
                        shared.get("skipped_steps", 0))
    run.models.student.load_state_dict(shared["student"])
    checkpoint.set_rng_state(mine["rng"], run.noise_gen)
    run.loader.load_state_dict(mine["data"])
    run.batches = iter(run.loader)
    if run.info.is_master:
        print(f"resumed from {path}: stage {progress.stage}, iteration {progress.iteration}"
              + (f" (config changed as allowed: {', '.join(changed)})" if changed else ""))
    return progress, shared


def check_memory(cfg: Config, info: distributed.DistInfo, models: RankModels) -> None:
    """Prints the per-GPU memory plan (rank 0) and stops every rank when any rank's plan exceeds its device."""
    base, device = models.base, info.device
    cuda_bf16 = device.type == "cuda" and cfg.run.mixed_precision == "bf16"
    plan = memory.plan(base.unet, base.vae, base.text_encoder, models.teacher, cfg, models.num_flows, cuda_bf16)
    if info.is_master:
        print(f"memory plan per GPU (rank 0's base model):\n{plan.table()}")
    limit, where = memory.device_limit(cfg, device)
    error = None
    try:
        memory.check(plan, limit, where)
    except MemoryPlanError as e:
        error = e
    over = distributed.ranks_where(error is not None, device)
    if error is not None:
        raise error
    if over:
        raise MemoryPlanError(f"the memory plan of rank{'s' if len(over) > 1 else ''} {_rank_list(over)} exceeds "
                              f"its device (the message of that rank has the table)")


def offload_teacher(cfg: Config, device: torch.device) -> bool:
    """run.teacher_offload on a GPU: the frozen teacher lives in CPU memory and visits the GPU for its forwards."""
    return cfg.run.teacher_offload and device.type == "cuda"


@contextlib.contextmanager
def teacher_on_device(run: Run, teacher: torch.nn.Module):
    """The teacher on the training device for the duration of the block (a no-op unless offloaded)."""
    if not offload_teacher(run.cfg, run.device):
        yield teacher
        return
    teacher.to(run.device)
    try:
        yield teacher
    finally:
        teacher.to("cpu")


# ----------------------------------------------------------------------------- one stage

def start_stage(run: Run, progress: Progress, resumed: dict | None) -> Stage:
    """The stage's teacher, a fresh Adam for the student and, if adversarial, a fresh D and its Adam."""
    cfg, stage_cfg = run.cfg, run.cfg.stages[progress.stage]
    student_params = [p for p in run.models.student.parameters() if p.requires_grad]
    steps = teacher_steps(cfg.stages, progress.stage)
    teacher_device = torch.device("cpu") if offload_teacher(cfg, run.device) else run.device
    stage = Stage(progress.stage, stage_cfg, teacher_for(steps, progress.distilled, run.models, teacher_device),
                  student_params, _adam(student_params, cfg, stage_cfg), teacher_steps=steps)
    if stage.adversarial:
        stage.d = build_discriminator(cfg, run.models, stage.index, stage_cfg.discriminator == "conditional",
                                      run.device)
        stage.opt_d = _adam(list(stage.d.parameters()), cfg, stage_cfg, "d")
    if resumed is not None:  # resuming inside this stage: its optimizer and D states
        if resumed["opt_g"] is not None:
            stage.opt_g.load_state_dict(resumed["opt_g"])
        if stage.adversarial and resumed["discriminator"] is not None:
            stage.d.load_state_dict(resumed["discriminator"])
            stage.opt_d.load_state_dict(resumed["opt_d"])
    return stage


def teacher_for(steps: int, distilled: dict, models, device):
    """Progressive distillation: the student distilled to `steps`, else the original teacher."""
    if steps in distilled:
        return motion_from_state(distilled[steps], device)
    return models.teacher


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


def _feature_shape(cfg: Config, base) -> tuple[int, int, int]:
    """(frames, h, w) of the mid-block features: latent size / 2^(levels - 1)."""
    down = 2 ** (len(base.config.channel_mult) - 1)
    latent = cfg.data.size // 8
    return (cfg.data.frames, max(1, latent // down), max(1, latent // down))


def _adam(params, cfg: Config, stage: StageConfig, role: str = "g"):
    """Adam for the student (role 'g') or D ('d'): optim.g_lr / d_lr in adversarial stages (0: optim.lr)."""
    o = cfg.optim
    lr, betas = ((o.mse_lr, o.mse_betas) if stage.loss == "mse"
                 else ((o.g_lr if role == "g" else o.d_lr) or o.lr, o.betas))
    return torch.optim.Adam(params, lr=lr, betas=tuple(betas), weight_decay=0.0)


def end_stage(run: Run, progress: Progress, stage: Stage) -> None:
    """Export the student, keep it if a later stage's teacher needs it, move on, checkpoint the stage boundary."""
    cfg, student = run.cfg, run.models.student
    if run.info.is_master and stage.config.export:
        export_student(student, run.out_dir / "exports", stage.config.student_steps, cfg.checkpoint.export_dtype)
    if run.info.is_master and cfg.eval.every_stage:  # the paper's Table 2 protocol on the stage's student
        from trainer.eval import run_eval
        run_eval(cfg, run.device, student, label=stage.config.name, student_steps=stage.config.student_steps)
    progress.distilled[stage.config.student_steps] = {k: v.detach().cpu().clone()
                                                      for k, v in student.state_dict().items()}
    needed = {teacher_steps(cfg.stages, i) for i in range(stage.index + 1, len(cfg.stages))}
    progress.distilled = {k: v for k, v in progress.distilled.items() if k in needed}
    progress.stage, progress.iteration = stage.index + 1, 0
    save_checkpoint(run, progress, None)


# ----------------------------------------------------------------------------- one optimizer step

def train_step(run: Run, stage: Stage, progress: Progress) -> dict[str, float]:
    """One optimizer step of the student (G phase) and, in adversarial stages, optim.d_steps_per_g_step steps of D
    (D phase: the first on the G phase's micro-batches with fresh fakes, the others on fresh micro-batches); during
    the first optim.d_warmup_steps of an adversarial stage only D steps. Returns this rank's stats; a non-finite
    loss on any rank stops the run or skips the step on every rank."""
    student_learns, d_steps = adversarial_schedule(run.cfg.optim, progress.iteration, stage.d is not None)
    micro = draw_micro_batches(run, stage)
    stats = {"loss_g": g_phase(run, stage, micro, student_learns)}
    if not finite_on_every_rank(run, stage, progress, stats):
        return _skip(stage, stats)
    stats["grad_norm_g"] = (_step(stage.opt_g, stage.student_params, run.cfg.optim.grad_clip)
                            if student_learns else 0.0)
    _zero_grads(stage)
    if not finite_on_every_rank(run, stage, progress, stats):
        return _skip(stage, stats)
    for k in range(d_steps):
        d_loss, d_accuracy = d_phase(run, stage, micro if k == 0 else draw_micro_batches(run, stage))
        stats.update(loss_d=d_loss, d_accuracy=d_accuracy)
        if not finite_on_every_rank(run, stage, progress, stats):
            return _skip(stage, stats)
        stats["grad_norm_d"] = _step(stage.opt_d, list(stage.d.parameters()), run.cfg.optim.grad_clip)
        _zero_grads(stage)
        if not finite_on_every_rank(run, stage, progress, stats):
            return _skip(stage, stats)
    stats["skipped"] = 0
    return stats


def adversarial_schedule(optim, iteration: int, adversarial: bool) -> tuple[bool, int]:
    """(whether the student steps, how many D steps) at this iteration of a stage: D alone for the first
    optim.d_warmup_steps of an adversarial stage, then optim.d_steps_per_g_step D steps per student step."""
    if not adversarial:
        return True, 0
    return iteration >= optim.d_warmup_steps, optim.d_steps_per_g_step


def draw_micro_batches(run: Run, stage: Stage) -> list:
    """grad_accum micro-batches (x_t, plan, context, target, t_d, d_noise): clips, start t, noise, the teacher's
    target and, in adversarial stages, the timestep and noise D sees (t_d = t', d_noise None unless re-noised)."""
    cfg, s, amp = run.cfg, stage.config, _autocast(run.cfg, run.device)
    device, alpha_bar, gen = run.device, run.alpha_bar, run.noise_gen
    micro = []
    for _ in range(cfg.optim.grad_accum):
        batch = next(run.batches)
        x0 = batch.latents.to(device, torch.float32)
        context = (batch.text_embeddings if batch.text_embeddings is not None
                   else run.models.base.encode_prompts(batch.prompts)).to(device, torch.float32)
        u0 = distill.sample_start(x0.shape[0], s.student_steps, s.timesteps, gen)
        plan = distill.plan_timesteps(u0, stage.teacher_steps, s.student_steps).to(device)
        noise = torch.randn(x0.shape, generator=gen).to(device)
        x_t = distill.add_noise(x0, noise, plan[:, 0], alpha_bar)
        with amp, teacher_on_device(run, stage.teacher) as teacher:
            target = distill.teacher_solve(run.unet, teacher, x_t, plan, context, run.uncond, s.cfg_scale, alpha_bar)
        t_d, d_noise = plan[:, -1], None
        if stage.d is not None:
            t_d, d_noise = distill.sample_d_noise(plan[:, -1], x0.shape, s.d_noise_timesteps, s.d_noise_weights, gen)
        micro.append((x_t, plan, context, target, t_d, d_noise))
    return micro


def g_phase(run: Run, stage: Stage, micro: list, student_learns: bool = True) -> float:
    """The student's jump on each micro-batch, MSE to the target or D's generator loss; D stays frozen.
    Leaves the student's grads (none when it does not learn this step: the loss is only logged); returns the loss."""
    cfg, d, amp, alpha_bar = run.cfg, stage.d, _autocast(run.cfg, run.device), run.alpha_bar
    if d is not None:
        d.requires_grad_(False)
    g_loss = 0.0
    for x_t, plan, context, target, t_d, d_noise in micro:
        b = x_t.shape[0]
        with amp, torch.set_grad_enabled(student_learns):
            if d is not None:
                loss = distill.adversarial_generator_loss(run.unet, run.models.student, d, x_t, plan, context,
                                                          run.flow[:b], t_d, d_noise, alpha_bar)
            else:
                fake = distill.student_jump(run.unet, run.models.student, x_t, plan, context, alpha_bar)
                loss = losses.mse_distillation_loss(fake, target)
        if student_learns:
            (loss / cfg.optim.grad_accum).backward()
        g_loss += loss.item() / cfg.optim.grad_accum
    return g_loss


def d_phase(run: Run, stage: Stage, micro: list) -> tuple[float, float]:
    """D on real (teacher) and fresh fake (just-updated student) clips of the micro-batches, same t* and eps*.
    Leaves D's grads; returns D's loss and accuracy."""
    cfg, d, amp, alpha_bar = run.cfg, stage.d, _autocast(run.cfg, run.device), run.alpha_bar
    d.requires_grad_(True)
    d_loss, d_acc = 0.0, 0.0
    for x_t, plan, context, target, t_d, d_noise in micro:
        b = x_t.shape[0]
        with amp:
            real_logits, fake_logits = distill.adversarial_discriminator_logits(
                run.unet, run.models.student, d, x_t, plan, context, run.flow[:b], target, t_d, d_noise, alpha_bar)
            loss = losses.discriminator_loss(real_logits, fake_logits)
        (loss / cfg.optim.grad_accum).backward()
        d_loss += loss.item() / cfg.optim.grad_accum
        d_acc += losses.discriminator_accuracy(real_logits, fake_logits).item() / cfg.optim.grad_accum
    return d_loss, d_acc


def _autocast(cfg: Config, device):
    if device.type == "cuda" and cfg.run.mixed_precision == "bf16":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _step(optimizer, params, grad_clip: float) -> float:
    """Average grads over ranks, clip, step; returns the global grad norm (before clipping).
    A non-finite norm (equal on every rank after the all-reduce) leaves the weights as they were."""
    distributed.all_reduce_gradients(params)
    norm = torch.nn.utils.clip_grad_norm_(params, grad_clip if grad_clip > 0 else float("inf"))
    if torch.isfinite(norm):
        optimizer.step()
    return float(norm)


def _zero_grads(stage: Stage) -> None:
    """Both optimizers: G's backward through D leaves nothing on D, and D's phase nothing on the student."""
    stage.opt_g.zero_grad(set_to_none=True)
    if stage.opt_d is not None:
        stage.opt_d.zero_grad(set_to_none=True)


def finite_on_every_rank(run: Run, stage: Stage, progress: Progress, stats: dict[str, float]) -> bool:
    """Whether the newest stat is finite on every rank (one small all-reduce). If not: NonFiniteLossError naming
    the ranks, stage and step (run.on_nonfinite = 'stop'), or False so that every rank skips the step."""
    key = list(stats)[-1]
    values = distributed.gather_floats(stats[key], run.device)
    bad = [r for r, v in enumerate(values) if not math.isfinite(v)]
    if not bad:
        return True
    if run.cfg.run.on_nonfinite == "stop":
        where = "every rank (after the all-reduce)" if key.startswith("grad_norm") else \
            f"rank{'s' if len(bad) > 1 else ''} {', '.join(map(str, bad))}"
        raise NonFiniteLossError(f"non-finite loss in stage {stage.config.name!r} at iteration {progress.iteration} "
                                 f"(global step {progress.global_step + 1}) on {where}: "
                                 + ", ".join(f"{key}={values[r]} (rank {r})" for r in bad[:8]))
    return False


def _skip(stage: Stage, stats: dict[str, float]) -> dict[str, float]:
    """Drop this step's gradients on every rank (run.on_nonfinite = 'skip'); the weights stay as they were."""
    _zero_grads(stage)
    return {**stats, "skipped": 1}


def per_base(run: Run, local: dict[str, float]) -> dict[str, float]:
    """'<key>/<flow name>': the PER_BASE_KEYS averaged over the ranks of each base model (one all-reduce)."""
    values = {k: local[k] for k in PER_BASE_KEYS if k in local}
    if not values:
        return {}
    names = flow_names(run.cfg)
    by_flow = distributed.mean_by_group(values, run.models.flow, run.models.num_flows, run.device)
    return {f"{k}/{names[i]}": v for k, means in by_flow.items() for i, v in enumerate(means) if v is not None}


# ----------------------------------------------------------------------------- logging and checkpoints

class MetricsLog:
    """metrics.jsonl (and TensorBoard when installed) on rank 0; one row every run.log_every steps."""

    def __init__(self, run: Run):
        self.every, self.file, self.tb = run.cfg.run.log_every, None, None
        if run.info.is_master:
            self.file = open(run.out_dir / "metrics.jsonl", "a")
            self.tb = _tensorboard(run.out_dir)

    def step(self, stage: Stage, progress: Progress, step_time_s: float, stats: dict, bar) -> dict:
        row = {"stage": stage.config.name, "iteration": progress.iteration, "global_step": progress.global_step,
               "step_time_s": step_time_s, **stats, "skipped_steps": progress.skipped_steps}
        if self.file is not None and progress.iteration % self.every == 0:
            self.file.write(json.dumps(row) + "\n")
            self.file.flush()
            bar.set_postfix({k: f"{v:.4g}" for k, v in stats.items() if k in ("loss_g", "loss_d")})
            if self.tb is not None:
                for k, v in stats.items():
                    self.tb.add_scalar(f"{stage.config.name}/{k}", v, progress.global_step)
        return row

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
        if self.tb is not None:
            self.tb.close()


def _tensorboard(out_dir: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard not installed: JSONL only
        return None
    return SummaryWriter(str(out_dir / "tensorboard"))


def save_checkpoint(run: Run, progress: Progress, stage: Stage | None) -> None:
    """Collective. First every rank's fingerprints are compared (RankDivergenceError names the ranks whose student
    or D differs, before anything is written). Rank 0 then snapshots student, optimizers, D, progress and config
    to CPU memory and writes them in the background (checkpoint.Writer); every rank writes its RNG states, data
    position and fingerprints. `stage` is None at a stage boundary (the next stage starts with fresh optimizers)."""
    cfg, info, student = run.cfg, run.info, run.models.student
    d = stage.d if stage is not None else None
    fingerprints = {"student": fingerprint(student), "base": fingerprint(run.models.base),
                    "discriminator": fingerprint(d) if d is not None else ""}
    check_ranks_agree(fingerprints, run.models.flow, progress.global_step)
    shared = None
    if info.is_master:
        shared = checkpoint.cpu_snapshot({
            "stage": progress.stage, "iteration": progress.iteration, "global_step": progress.global_step,
            "skipped_steps": progress.skipped_steps, "student": student.state_dict(), "distilled": progress.distilled,
            "opt_g": stage.opt_g.state_dict() if stage is not None else None,
            "discriminator": d.state_dict() if d is not None else None,
            "opt_d": stage.opt_d.state_dict() if d is not None else None,
            "world_size": info.world_size, "ranks": to_dict(cfg.ranks), "config": to_dict(cfg),
            "config_digest": config_digest(cfg), "versions": versions()})
    mine = {"rng": checkpoint.rng_state(run.noise_gen), "data": run.loader.state_dict(), "fingerprints": fingerprints}
    run.writer.save(progress.global_step, shared, mine, dump_toml(to_dict(cfg)))


def check_ranks_agree(fingerprints: dict[str, str], flow: int, global_step: int) -> None:
    """All-gathers every rank's fingerprints: one student and one D on all ranks, one base per base file."""
    everyone = distributed.all_gather_objects({**fingerprints, "flow": flow})
    problems = [_divergence(key, [f[key] for f in everyone], range(len(everyone)))
                for key in ("student", "discriminator")]
    for flow_index in sorted({f["flow"] for f in everyone}):
        ranks = [r for r, f in enumerate(everyone) if f["flow"] == flow_index]
        problems.append(_divergence(f"base of flow {flow_index} (one base file)",
                                    [everyone[r]["base"] for r in ranks], ranks))
    problems = [p for p in problems if p]
    if problems:
        raise RankDivergenceError(f"ranks diverged at global step {global_step}: " + "; ".join(problems)
                                  + ". Nothing was saved; the newest checkpoint predates the divergence")


def _divergence(what: str, hashes: list[str], ranks) -> str:
    """'' when all hashes agree, else which ranks differ from the most common value."""
    ranks = list(ranks)
    groups: dict[str, list[int]] = {}
    for r, h in zip(ranks, hashes):
        groups.setdefault(h, []).append(r)
    if len(groups) == 1:
        return ""
    ordered = sorted(groups.items(), key=lambda kv: (-len(kv[1]), kv[1][0]))
    majority = ordered[0][1]
    odd = [r for _, rs in ordered[1:] for r in rs]
    return (f"the {what} of rank{'s' if len(odd) > 1 else ''} {_rank_list(odd)} differs from rank"
            f"{'s' if len(majority) > 1 else ''} {_rank_list(majority)}")


def _rank_list(ranks: list[int]) -> str:
    return ", ".join(map(str, ranks[:16])) + (f" and {len(ranks) - 16} more" if len(ranks) > 16 else "")


def versions() -> dict[str, str]:
    """torch, python and project versions, recorded in every checkpoint."""
    pyproject = Path(__file__).resolve().parents[1] / "pyproject.toml"
    try:
        project = tomllib.loads(pyproject.read_text())["project"]["version"]
    except (OSError, KeyError, tomllib.TOMLDecodeError):
        project = "unknown"
    return {"torch": str(torch.__version__), "python": platform.python_version(), "project": str(project)}


def fingerprint(module: torch.nn.Module) -> str:
    """sha256 over the exact bytes of every parameter and buffer, in state_dict order."""
    h = hashlib.sha256()
    for key, value in module.state_dict().items():
        h.update(key.encode())
        h.update(value.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()
