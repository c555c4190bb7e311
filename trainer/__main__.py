"""`python -m trainer [train|generate|cache] --config X.toml [--a.b value ...]` (default: train).

Under torchrun (RANK set) the process group is initialised first: gloo on CPU, NCCL on GPU.
"""
from __future__ import annotations

import sys

COMMANDS = ("train", "generate", "cache")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = argv.pop(0) if argv and argv[0] in COMMANDS else "train"
    if argv and argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0
    from trainer import distributed
    from trainer.config import ConfigError, load_config

    try:
        cfg = load_config(argv)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    info = distributed.setup(cfg.run.device)
    try:
        if command == "train":
            from trainer.train import train
            train(cfg, info)
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
    from trainer.config import ConfigError
    from trainer.data import DataError
    from trainer.sd15 import BaseModelError
    from trainer.train import NonFiniteLossError
    return (ConfigError, BaseModelError, MotionFormatError, DataError, CheckpointError, NonFiniteLossError)


if __name__ == "__main__":
    sys.exit(main())
