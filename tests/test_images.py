"""Reading user images: odd formats are converted, bad files get a clear error naming them."""
from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from casn_core.images import ImageInputError, load_rgb


def _encode(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


@pytest.mark.parametrize(
    "image, fmt",
    [
        (Image.new("L", (40, 80), 128), "PNG"),
        (Image.new("RGBA", (40, 80), (10, 20, 30, 0)), "PNG"),
        (Image.fromarray(np.full((80, 40), 60000, dtype=np.uint16)), "PNG"),
        (Image.new("CMYK", (40, 80), (0, 255, 0, 0)), "JPEG"),
        (Image.new("P", (40, 80), 3), "GIF"),
        (Image.new("RGB", (1, 1), (1, 2, 3)), "PNG"),
        (Image.new("RGB", (10000, 10), (1, 2, 3)), "PNG"),
    ],
    ids=["gray", "rgba", "16bit", "cmyk", "palette-gif", "1x1", "10000x10"],
)
def test_odd_images_become_rgb(image, fmt):
    result = load_rgb(_encode(image, fmt), name="upload")
    assert result.mode == "RGB" and result.size == image.size


def test_animated_gif_uses_the_first_frame():
    frames = [Image.new("P", (20, 30), i) for i in range(3)]
    buffer = io.BytesIO()
    frames[0].save(buffer, format="GIF", save_all=True, append_images=frames[1:])
    assert load_rgb(buffer.getvalue()).size == (20, 30)


def test_rgba_transparency_is_composited_on_white():
    rgba = Image.new("RGBA", (4, 4), (0, 0, 0, 0))
    assert load_rgb(_encode(rgba, "PNG")).getpixel((0, 0)) == (255, 255, 255)


@pytest.mark.parametrize(
    "payload, message",
    [
        (b"", "empty"),
        (b"this is not an image at all", "not an image"),
        (_encode(Image.new("RGB", (64, 128), (9, 9, 9)), "JPEG")[:200], "truncated or corrupted"),
    ],
)
def test_bad_bytes_get_clear_errors(payload, message):
    with pytest.raises(ImageInputError, match=message) as info:
        load_rgb(payload, name="holiday.jpg")
    assert "holiday.jpg" in str(info.value)


def test_oversized_images_are_refused_from_the_header():
    big = _encode(Image.new("L", (6000, 5000)), "PNG")  # 30 MP, tiny file
    with pytest.raises(ImageInputError, match="megapixel"):
        load_rgb(big, name="huge.png")


def test_missing_and_empty_files(tmp_path):
    with pytest.raises(ImageInputError, match="no such file"):
        load_rgb(tmp_path / "nope.jpg")
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    with pytest.raises(ImageInputError, match="empty"):
        load_rgb(empty)


def test_random_bytes_never_escape_as_other_exceptions():
    rng = np.random.default_rng(0)
    headers = [b"", b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"GIF89a", b"BM"]
    for i in range(200):
        payload = headers[i % len(headers)] + rng.bytes(int(rng.integers(0, 300)))
        try:
            load_rgb(payload, name=f"fuzz-{i}")
        except ImageInputError:
            pass
