"""`python -m trainer [train|generate|cache] --config X.toml [--a.b value ...]` (default: train).

The whole config is checked first, before any process group or model: every problem is printed, one line
per key, and the exit status is 2. Under torchrun (RANK set) the process group is then initialised: gloo
on CPU, NCCL on GPU, with `run.collective_timeout_s`. A resume that finds the config changed since the
checkpoint refuses unless `--resume.allow_changed KEY [KEY ...]` names every changed key.
"""
from __future__ import annotations

import os
import sys

from trainer.config import COMMANDS, ConfigError, parse_command_line, print_problems, read_and_check, \
    world_size_from_env


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = argv.pop(0) if argv and argv[0] in COMMANDS else "train"
    if argv and argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0
    try:
        line = parse_command_line(argv)
        cfg = read_and_check(line, command, world_size_from_env())
    except ConfigError as e:
        if int(os.environ.get("LOCAL_RANK", "0")) == 0:  # once per machine, not once per GPU
            print_problems(e)
        return 2
    from trainer import distributed

    info = distributed.setup(cfg.run.device, cfg.run.collective_timeout_s)
    try:
        if command == "train":
            from trainer.train import train
            train(cfg, info, allow_changed=line.allow_changed)
        elif command == "generate":
            from trainer.generate import main as generate
            generate(cfg, info.rank, info.world_size)
        else:
            from trainer.cache import main as cache
            cache(cfg, info.rank, info.world_size)
    except user_errors() as e:  # a clear message, not a traceback, for what the user can fix
        print(f"error (rank {info.rank}): {e}", file=sys.stderr)
        return 1
    finally:
        distributed.cleanup()
    return 0


def user_errors() -> tuple[type[BaseException], ...]:
    from lightning_core.formats import MotionFormatError
    from trainer.checkpoint import CheckpointError
    from trainer.data import DataError
    from trainer.sd15 import BaseModelError
    from trainer.train import MemoryPlanError, NonFiniteLossError, RankDivergenceError
    return (ConfigError, BaseModelError, MotionFormatError, DataError, CheckpointError, NonFiniteLossError,
            RankDivergenceError, MemoryPlanError)


if __name__ == "__main__":
    sys.exit(main())
