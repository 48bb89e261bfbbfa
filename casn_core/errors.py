"""Errors shared across layers, defined below all of them so that any module can raise them."""
from __future__ import annotations


class CheckpointError(RuntimeError):
    """A checkpoint could not be read or does not fit; the message names the file."""
