"""``casn train``: the options are :class:`casn_core.engine.train_config.TrainConfig`'s fields, each declared once."""
from __future__ import annotations

import argparse
import logging
import sys
from dataclasses import MISSING, fields

from casn_core.checkpoint import CheckpointError
from casn_core.engine.train import NonFiniteLossError, train
from casn_core.engine.train_config import TrainConfig

_TYPES = {"int": int, "float": float, "str": str, "int | None": int, "float | None": float, "str | None": str}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``python -m casn_core train``, one per :class:`TrainConfig` field (defaults are the
    paper's, sec. 4), plus ``--resume``."""
    for f in fields(TrainConfig):
        meta = dict(f.metadata)
        meta.pop("resume", None)
        if not meta.pop("cli", True):
            continue
        flag = "--" + f.name.replace("_", "-")
        help_text = meta.pop("help")
        if f.default is MISSING:
            parser.add_argument(flag, required=True, help=help_text)
        elif f.type == "bool":
            parser.add_argument(flag, action="store_true", help=help_text)
        else:
            parse = meta.pop("parse", None) or _TYPES[f.type]
            parser.add_argument(flag, type=parse, default=f.default, help=help_text, **meta)
    parser.add_argument("--resume", action="store_true", help="continue from RUN_DIR/last.pt")
    parser.epilog = ("Augmentation is ours (the paper states only the resize): random horizontal flip and a 10-pixel "
                     "zero pad with a random crop back to the input size, as the IDE and PCB baselines' public code; "
                     "--random-erasing adds random erasing.")


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The :class:`TrainConfig` of parsed ``train`` arguments."""
    names = {f.name for f in fields(TrainConfig)}
    return TrainConfig(**{k: v for k, v in vars(args).items() if k in names})


def run(args: argparse.Namespace) -> int:
    """Entry point of ``python -m casn_core train``."""
    config = config_from_args(args)
    try:
        train(config, resume=args.resume)
    except (NonFiniteLossError, CheckpointError, ValueError, FileNotFoundError) as exc:
        logging.getLogger("casn_core.train").error("%s", exc)  # also into the run's train.log
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


