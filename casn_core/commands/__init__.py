"""The ``casn`` command line: argument parsing, printing and exit codes live here, not in the library.

One module per command, each with ``add_arguments(parser)`` and ``run(args) -> int`` (the exit
status); :data:`COMMANDS` is the table :func:`main` dispatches through. Each command's module is
imported only when that command runs, so ``casn synth`` does not pay for torchvision's models.
``casn app`` (the Gradio app) is added by :mod:`app.cli`, which sits above the library.
"""
from __future__ import annotations

import argparse
import importlib
import logging
import sys
from typing import NamedTuple


class Command(NamedTuple):
    """A subcommand: its name, its one-line help, and the module with ``add_arguments`` and ``run``."""

    name: str
    help: str
    module: str


COMMANDS = (
    Command("synth", "generate a procedural pedestrian dataset (Market layout)", "synth"),
    Command("train", "train CASN (DDP under torchrun)", "train"),
    Command("eval", "CMC/mAP/mINP of the feature ranking and every named CASN ranking", "eval"),
    Command("tune", "choose the attention weight w (and K) on a validation set (never the test split) and "
            "store it in the checkpoint", "tune"),
    Command("explain", "explain one image pair (JSON and figure)", "explain"),
    Command("export", "copy a training checkpoint without its optimizer state (the file to ship)", "export"),
    Command("search", "search any folder of person crops with query images", "search"),
    Command("fit-head", "train CASN's BCE head (eq. 3) on a frozen torchreid model: its Siamese attention and "
            "CASN ranking", "fit_head"),
)


def show_library_log() -> None:
    """The library's INFO messages (map stores, estimates, validation curves) on stderr, other libraries'
    warnings only; nothing changes when the caller has configured logging already."""
    if logging.getLogger().handlers:
        return
    logging.basicConfig(level=logging.WARNING, format="%(message)s", stream=sys.stderr)
    logging.getLogger("casn_core").setLevel(logging.INFO)


def _module(command: Command):
    return importlib.import_module(f"casn_core.commands.{command.module}")


def build_parser(extra: tuple[Command, ...] = ()) -> argparse.ArgumentParser:
    """The ``casn`` parser; ``extra`` lists commands whose options another module parses (the app's)."""
    parser = argparse.ArgumentParser(prog="casn", description="CASN person re-identification "
                                     "(Zheng et al., CVPR 2019): train, evaluate, explain, search")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in COMMANDS:
        _module(command).add_arguments(commands.add_parser(command.name, help=command.help))
    for command in extra:
        commands.add_parser(command.name, help=command.help, add_help=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Parse ``argv`` (default ``sys.argv[1:]``) and run its command; returns the exit status."""
    args = build_parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    command = next(c for c in COMMANDS if c.name == args.command)
    return _module(command).run(args)
