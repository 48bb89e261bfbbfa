"""Reading the user's uploaded images: refuse by size before decoding, every failure a clear message."""
from __future__ import annotations

import os
from pathlib import Path

from PIL import Image

from app.core import MAX_PIXELS, ImageInputError, load_rgb

MAX_UPLOAD_BYTES = 50 * 2**20
"""Uploads larger than this are refused before they are read; Gradio's own limit is the same number, so the
page, Gradio's refusal and ours name one limit (:func:`limit_text`)."""

MIN_SIDE = 16
"""Images with a side under this many pixels cannot hold a person crop (the smallest model input, 128 x 64,
would magnify them over 8 times) and are refused."""

ASPECT_TOLERANCE = 1.5
"""An image whose height:width differs from the model input's by this factor or more gets a warning (a square
photo into a 2:1 person crop is stretched 2x)."""


def limit_text(max_bytes: int = MAX_UPLOAD_BYTES) -> str:
    """The upload limit as the page, Gradio's refusal and ours state it (Gradio's browser side divides by 2^20)."""
    return f"{max_bytes / 2**20:.1f} MB"


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
        raise UploadError(f"{label}: no file uploaded; choose an image file (at most {limit_text(max_bytes)})")
    file = Path(path)
    name = f"{label} ({file.name})"
    try:
        size = file.stat().st_size
    except OSError:
        raise UploadError(f"{name}: the uploaded file could not be read") from None
    if size > max_bytes:
        raise UploadError(f"{name}: the file is {size / 2**20:.1f} MB, over the {limit_text(max_bytes)} upload "
                          f"limit; it was not decoded")
    try:
        image = load_rgb(file, name=name, max_pixels=max_pixels)
    except ImageInputError as exc:
        raise UploadError(str(exc)) from None
    except MemoryError:
        raise UploadError(f"{name}: not enough memory to decode this image") from None
    except Exception as exc:  # never let a hostile file take a request down with a traceback
        raise UploadError(f"{name}: could not be read as an image ({type(exc).__name__})") from None
    if min(image.size) < MIN_SIDE:
        raise UploadError(f"{name}: the image is {image.width} x {image.height} pixels, too small to hold a person "
                          f"(each side needs at least {MIN_SIDE} pixels)")
    return image


def aspect_warning(image: Image.Image, input_size: tuple[int, int], name: str) -> str:
    """A warning when ``image`` (W x H) is far from the model input's height:width (H x W), else ""."""
    height, width = input_size
    ratio = (image.height / image.width) / (height / width)
    if 1 / ASPECT_TOLERANCE < ratio < ASPECT_TOLERANCE:
        return ""
    return (f"{name} is {image.width} x {image.height} pixels (height:width {image.height / image.width:.2f}); the model "
            f"input is {width} x {height} ({height / width:.2f}), so it is {'squashed' if ratio > 1 else 'stretched'} "
            f"{max(ratio, 1 / ratio):.1f}x vertically to fit. Person crops are about {height / width:.0f}:1 "
            f"(height:width); crop the person first for a faithful explanation.")


def upload_name(upload) -> str:
    """The user's file name of an upload (Gradio keeps it as the basename of the stored file)."""
    if isinstance(upload, dict):
        name = upload.get("orig_name") or upload.get("path") or "upload"
    else:
        name = getattr(upload, "orig_name", None) or _path_of(upload) or "upload"
    return Path(str(name)).name
