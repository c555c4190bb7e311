"""One dataclass tree for the whole trainer: TOML file, then `--a.b value` overrides, then checks.

    python -m trainer train --config configs/tiny_cpu.toml --optim.batch_size 2 --stages.0.iterations 5

Unknown keys and wrong types raise ConfigError naming the dotted key. Values on the command line are
parsed as TOML literals (`5`, `1e-6`, `true`, `[250, 500]`, `"text"`), bare words as strings.
"""
from __future__ import annotations

import dataclasses
import sys
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

from trainer.cache import CacheConfig
from trainer.data import DataConfig
from trainer.generate import GenerateConfig


class ConfigError(ValueError):
    """A config file or override is wrong; the message names the key."""


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
    cpu_threads: int = 0
    """torch.set_num_threads on CPU (0: torch's default). 1 avoids oversubscription on a busy machine."""
    """torch.use_deterministic_algorithms(True) (bit-exact resume on CPU)."""


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

    def __post_init__(self):
        if self.loss not in ("mse", "adversarial"):
            raise ConfigError(f"stage {self.name!r}: loss must be 'mse' or 'adversarial', not {self.loss!r}")
        if self.discriminator not in ("conditional", "unconditional"):
            raise ConfigError(f"stage {self.name!r}: discriminator must be 'conditional' or 'unconditional'")
        if self.student_steps < 1 or self.teacher_steps % self.student_steps:
            raise ConfigError(f"stage {self.name!r}: teacher_steps {self.teacher_steps} must be a multiple of "
                              f"student_steps {self.student_steps} (>= 1)")
        if any(not 0 < t <= 1000 for t in self.timesteps):
            raise ConfigError(f"stage {self.name!r}: timesteps must lie in (0, 1000], got {self.timesteps}")
        if self.d_noise_weights and len(self.d_noise_weights) != len(self.d_noise_timesteps):
            raise ConfigError(f"stage {self.name!r}: d_noise_weights needs one weight per d_noise_timesteps entry")
        if self.iterations < 0:
            raise ConfigError(f"stage {self.name!r}: iterations must be >= 0")


def paper_stages() -> list[StageConfig]:
    """AnimateDiff-Lightning 3.4: 128 -> 32 MSE (CFG 7.5), then 32 -> 8 -> 4 -> 2 -> 1, each conditional then unconditional."""
    stages = [StageConfig("128to32_mse", "mse", 128, 32, 2000, cfg_scale=7.5)]
    for teacher, student in ((32, 8), (8, 4), (4, 2), (2, 1)):
        multi = [250, 500, 750, 1000] if student <= 2 else []
        noise = [10, 250, 500, 750] if student == 1 else []
        for kind in ("conditional", "unconditional"):
            stages.append(StageConfig(f"{teacher}to{student}_{kind}", "adversarial", teacher, student, 2000,
                                      discriminator=kind, timesteps=list(multi), d_noise_timesteps=list(noise)))
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

    def __post_init__(self):
        if self.checkpoint.keep < 2:
            raise ConfigError("checkpoint.keep must be >= 2 (the newest may be mid-write when a run is killed)")
        if self.run.mixed_precision not in ("bf16", "no"):
            raise ConfigError(f"run.mixed_precision must be 'bf16' or 'no', not {self.run.mixed_precision!r}")


def rank_config(cfg: Config, rank: int) -> RankConfig:
    """Global rank r uses ranks[r % len(ranks)] (the paper's 8-rank table replicates over machines)."""
    if not cfg.ranks:
        raise ConfigError("ranks is empty: add [[ranks]] entries with base = '...' and dataset = '...'")
    return cfg.ranks[rank % len(cfg.ranks)]


# ----------------------------------------------------------------------------- dict <-> dataclass

def _is_dataclass_type(tp) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _convert(tp, value, path: str):
    """Checks/coerces one value against a type hint; raises ConfigError naming path."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _convert(inner[0], value, path)
    if _is_dataclass_type(tp):
        if dataclasses.is_dataclass(value):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: expected a table, got {value!r}")
        return from_dict(tp, value, path)
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{path}: expected a list, got {value!r}")
        return [_convert(args[0], v, f"{path}.{i}") for i, v in enumerate(value)]
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{path}: expected a list, got {value!r}")
        inner = [args[0]] * len(value) if len(args) == 2 and args[1] is Ellipsis else list(args)
        if len(inner) != len(value):
            raise ConfigError(f"{path}: expected {len(inner)} values, got {value!r}")
        return tuple(_convert(a, v, f"{path}.{i}") for i, (a, v) in enumerate(zip(inner, value)))
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: expected a table, got {value!r}")
        return {str(k): _convert(args[1], v, f"{path}.{k}") for k, v in value.items()}
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{path}: expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{path}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise ConfigError(f"{path}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{path}: expected a string, got {value!r}")
    if tp is typing.Any:
        return value
    raise ConfigError(f"{path}: unsupported field type {tp}")


def from_dict(cls, data: dict, path: str = ""):
    """Builds dataclass `cls` from a nested dict, rejecting unknown keys and wrong types (named by dotted path)."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - names)
    if unknown:
        where = f"{path}.{unknown[0]}" if path else unknown[0]
        raise ConfigError(f"unknown config key {where!r} (known keys here: {', '.join(sorted(names))})")
    kwargs = {k: _convert(hints[k], v, f"{path}.{k}" if path else k) for k, v in data.items()}
    try:
        return cls(**kwargs)
    except TypeError as e:  # a required field is missing
        raise ConfigError(f"{path or cls.__name__}: {e}") from None


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


# ----------------------------------------------------------------------------- overrides

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
        node = node[key]
    last = parts[-1]
    if isinstance(node, list):
        if not last.isdigit() or int(last) >= len(node):
            raise ConfigError(f"--{dotted}: {last} is not an index of a list of {len(node)}")
        node[int(last)] = value
    else:
        node[last] = value


def parse_overrides(args: list[str]) -> list[tuple[str, object]]:
    """['--a.b', 'v', '--c=w'] -> [('a.b', parsed v), ('c', parsed w)]."""
    out, i = [], 0
    while i < len(args):
        arg = args[i]
        if not arg.startswith("--"):
            raise ConfigError(f"unexpected argument {arg!r}; overrides look like --section.key value")
        if "=" in arg:
            key, text = arg[2:].split("=", 1)
            i += 1
        else:
            if i + 1 >= len(args):
                raise ConfigError(f"{arg} needs a value")
            key, text = arg[2:], args[i + 1]
            i += 2
        out.append((key, _parse_value(text)))
    return out


def load_config(argv: list[str]) -> Config:
    """`--config X.toml [--a.b v ...]` -> Config (defaults < TOML < command line)."""
    argv = list(argv)
    data: dict = {}
    if "--config" in argv:
        i = argv.index("--config")
        if i + 1 >= len(argv):
            raise ConfigError("--config needs a TOML file path")
        path = Path(argv[i + 1])
        del argv[i:i + 2]
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist")
        try:
            data = tomllib.loads(path.read_text())
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"config file {path} is not valid TOML: {e}") from None
    overrides = parse_overrides(argv)
    if any(k == "stages" or k.startswith("stages.") for k, _ in overrides) and "stages" not in data:
        data["stages"] = to_dict(paper_stages())  # so --stages.N.x edits the default recipe
    for key, value in overrides:
        apply_override(data, key, value)
    return from_dict(Config, data)


if __name__ == "__main__":  # print the resolved config
    print(dump_toml(to_dict(load_config(sys.argv[1:]))))
