"""Reading user images safely: any size, grayscale, RGBA, 16-bit, CMYK, palette or animated.

Every failure is an :class:`ImageInputError` that names the file; images over ``max_pixels`` are
refused from their header, before any pixel is decoded.
"""
from __future__ import annotations

import io
import os
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from casn_core.numeric import unit_range

MAX_PIXELS = 25_000_000
"""Default limit: 25 megapixels."""
MAX_FILE_BYTES = 50 * 1024 * 1024
"""Files larger than this are refused before they are opened."""


class ImageInputError(ValueError):
    """An input image could not be used; the message names it and says why."""


def _to_rgb(image: Image.Image) -> Image.Image:
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        array = np.asarray(image, dtype=np.float64)
        top = array.max() if array.size and array.max() > 255 else 255.0
        image = Image.fromarray(np.uint8(np.clip(array / max(top, 1) * 255, 0, 255)))
    elif image.mode == "F":
        array = np.nan_to_num(np.asarray(image, dtype=np.float64))
        image = Image.fromarray(np.uint8(255 * unit_range(array, dim=None)))
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def load_rgb(source: str | os.PathLike | bytes, name: str | None = None, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """Open a path or bytes as an RGB PIL image (first frame of an animation, EXIF orientation applied)."""
    label = name or (f"{len(source)}-byte upload" if isinstance(source, bytes) else str(source))
    if not isinstance(source, bytes):
        path = Path(source)
        if not path.is_file():
            raise ImageInputError(f"{label}: no such file")
        size = path.stat().st_size
        if size == 0:
            raise ImageInputError(f"{label}: the file is empty (0 bytes)")
        if size > MAX_FILE_BYTES:
            raise ImageInputError(f"{label}: the file is {size / 2**20:.0f} MiB, over the {MAX_FILE_BYTES // 2**20} MiB limit")
        source = path.read_bytes()
    elif len(source) == 0:
        raise ImageInputError(f"{label}: the file is empty (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(source))
            width, height = image.size
            if width * height > max_pixels:
                raise ImageInputError(
                    f"{label}: {width}x{height} = {width * height / 1e6:.1f} megapixels, over the "
                    f"{max_pixels / 1e6:.0f}-megapixel limit"
                )
            if width < 1 or height < 1:
                raise ImageInputError(f"{label}: the image has no pixels ({width}x{height})")
            image.seek(0)
            image.load()
            image = ImageOps.exif_transpose(image) or image
            return _to_rgb(image)
    except ImageInputError:
        raise
    except UnidentifiedImageError:
        raise ImageInputError(f"{label}: not an image file PIL can read") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageInputError(f"{label}: refused as too large ({exc})") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise ImageInputError(f"{label}: truncated or corrupted image ({exc})") from None
