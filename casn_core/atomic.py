"""Atomic file writes: a temporary file in the target's folder, fsync, rename, then fsync the folder.

A crash at any point leaves either the previous file or the complete new one, never a partial file
(checkpoints, caches, JSON results, figures). Temporary names start with ``.<name>.`` and end in
``.tmp`` so that :func:`casn_core.checkpoint.remove_stale_temporaries` can find leftovers of a kill.
"""
from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import IO, Any, Iterator

__all__ = ["atomic_file", "write_bytes_atomic", "write_json_atomic", "write_text_atomic"]


def _fsync_folder(folder: Path) -> None:
    try:  # make the rename itself durable (not possible on every file system)
        dir_fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError:
        pass


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike, mode: str = "wb", encoding: str | None = None) -> Iterator[IO[Any]]:
    """``with atomic_file(path) as handle: ...`` -- the file appears at ``path`` only when the block succeeds."""
    if mode not in ("wb", "w"):
        raise ValueError(f"atomic_file writes whole files: mode 'wb' or 'w', got {mode!r}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode, encoding=encoding if mode == "w" else None) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    _fsync_folder(path.parent)


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> Path:
    with atomic_file(path, "wb") as handle:
        handle.write(data)
    return Path(path)


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    with atomic_file(path, "w", encoding="utf-8") as handle:
        handle.write(text)
    return Path(path)


def write_json_atomic(path: str | os.PathLike, obj: Any, indent: int | None = None) -> Path:
    return write_text_atomic(path, json.dumps(obj, indent=indent))
