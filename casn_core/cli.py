"""``casn`` without the app: :mod:`casn_core.commands` (kept here, where the entry point was)."""
from casn_core.commands import build_parser, main

__all__ = ["build_parser", "main"]
