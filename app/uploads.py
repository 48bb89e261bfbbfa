"""Reading the user's uploaded images: refuse by size before decoding, every failure a clear message."""
from __future__ import annotations

import os
from pathlib import Path

from PIL import Image

from app.core import MAX_PIXELS, ImageInputError, load_rgb

MAX_UPLOAD_BYTES = 50 * 2**20
"""Uploads larger than this are refused before they are read (Gradio's own limit is set just above)."""


class UploadError(ValueError):
    """An upload cannot be explained; the message is meant for the user."""


def _path_of(upload) -> str | None:
    """Gradio hands a path (``type="filepath"``); tolerate file-like objects and dicts too."""
    if upload is None:
        return None
    if isinstance(upload, (str, os.PathLike)):
        return str(upload)
    if isinstance(upload, dict):
        return upload.get("path") or upload.get("name")
    return getattr(upload, "path", None) or getattr(upload, "name", None)


def read_upload(upload, label: str, max_bytes: int = MAX_UPLOAD_BYTES, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """An uploaded file as an RGB image; :class:`UploadError` with a user-facing message otherwise.

    Any size, grayscale, RGBA, 16-bit, CMYK, palette and animated images are accepted (first frame);
    not-an-image, truncated, empty, over ``max_bytes`` or over ``max_pixels`` files are refused. The
    message names the upload by its label and file name only, never by its path on the server.
    """
    path = _path_of(upload)
    if not path:
        raise UploadError(f"{label}: no file uploaded; choose an image file")
    file = Path(path)
    name = f"{label} ({file.name})"
    try:
        size = file.stat().st_size
    except OSError:
        raise UploadError(f"{name}: the uploaded file could not be read") from None
    if size > max_bytes:
        raise UploadError(f"{name}: the file is {size / 2**20:.1f} MiB, over the {max_bytes / 2**20:.0f} MiB upload "
                          f"limit; it was not decoded")
    try:
        return load_rgb(file, name=name, max_pixels=max_pixels)
    except ImageInputError as exc:
        raise UploadError(str(exc)) from None
    except MemoryError:
        raise UploadError(f"{name}: not enough memory to decode this image") from None
    except Exception as exc:  # never let a hostile file take a request down with a traceback
        raise UploadError(f"{name}: could not be read as an image ({type(exc).__name__})") from None


def upload_name(upload) -> str:
    """The user's file name of an upload (Gradio keeps it as the basename of the stored file)."""
    if isinstance(upload, dict):
        name = upload.get("orig_name") or upload.get("path") or "upload"
    else:
        name = getattr(upload, "orig_name", None) or _path_of(upload) or "upload"
    return Path(str(name)).name
