"""One dataclass tree for the whole trainer: TOML file, then `--a.b value` overrides, then every check at once.

    python -m trainer train --config configs/tiny_cpu.toml --optim.batch_size 2 --stages.0.iterations 5
    python -m trainer.config --config configs/tiny_cpu.toml      # the resolved config, or every error

A leaf module: it imports nothing from trainer/ (every other module imports it) and not torch at import.
`load_config` reads and checks; each problem is reported as "dotted.key: what is wrong", all of them in
one ConfigError, before any model loads. Values on the command line are parsed as TOML literals (`5`,
`1e-6`, `true`, `[250, 500]`, `"text"`), bare words as strings.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import sys
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

COMMANDS = ("train", "generate", "cache", "eval")
DATASET_KINDS = ("webvid_csv", "folder", "synthetic", "latent_shards", "cached")
VIDEO_KINDS = ("webvid_csv", "folder", "synthetic")
STORAGE_DTYPES = ("float16", "bfloat16", "float32")
"""Config names of the dtypes tensors are stored in (trainer.shards.DTYPES maps them to torch dtypes)."""


class ConfigError(ValueError):
    """A config file or override is wrong; one line per problem, each naming its key."""

    def __init__(self, *problems: str):
        self.problems = list(problems)
        super().__init__("\n".join(self.problems))


# ----------------------------------------------------------------------------- the tree

@dataclass
class RunConfig:
    out_dir: str = "runs/default"
    """Checkpoints, exports, metrics.jsonl and config.toml go here."""
    seed: int = 0
    device: str = "auto"
    """'auto' (cuda:LOCAL_RANK when available, else cpu), 'cpu' or 'cuda'."""
    mixed_precision: str = "bf16"
    """'bf16' autocast on CUDA or 'no'; CPU always runs float32."""
    gradient_checkpointing: bool = True
    compile: bool = False
    """torch.compile the base UNet forward (GPU runs)."""
    write_tiny_models: bool = False
    """Write missing base models / teacher as tiny random ones (the CPU recipe; no downloads)."""
    log_every: int = 1
    max_steps: int = 0
    """Stop after this many optimizer steps in this invocation, with a checkpoint (0: run every stage).
    For time-limited jobs (Slurm): re-submit and the run resumes."""
    deterministic: bool = False
    """torch.use_deterministic_algorithms(True) (bit-exact resume on CPU)."""
    cpu_threads: int = 0
    """torch.set_num_threads on CPU (0: torch's default). 1 avoids oversubscription on a busy machine."""
    collective_timeout_s: float = 1800.0
    """Timeout of every collective (init_process_group); a rank stuck longer than this stops the run."""
    on_nonfinite: str = "stop"
    """A NaN/inf loss on any rank: 'stop' all ranks naming rank, stage and step, or 'skip' the step
    (no optimizer update on any rank; counted as `skipped_steps` in the metrics)."""
    teacher_offload: bool = False
    """Keep the frozen teacher motion module in CPU memory and move it to the GPU only for its forwards."""
    memory_limit_gib: float = 0.0
    """Refuse to start when the memory plan exceeds this many GiB per rank (0: the GPU's memory; CPU: no check)."""


@dataclass
class RankConfig:
    base: str
    """SD1.5-family single-file checkpoint of this rank's frozen image model."""
    dataset: str
    """Name of a [data.datasets.<name>] entry."""
    name: str = ""


@dataclass
class ModelConfig:
    teacher: str = "models/mm_sd_v15_v2.ckpt"
    """AnimateDiff v2 motion module (any layout lightning_core.formats loads); the student starts from it."""
    tokenizer_dir: str = ""
    """CLIP vocab.json + merges.txt for real SD1.5 models (the tiny models have a byte tokenizer)."""


@dataclass
class StageConfig:
    name: str
    loss: str
    """'mse' (progressive distillation with teacher CFG) or 'adversarial'."""
    teacher_steps: int
    student_steps: int
    iterations: int
    """Optimizer steps (each: grad_accum micro-batches per rank, for G and, if adversarial, for D)."""
    discriminator: str = "conditional"
    """Adversarial only: 'conditional' (on x_t, Eq. 11) or 'unconditional' (Eq. 12)."""
    cfg_scale: float = 1.0
    """Teacher classifier-free guidance, empty-prompt uncond (paper: 7.5 in the MSE stage only)."""
    timesteps: list[int] = field(default_factory=list)
    """Start timesteps in (0, 1000] for multi-timestep training; empty: the student's own step grid."""
    d_noise_timesteps: list[int] = field(default_factory=list)
    """Re-noise clean (x0) targets to one of these before D (SDXL-Lightning 3.7.2); empty: never."""
    d_noise_weights: list[float] = field(default_factory=list)
    export: bool = True
    """Export the student at the end of this stage as animatediff_lightning_{student_steps}step_*."""
    skip_level_teacher: bool = False
    """Unconditional fine-tunes of the 2- and 1-step stages (SDXL-Lightning 3.4): the teacher is the model one
    level above teacher_steps (4 -> 2 learns from the 8-step student, 2 -> 1 from the 4-step one)."""


def paper_stages() -> list[StageConfig]:
    """AnimateDiff-Lightning 3.4: 128 -> 32 MSE (CFG 7.5), then 32 -> 8 -> 4 -> 2 -> 1, each conditional then unconditional."""
    stages = [StageConfig("128to32_mse", "mse", 128, 32, 2000, cfg_scale=7.5)]
    for teacher, student in ((32, 8), (8, 4), (4, 2), (2, 1)):
        multi = [250, 500, 750, 1000] if student <= 2 else []
        noise = [10, 250, 500, 750] if student == 1 else []
        for kind in ("conditional", "unconditional"):
            stages.append(StageConfig(f"{teacher}to{student}_{kind}", "adversarial", teacher, student, 2000,
                                      discriminator=kind, timesteps=list(multi), d_noise_timesteps=list(noise),
                                      skip_level_teacher=kind == "unconditional" and student <= 2))
    return stages


@dataclass
class OptimConfig:
    batch_size: int = 1
    """Clips per rank per micro-step (paper: 1)."""
    grad_accum: int = 4
    """Micro-steps per optimizer step (paper: 4; x 64 GPUs = batch 256)."""
    mse_lr: float = 1e-5
    mse_betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    lr: float = 5e-7
    """Adversarial stages, student and discriminator alike (SDXL-Lightning 3.6: 5e-7 without LoRA)."""
    g_lr: float = 0.0
    """Adversarial stages: the student's learning rate (0: optim.lr, the papers' one value)."""
    d_lr: float = 0.0
    """Adversarial stages: the discriminator's learning rate (0: optim.lr)."""
    d_steps_per_g_step: int = 1
    """Adversarial stages: D optimizer steps per student step, the extra ones on fresh micro-batches (the papers: 1)."""
    d_warmup_steps: int = 0
    """Adversarial stages: D alone (the student frozen) for this many of each stage's first steps (the papers: 0)."""
    betas: list[float] = field(default_factory=lambda: [0.0, 0.99])
    grad_clip: float = 0.0
    """Clip the global grad norm (0: off; the papers do not clip)."""


@dataclass
class CheckpointConfig:
    every: int = 500
    """Save every this many optimizer steps (and at every stage end)."""
    keep: int = 3
    resume: bool = True
    """Resume from the newest complete checkpoint in out_dir/checkpoints."""
    export_dtype: str = "float16"


@dataclass
class DatasetConfig:
    kind: str = "folder"
    """'webvid_csv' | 'folder' | 'synthetic' | 'latent_shards' | 'cached'."""
    path: str = ""
    """CSV file (webvid_csv), video folder (folder, synthetic) or shard folder (latent_shards, cached)."""
    video_root: str = ""
    """webvid_csv: folder the CSV's relative paths start from (default: the CSV's folder)."""
    caption_column: str = "name"
    path_column: str = "path"
    """webvid_csv: relative video path column; if absent, {page_dir}/{videoid}.mp4 or {videoid}.mp4."""
    max_items: int = 0
    """Use only the first N entries of the dataset (0: all)."""
    synthetic_count: int = 16
    synthetic_frames: int = 0
    """synthetic: frames per video (0: one clip span plus 8)."""


@dataclass
class DataConfig:
    datasets: dict[str, DatasetConfig] = field(default_factory=dict)
    """Named datasets; each rank's `dataset` in the ranks table names one."""
    frames: int = 16
    frame_stride: int = 4
    """Take every n-th source frame (a 16-frame clip at stride 4 spans 61 source frames)."""
    size: int = 512
    """Square training resolution in pixels (latents are size / 8)."""
    hflip: bool = True
    """Mirror half of the samples at random (paper 3.3: doubles the sample count)."""
    seed: int = 0
    """Shuffling and augmentation seed; epoch e shuffles with seed + e."""
    prefetch: int = 2
    """Samples decoded ahead in this many background threads while the step runs (0: load on demand).
    Results do not depend on it: the order and each sample's random choices are fixed in advance."""


@dataclass
class GenerateConfig:
    prompts: str = ""
    """A .txt file (one prompt per line) or a .csv file (column `prompt_column`), e.g. WebVid's."""
    prompt_column: str = "name"
    output: str = ""
    """Shard folder for every rank; empty: each rank's dataset path if that dataset is kind 'latent_shards'."""
    num_clips: int = 0
    """Clips per output folder (0: one per prompt); prompts repeat, with new seeds, beyond the list."""
    clips_per_shard: int = 16
    batch_size: int = 1
    """Clips per teacher forward (the sampler runs 2 x batch_size x frames images for CFG)."""
    steps: int = 32
    cfg_scale: float = 7.5
    negative_prompt: str = ""
    """Paper 3.1: no negative prompt (the empty prompt is the unconditional branch)."""
    frames: int = 0
    """Frames per clip (0: data.frames)."""
    size: int = 0
    """Square size in pixels (0: data.size)."""
    seed: int = 0
    latent_dtype: str = "float16"
    """Storage dtype of the latents: 'float16', 'bfloat16' or 'float32'."""
    save_mp4: bool = False
    """Also decode every clip with the VAE and write <output>/mp4/clip-<index>.mp4 for inspection."""
    fps: int = 8


@dataclass
class CacheConfig:
    dataset: str = ""
    """Name of the video dataset (webvid_csv, folder or synthetic) in [data.datasets] to encode."""
    output: str = ""
    """Shard folder; point a dataset of kind 'cached' at it to train from it."""
    base: str = ""
    """Base model whose VAE and CLIP encode (empty: the ranks table's base for this dataset or its cache)."""
    shard_size: int = 64
    batch_size: int = 4
    """Clips per VAE call."""
    store_flipped: bool = False
    """Also store the latents of the mirrored clip (exact flips, twice the disk)."""
    latent_dtype: str = "float16"
    """Storage dtype of latents and text embeddings: 'float16', 'bfloat16' or 'float32'."""


@dataclass
class EvalBase:
    name: str
    path: str
    seen: bool = True
    """Was this base in the training ranks table (Table 2: RealisticVision, ToonYou seen; DreamShaper, DynaVision not)?"""


@dataclass
class EvalConfig:
    """`python -m trainer eval` and the stage-end evaluation (AnimateDiff-Lightning 4.2, Table 2; trainer/eval.py)."""
    bases: list[EvalBase] = field(default_factory=list)
    """[[eval.bases]] name, path, seen; empty: every distinct base of the ranks table (all seen)."""
    prompts: str = ""
    """A .txt or .csv prompt file (paper: 100 random WebVid prompts); empty: four built-in prompts."""
    prompt_column: str = "name"
    num_prompts: int = 0
    """Use the first N prompts (0: all)."""
    seed: int = 0
    """Prompt i uses seed clip_seed(seed, i) on every base."""
    student: str = ""
    """`python -m trainer eval`: the motion module to evaluate (e.g. an export); at stage ends: the student."""
    student_steps: int = 4
    """Euler steps of the student (`python -m trainer eval`; at stage ends: the stage's student_steps)."""
    reference_steps: int = 32
    reference_cfg: float = 7.5
    """The reference: the original AnimateDiff (model.teacher), 32 Euler steps, CFG 7.5, no negative prompt."""
    frames: int = 0
    """Frames per clip (0: data.frames)."""
    size: int = 0
    """Square size in pixels (0: data.size)."""
    i3d: str = ""
    """I3D Kinetics-400 state dict (.safetensors or a tensors-only .pt) for FVD; empty: no FVD."""
    clip: str = ""
    """CLIP checkpoint (transformers layout, .safetensors) for the CLIP score; empty: none."""
    output: str = ""
    """Folder of eval.jsonl, grids, MP4s and the cached reference latents (empty: run.out_dir/eval)."""
    every_stage: bool = False
    """`python -m trainer train`: evaluate the student at the end of every stage (rank 0)."""
    save_mp4: bool = True
    fps: int = 8


@dataclass
class Config:
    run: RunConfig = field(default_factory=RunConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    ranks: list[RankConfig] = field(default_factory=list)
    stages: list[StageConfig] = field(default_factory=paper_stages)
    optim: OptimConfig = field(default_factory=OptimConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    data: DataConfig = field(default_factory=lambda: DataConfig(datasets={}))
    generate: GenerateConfig = field(default_factory=GenerateConfig)
    cache: CacheConfig = field(default_factory=CacheConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)


def rank_config(cfg: Config, rank: int) -> RankConfig:
    """Global rank r uses ranks[r % len(ranks)] (the paper's 8-rank table replicates over machines)."""
    if not cfg.ranks:
        raise ConfigError("ranks: empty; add [[ranks]] entries with base = '...' and dataset = '...'")
    return cfg.ranks[rank % len(cfg.ranks)]


# ----------------------------------------------------------------------------- checks (all at once)

def problems(cfg: Config, command: str = "train", world_size: int = 1, check_files: bool = True) -> list[str]:
    """Every problem of cfg for `command` on `world_size` ranks, as 'dotted.key: what is wrong' lines."""
    found: list[str] = []

    def bad(key: str, message: str) -> None:
        found.append(f"{key}: {message}")

    def at_least(key: str, value, low) -> None:
        if value < low:
            bad(key, f"must be >= {low}, got {value!r}")

    def one_of(key: str, value, allowed) -> None:
        if value not in allowed:
            bad(key, f"must be one of {', '.join(repr(a) for a in allowed)}, got {value!r}")

    def existing(key: str, path: str, want_dir: bool) -> None:
        if not check_files:
            return
        ok = bool(path) and (Path(path).is_dir() if want_dir else Path(path).is_file())
        if not ok:
            bad(key, f"{path!r} is not an existing {'folder' if want_dir else 'file'}")

    run, optim, data = cfg.run, cfg.optim, cfg.data
    # [run]
    one_of("run.device", run.device, ("auto", "cpu", "cuda"))
    if run.device == "cuda" and not _cuda_available():
        bad("run.device", "'cuda', but this machine has no CUDA device")
    one_of("run.mixed_precision", run.mixed_precision, ("bf16", "no"))
    one_of("run.on_nonfinite", run.on_nonfinite, ("stop", "skip"))
    at_least("run.seed", run.seed, 0)
    at_least("run.log_every", run.log_every, 1)
    at_least("run.max_steps", run.max_steps, 0)
    at_least("run.cpu_threads", run.cpu_threads, 0)
    at_least("run.memory_limit_gib", run.memory_limit_gib, 0)
    if not run.collective_timeout_s > 0:
        bad("run.collective_timeout_s", f"must be > 0 seconds, got {run.collective_timeout_s!r}")
    if not run.out_dir:
        bad("run.out_dir", "is empty")
    # [model]
    if command in ("train", "generate") and not run.write_tiny_models:
        existing("model.teacher", cfg.model.teacher, want_dir=False)
    if cfg.model.tokenizer_dir and check_files:
        missing = [n for n in ("vocab.json", "merges.txt") if not (Path(cfg.model.tokenizer_dir) / n).is_file()]
        if missing:
            bad("model.tokenizer_dir", f"{cfg.model.tokenizer_dir!r} has no {' and no '.join(missing)} "
                                       "(CLIP's tokenizer files)")
    # [[ranks]]
    if not cfg.ranks:
        bad("ranks", "empty; add [[ranks]] entries with base = '...' and dataset = '...'")
    elif world_size > 1 and world_size % len(cfg.ranks):
        bad("ranks", f"{len(cfg.ranks)} entries do not fit {world_size} ranks: the world size must be a multiple of "
                     f"the table's length (rank r uses ranks[r % {len(cfg.ranks)}]), so every entry gets as many ranks")
    for i, entry in enumerate(cfg.ranks):
        if not entry.base:
            bad(f"ranks.{i}.base", "is empty")
        elif command in ("train", "generate") and not run.write_tiny_models:
            existing(f"ranks.{i}.base", entry.base, want_dir=False)
        if entry.dataset not in data.datasets:
            bad(f"ranks.{i}.dataset", f"{entry.dataset!r} is not defined; [data.datasets] has: "
                                      f"{', '.join(sorted(data.datasets)) or 'nothing'}")
    # [[stages]]
    if command == "train" and not cfg.stages:
        bad("stages", "empty; add [[stages]] entries (or leave the key out for the paper's recipe)")
    names = [s.name for s in cfg.stages]
    for i, stage in enumerate(cfg.stages):
        key = f"stages.{i}"
        if not stage.name:
            bad(f"{key}.name", "is empty")
        elif names.count(stage.name) > 1:
            bad(f"{key}.name", f"{stage.name!r} names more than one stage")
        one_of(f"{key}.loss", stage.loss, ("mse", "adversarial"))
        one_of(f"{key}.discriminator", stage.discriminator, ("conditional", "unconditional"))
        at_least(f"{key}.student_steps", stage.student_steps, 1)
        at_least(f"{key}.iterations", stage.iterations, 0)
        at_least(f"{key}.cfg_scale", stage.cfg_scale, 0)
        if not 1 <= stage.teacher_steps <= 1000:
            bad(f"{key}.teacher_steps", f"must lie in [1, 1000] (the schedule has 1000 steps), got {stage.teacher_steps}")
        elif stage.student_steps >= 1 and stage.teacher_steps % stage.student_steps:
            bad(f"{key}.teacher_steps", f"{stage.teacher_steps} must be a multiple of student_steps {stage.student_steps}")
        if any(not 0 < t <= 1000 for t in stage.timesteps):
            bad(f"{key}.timesteps", f"must lie in (0, 1000], got {stage.timesteps}")
        if any(not 0 <= t < 1000 for t in stage.d_noise_timesteps):
            bad(f"{key}.d_noise_timesteps", f"must lie in [0, 1000), got {stage.d_noise_timesteps}")
        if stage.d_noise_weights and len(stage.d_noise_weights) != len(stage.d_noise_timesteps):
            bad(f"{key}.d_noise_weights", f"needs one weight per d_noise_timesteps entry ({len(stage.d_noise_timesteps)}), "
                                          f"got {len(stage.d_noise_weights)}")
        elif stage.d_noise_weights and (min(stage.d_noise_weights) < 0 or sum(stage.d_noise_weights) <= 0):
            bad(f"{key}.d_noise_weights", f"must be >= 0 with a positive sum, got {stage.d_noise_weights}")
        if stage.loss == "mse" and (stage.d_noise_timesteps or stage.d_noise_weights):
            bad(f"{key}.d_noise_timesteps", "only adversarial stages have a discriminator to re-noise for")
        if stage.skip_level_teacher:
            if stage.loss != "adversarial" or stage.discriminator != "unconditional":
                bad(f"{key}.skip_level_teacher", "only for unconditional adversarial fine-tunes (SDXL-Lightning 3.4)")
            elif teacher_steps(cfg.stages, i) == stage.teacher_steps:
                bad(f"{key}.skip_level_teacher", f"no earlier stage distils {stage.teacher_steps} steps from a "
                                                 f"higher level, so there is no model one level above its teacher")
    # [optim]
    at_least("optim.batch_size", optim.batch_size, 1)
    at_least("optim.grad_accum", optim.grad_accum, 1)
    at_least("optim.grad_clip", optim.grad_clip, 0)
    at_least("optim.d_steps_per_g_step", optim.d_steps_per_g_step, 1)
    at_least("optim.d_warmup_steps", optim.d_warmup_steps, 0)
    shortest = min((st.iterations for st in cfg.stages if st.loss == "adversarial"), default=None)
    if shortest is not None and optim.d_warmup_steps >= shortest:
        bad("optim.d_warmup_steps", f"must be < every adversarial stage's iterations (the student would never "
                                    f"step), got {optim.d_warmup_steps} >= {shortest}")
    for lr_key in ("mse_lr", "lr"):
        if not getattr(optim, lr_key) > 0:
            bad(f"optim.{lr_key}", f"must be > 0, got {getattr(optim, lr_key)!r}")
    for lr_key in ("g_lr", "d_lr"):
        if not getattr(optim, lr_key) >= 0:
            bad(f"optim.{lr_key}", f"must be > 0 (or 0: optim.lr), got {getattr(optim, lr_key)!r}")
    for betas_key in ("mse_betas", "betas"):
        betas = getattr(optim, betas_key)
        if len(betas) != 2 or any(not 0 <= b < 1 for b in betas):
            bad(f"optim.{betas_key}", f"must be two numbers in [0, 1), got {betas}")
    # [checkpoint]
    at_least("checkpoint.every", cfg.checkpoint.every, 1)
    if cfg.checkpoint.keep < 2:
        bad("checkpoint.keep", f"must be >= 2 (the newest may be mid-write when a run is killed), got {cfg.checkpoint.keep}")
    one_of("checkpoint.export_dtype", cfg.checkpoint.export_dtype, STORAGE_DTYPES)
    # [data]
    at_least("data.frames", data.frames, 1)
    at_least("data.frame_stride", data.frame_stride, 1)
    at_least("data.prefetch", data.prefetch, 0)
    at_least("data.seed", data.seed, 0)
    if data.size < 8 or data.size % 8:
        bad("data.size", f"must be a positive multiple of 8 (latents are size / 8), got {data.size}")
    read = _datasets_read(cfg, command)
    for name, ds in data.datasets.items():
        key = f"data.datasets.{name}"
        one_of(f"{key}.kind", ds.kind, DATASET_KINDS)
        at_least(f"{key}.max_items", ds.max_items, 0)
        at_least(f"{key}.synthetic_count", ds.synthetic_count, 1)
        at_least(f"{key}.synthetic_frames", ds.synthetic_frames, 0)
        if not ds.path:
            bad(f"{key}.path", f"is empty; a {ds.kind} dataset needs its {'CSV file' if ds.kind == 'webvid_csv' else 'folder'}")
        elif name in read and ds.kind in DATASET_KINDS and ds.kind != "synthetic":
            existing(f"{key}.path", ds.path, want_dir=ds.kind != "webvid_csv")
        if ds.video_root and name in read:
            existing(f"{key}.video_root", ds.video_root, want_dir=True)
    # [generate]
    g = cfg.generate
    one_of("generate.latent_dtype", g.latent_dtype, STORAGE_DTYPES)
    for count_key in ("clips_per_shard", "batch_size", "steps", "fps"):
        at_least(f"generate.{count_key}", getattr(g, count_key), 1)
    for count_key in ("num_clips", "frames", "size", "seed"):
        at_least(f"generate.{count_key}", getattr(g, count_key), 0)
    if g.size % 8:
        bad("generate.size", f"must be a multiple of 8 (or 0: data.size), got {g.size}")
    if command == "generate":
        existing("generate.prompts", g.prompts, want_dir=False)
    # [eval]
    ev = cfg.eval
    for count_key in ("student_steps", "reference_steps", "fps"):
        at_least(f"eval.{count_key}", getattr(ev, count_key), 1)
    for count_key in ("num_prompts", "frames", "size", "seed"):
        at_least(f"eval.{count_key}", getattr(ev, count_key), 0)
    at_least("eval.reference_cfg", ev.reference_cfg, 0)
    if ev.size % 8:
        bad("eval.size", f"must be a multiple of 8 (or 0: data.size), got {ev.size}")
    if command == "eval" or (command == "train" and ev.every_stage):
        if command == "eval":
            existing("eval.student", ev.student, want_dir=False)
        for what in ("prompts", "i3d", "clip"):
            if getattr(ev, what):
                existing(f"eval.{what}", getattr(ev, what), want_dir=False)
        for i, entry in enumerate(ev.bases):
            if not run.write_tiny_models:
                existing(f"eval.bases.{i}.path", entry.path, want_dir=False)
        if command == "eval" and not run.write_tiny_models:
            existing("model.teacher", cfg.model.teacher, want_dir=False)
    # [cache]
    c = cfg.cache
    one_of("cache.latent_dtype", c.latent_dtype, STORAGE_DTYPES)
    at_least("cache.shard_size", c.shard_size, 1)
    at_least("cache.batch_size", c.batch_size, 1)
    if command == "cache":
        if c.dataset not in data.datasets:
            bad("cache.dataset", f"{c.dataset!r} is not defined; [data.datasets] has: "
                                 f"{', '.join(sorted(data.datasets)) or 'nothing'}")
        elif data.datasets[c.dataset].kind not in VIDEO_KINDS:
            bad("cache.dataset", f"{c.dataset!r} is of kind {data.datasets[c.dataset].kind!r}; only video kinds "
                                 f"({', '.join(VIDEO_KINDS)}) need caching")
        if not c.output:
            bad("cache.output", "is empty: name the folder the cached shards go to")
        if c.base and not run.write_tiny_models:
            existing("cache.base", c.base, want_dir=False)
    return found


def teacher_steps(stages: list[StageConfig], index: int) -> int:
    """Steps of stage `index`'s teacher: its teacher_steps or, with skip_level_teacher, the teacher_steps of the
    first stage that distilled to them (4 -> 2 unconditional: the 8 of 8 -> 4)."""
    stage = stages[index]
    if stage.skip_level_teacher:
        for earlier in stages[:index]:
            if earlier.student_steps == stage.teacher_steps and earlier.teacher_steps > stage.teacher_steps:
                return earlier.teacher_steps
    return stage.teacher_steps


def _datasets_read(cfg: Config, command: str) -> set[str]:
    """Names of the datasets `command` reads (generate writes its latent_shards datasets, so they need not exist)."""
    if command == "train":
        return {r.dataset for r in cfg.ranks}
    if command == "cache":
        return {cfg.cache.dataset}
    return set()


def _cuda_available() -> bool:
    import torch  # only here: the rest of this module needs no torch

    return torch.cuda.is_available()


def check(cfg: Config, command: str = "train", world_size: int = 1, check_files: bool = True) -> Config:
    """cfg, or ConfigError listing every problem."""
    found = problems(cfg, command, world_size, check_files)
    if found:
        raise ConfigError(*found)
    return cfg


# ----------------------------------------------------------------------------- digest (what a resume compares)

OPERATIONAL_KEYS = ("run.out_dir", "run.max_steps", "run.log_every", "run.cpu_threads", "run.collective_timeout_s",
                    "run.write_tiny_models", "run.teacher_offload", "run.memory_limit_gib",
                    "checkpoint.every", "checkpoint.keep", "checkpoint.resume", "data.prefetch", "generate", "cache",
                    "eval")
"""Keys that do not change what is trained (where, how long this invocation, how often to log or save, how the
memory is used): a resume may change them freely, and they are left out of the config digest."""


def flatten(data, prefix: str = "") -> dict[str, object]:
    """Nested dicts/lists -> {'a.b.0.c': leaf}; an empty list or table is one leaf."""
    if isinstance(data, dict) and data:
        out = {}
        for k, v in data.items():
            out.update(flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    if isinstance(data, list) and data and all(isinstance(v, dict) for v in data):
        out = {}
        for i, v in enumerate(data):
            out.update(flatten(v, f"{prefix}.{i}"))
        return out
    return {prefix: data}


def _operational(key: str) -> bool:
    return any(key == k or key.startswith(k + ".") for k in OPERATIONAL_KEYS)


def digest_fields(cfg: Config | dict) -> dict[str, object]:
    """The flattened config without OPERATIONAL_KEYS: what the digest covers."""
    data = to_dict(cfg) if dataclasses.is_dataclass(cfg) else cfg
    return {k: v for k, v in flatten(data).items() if not _operational(k)}


def config_digest(cfg: Config | dict) -> str:
    """sha256 of the canonical JSON of digest_fields(cfg)."""
    return hashlib.sha256(json.dumps(digest_fields(cfg), sort_keys=True).encode()).hexdigest()


def changed_keys(old: Config | dict, new: Config | dict) -> list[str]:
    """Dotted keys whose value differs between two configs (operational keys left out), sorted."""
    a, b = digest_fields(old), digest_fields(new)
    return sorted(k for k in set(a) | set(b) if a.get(k, _MISSING) != b.get(k, _MISSING))


_MISSING = object()


# ----------------------------------------------------------------------------- dict <-> dataclass

_INVALID = object()


def _is_dataclass_type(tp) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _convert(tp, value, path: str, errors: list[str]):
    """Checks/coerces one value against a type hint; on a mismatch appends 'path: ...' to errors, returns _INVALID."""
    def wrong(expected: str):
        errors.append(f"{path}: expected {expected}, got {value!r}")
        return _INVALID

    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _convert(inner[0], value, path, errors)
    if _is_dataclass_type(tp):
        if dataclasses.is_dataclass(value):
            return value
        if not isinstance(value, dict):
            return wrong("a table")
        return _from_dict(tp, value, path, errors)
    if origin is list:
        if not isinstance(value, (list, tuple)):
            return wrong("a list")
        items = [_convert(args[0], v, f"{path}.{i}", errors) for i, v in enumerate(value)]
        return _INVALID if any(v is _INVALID for v in items) else items
    if origin is dict:
        if not isinstance(value, dict):
            return wrong("a table")
        items = {str(k): _convert(args[1], v, f"{path}.{k}", errors) for k, v in value.items()}
        return _INVALID if any(v is _INVALID for v in items.values()) else items
    if tp is bool:
        return value if isinstance(value, bool) else wrong("true or false")
    if tp is int:
        return value if isinstance(value, int) and not isinstance(value, bool) else wrong("an integer")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        return wrong("a number")
    if tp is str:
        return value if isinstance(value, str) else wrong("a string")
    if tp is typing.Any:
        return value
    return wrong(f"a value of the unsupported field type {tp}")


_PLACEHOLDERS = {str: "", int: 0, float: 0.0, bool: False}


def _from_dict(cls, data: dict, path: str, errors: list[str]):
    """Builds `cls`, appending every unknown key, wrong type and missing required key to errors (bad values
    fall back to their defaults, missing required ones to an empty placeholder, so checking can go on)."""
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    for key in sorted(set(data) - set(fields)):
        where = f"{path}.{key}" if path else key
        errors.append(f"{where}: unknown config key {where!r} (known keys here: {', '.join(sorted(fields))})")
    kwargs = {}
    for name, f in fields.items():
        where = f"{path}.{name}" if path else name
        if name in data:
            value = _convert(hints[name], data[name], where, errors)
            if value is not _INVALID:
                kwargs[name] = value
                continue
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            errors.append(f"{where}: missing (required)")
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            origin = typing.get_origin(hints[name])
            kwargs[name] = [] if origin is list else {} if origin is dict else _PLACEHOLDERS.get(hints[name])
    return cls(**kwargs)


def from_dict(cls, data: dict, path: str = ""):
    """Builds dataclass `cls` from a nested dict; ConfigError lists every unknown key and wrong type."""
    errors: list[str] = []
    obj = _from_dict(cls, data, path, errors)
    if errors:
        raise ConfigError(*errors)
    return obj


def to_dict(obj):
    """Dataclass tree -> plain dicts/lists (for TOML/JSON and checkpoints)."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    return obj


def dump_toml(data: dict) -> str:
    """Minimal TOML writer for the resolved config (tables, arrays of tables, scalars, scalar lists)."""
    def scalar(v):
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, str):
            return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
        if isinstance(v, list):
            return "[" + ", ".join(scalar(x) for x in v) + "]"
        return repr(v)

    lines = []

    def table(d, prefix):
        plain = {k: v for k, v in d.items() if not isinstance(v, dict) and not _is_table_list(v)}
        for k, v in plain.items():
            if v is not None:
                lines.append(f"{k} = {scalar(v)}")
        for k, v in d.items():
            name = f"{prefix}.{k}" if prefix else k
            if isinstance(v, dict):
                lines.extend(["", f"[{name}]"])
                table(v, name)
            elif _is_table_list(v):
                for item in v:
                    lines.extend(["", f"[[{name}]]"])
                    table(item, name)

    table(data, "")
    return "\n".join(lines).lstrip() + "\n"


def _is_table_list(v) -> bool:
    return isinstance(v, list) and bool(v) and all(isinstance(x, dict) for x in v)


# ----------------------------------------------------------------------------- command line

@dataclass
class CommandLine:
    """What the command line says besides the config: the file, the overrides and the resume permissions."""
    config_file: Path | None = None
    overrides: list[tuple[str, object]] = field(default_factory=list)
    allow_changed: list[str] = field(default_factory=list)
    """`--resume.allow_changed KEY...`: config keys a resume may find changed since the checkpoint."""


def _parse_value(text: str):
    """A command-line value as a TOML literal, else the bare string."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def apply_override(data: dict, dotted: str, value) -> None:
    """Sets data[a][b]... = value for 'a.b...'; integer parts index lists (stages.0.iterations)."""
    parts = dotted.split(".")
    node = data
    for i, part in enumerate(parts[:-1]):
        key = int(part) if isinstance(node, list) and part.isdigit() else part
        if isinstance(node, list):
            if not isinstance(key, int) or key >= len(node):
                raise ConfigError(f"--{dotted}: {'.'.join(parts[:i + 1])} is not an index of a list of {len(node)}")
        elif key not in node:
            node[key] = {}
        elif not isinstance(node[key], (dict, list)):
            raise ConfigError(f"--{dotted}: {'.'.join(parts[:i + 1])} is a value, not a table")
        node = node[key]
    last = parts[-1]
    if isinstance(node, list):
        if not last.isdigit() or int(last) >= len(node):
            raise ConfigError(f"--{dotted}: {last} is not an index of a list of {len(node)}")
        node[int(last)] = value
    else:
        node[last] = value


def parse_command_line(argv: list[str]) -> CommandLine:
    """['--config', 'x.toml', '--a.b', 'v', '--c=w', '--resume.allow_changed', 'k1', 'k2'] -> CommandLine."""
    line, i, errors = CommandLine(), 0, []
    while i < len(argv):
        arg = argv[i]
        if not arg.startswith("--"):
            errors.append(f"unexpected argument {arg!r}; overrides look like --section.key value")
            i += 1
            continue
        key, _, text = arg[2:].partition("=")
        if key == "resume.allow_changed":  # takes every following word up to the next --option
            values = [text] if text else []
            while i + 1 < len(argv) and not argv[i + 1].startswith("--"):
                values.append(argv[i + 1])
                i += 1
            if not values:
                errors.append("--resume.allow_changed needs one or more config keys")
            line.allow_changed.extend(v for value in values for v in value.replace(",", " ").split())
            i += 1
            continue
        if "=" not in arg:
            if i + 1 >= len(argv):
                errors.append(f"{arg} needs a value")
                break
            text = argv[i + 1]
            i += 1
        i += 1
        if key == "config":
            line.config_file = Path(text)
        else:
            line.overrides.append((key, _parse_value(text)))
    if errors:
        raise ConfigError(*errors)
    return line


def parse_overrides(args: list[str]) -> list[tuple[str, object]]:
    """['--a.b', 'v', '--c=w'] -> [('a.b', parsed v), ('c', parsed w)]."""
    return parse_command_line(args).overrides


def read_config(line: CommandLine, errors: list[str] | None = None) -> Config:
    """Defaults < TOML file < overrides, types checked. With `errors`, type problems are appended there (the bad
    values keep their defaults, so the value checks can still run); without, they raise ConfigError."""
    data: dict = {}
    if line.config_file is not None:
        path = line.config_file
        if not path.is_file():
            raise ConfigError(f"--config: config file {path} does not exist")
        try:
            data = tomllib.loads(path.read_text())
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"--config: config file {path} is not valid TOML: {e}") from None
    if any(k == "stages" or k.startswith("stages.") for k, _ in line.overrides) and "stages" not in data:
        data["stages"] = to_dict(paper_stages())  # so --stages.N.x edits the default recipe
    found: list[str] = []
    for key, value in line.overrides:
        try:
            apply_override(data, key, value)
        except ConfigError as e:
            found.extend(e.problems)
    cfg = _from_dict(Config, data, "", found)
    if errors is None and found:
        raise ConfigError(*found)
    if errors is not None:
        errors.extend(found)
    return cfg


def read_and_check(line: CommandLine, command: str = "train", world_size: int = 1,
                   check_files: bool = True) -> Config:
    """read_config + check, with type and value problems in one ConfigError (a key with a type problem once)."""
    found: list[str] = []
    cfg = read_config(line, found)
    typed = {p.split(":")[0] for p in found}
    found += [p for p in problems(cfg, command, world_size, check_files) if p.split(":")[0] not in typed]
    if found:
        raise ConfigError(*found)
    return cfg


def world_size_from_env() -> int:
    """WORLD_SIZE as torchrun sets it before the process starts (1 without torchrun)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def load_config(argv: list[str], command: str = "train", world_size: int | None = None,
                check_files: bool = True) -> Config:
    """`--config X.toml [--a.b v ...]` -> a Config that passed every check for `command` (else ConfigError)."""
    line = parse_command_line(list(argv))
    return read_and_check(line, command, world_size_from_env() if world_size is None else world_size, check_files)


def main(argv: list[str]) -> int:
    """`python -m trainer.config [train|generate|cache] --config X.toml [overrides]`: resolved TOML or the errors."""
    command = argv.pop(0) if argv and argv[0] in COMMANDS else "train"
    try:
        cfg = load_config(argv, command)
    except ConfigError as e:
        print_problems(e)
        return 2
    print(dump_toml(to_dict(cfg)), end="")
    return 0


def print_problems(error: ConfigError, file=None) -> None:
    """The problems of a ConfigError, one per line, on stderr."""
    file = file or sys.stderr
    print(f"error: the config has {len(error.problems)} problem{'s' if len(error.problems) != 1 else ''}:", file=file)
    for line in error.problems:
        print(f"  {line}", file=file)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
