"""Pictures for the app drawn with PIL: thumbnails, attention and similarity overlays with colour bars,
correspondence marks, previews, and the export sheet. (Plots with axes are in :mod:`app.plots`.)

Every heat map carries a colour bar that says how it is normalised: the Siamese attention maps
each min-max to their own range (as the paper's figures 5-8 show them; ``overlay_heatmap``), the
similarity maps of a pair on one shared scale (both sum to the same s, so their colours compare).
"""
from __future__ import annotations

import io

import numpy as np
from matplotlib import colormaps
from PIL import Image, ImageDraw, ImageFont

from app.core import overlay_heatmap

GREEN = (34, 160, 60)
RED = (215, 38, 38)
GREY = (150, 150, 150)
DARK = (60, 60, 60)
GOLD = (240, 180, 0)
DISPLAY_HEIGHT = 220
"""Pixel height of the explanation panels' images (four of them and a colour bar fit the page's wider column)."""
OVERLAY_ALPHA = 0.5
"""The weight of the colour map over the image (``overlay_heatmap``'s default)."""


def _font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1
        return ImageFont.load_default()


def bordered(image: Image.Image | np.ndarray, colour: tuple[int, int, int] | None, height: int = 160,
             border: int = 6) -> np.ndarray:
    """A thumbnail of ``height`` pixels with a coloured frame (green = true match, red = wrong)."""
    pil = image if isinstance(image, Image.Image) else Image.fromarray(np.asarray(image))
    pil = pil.convert("RGB")
    width = max(1, round(pil.width * height / max(pil.height, 1)))
    pil = pil.resize((width, height), Image.BILINEAR)
    if colour is None:
        return np.asarray(pil)
    canvas = Image.new("RGB", (width + 2 * border, height + 2 * border), colour)
    canvas.paste(pil, (border, border))
    return np.asarray(canvas)


def faded(image: np.ndarray, amount: float = 0.5) -> np.ndarray:
    """``image`` blended towards white (the strip's tail: entries not re-ranked with attention)."""
    pixels = np.asarray(image, dtype=np.float32)
    return np.uint8(np.clip(pixels + amount * (255 - pixels), 0, 255))


def ringed(image: np.ndarray, colour: tuple[int, int, int] = GOLD, width: int = 5) -> np.ndarray:
    """``image`` inside an outer ring (the strip's first true match)."""
    pil = Image.fromarray(np.asarray(image))
    canvas = Image.new("RGB", (pil.width + 2 * width, pil.height + 2 * width), colour)
    canvas.paste(pil, (width, width))
    return np.asarray(canvas)


def preview(image: Image.Image, height: int = 192) -> np.ndarray:
    """An uploaded image as the user sent it (its own aspect ratio), ``height`` pixels tall, for the page."""
    pil = image.convert("RGB")
    width = max(1, min(4 * height, round(pil.width * height / max(pil.height, 1))))
    return np.asarray(pil.resize((width, height), Image.BILINEAR))


def _panel(image: np.ndarray, height: int) -> Image.Image:
    pil = Image.fromarray(image)
    width = max(1, round(pil.width * height / pil.height))
    return pil.resize((width, height), Image.BILINEAR)


def _wrapped(draw: ImageDraw.ImageDraw, text: str, font, width: float) -> list[str]:
    """``text`` in lines no wider than ``width`` (words kept whole; a word wider than ``width`` gets its own line)."""
    lines, current = [], ""
    for word in text.split():
        trial = f"{current} {word}".strip()
        if current and draw.textlength(trial, font=font) > width:
            lines.append(current)
            current = word
        else:
            current = trial
    return lines + ([current] if current else [])


def _captioned_row(tiles: list[tuple[Image.Image, str]], height: int, framed_from: int | None = None,
                   frame: tuple | None = None, bar: Image.Image | None = None, footer: str = "") -> np.ndarray:
    """Tiles side by side under their captions (wrapped to the tile's width, never cut), then ``bar``, and
    ``footer`` (wrapped) under them all; ``frame`` outlines the tiles from index ``framed_from`` on."""
    gap, pad, line = 10, 4, 16
    font = _font(13)
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    wrapped = [_wrapped(probe, text, font, tile.width + gap - 2) for tile, text in tiles]
    caption = line * max(len(lines) for lines in wrapped) + 6
    width = sum(t.width for t, _ in tiles) + gap * (len(tiles) - 1) + 2 * pad + (bar.width + gap if bar else 0)
    footer_lines = _wrapped(probe, footer, font, width - 2 * pad) if footer else []
    body = max(height, bar.height if bar else 0)
    canvas = Image.new("RGB", (width, body + caption + 2 * pad + line * len(footer_lines) + (4 if footer else 0)),
                       (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    x = pad
    for i, ((tile, _), lines) in enumerate(zip(tiles, wrapped)):
        if frame is not None and framed_from is not None and i >= framed_from:
            draw.rectangle([x - 3, pad + caption - 3, x + tile.width + 2, pad + caption + height + 2], outline=frame,
                           width=3)
        canvas.paste(tile, (x, pad + caption))
        for j, text in enumerate(lines):
            text_width = draw.textlength(text, font=font)
            draw.text((x + (tile.width - text_width) / 2, pad + 2 + line * j), text, fill=(30, 30, 30), font=font)
        x += tile.width + gap
    if bar is not None:
        canvas.paste(bar, (x, pad + caption))
    for j, text in enumerate(footer_lines):
        draw.text((pad, pad + caption + body + 4 + line * j), text, fill=(70, 70, 70), font=font)
    return np.asarray(canvas)


def _jet(values: np.ndarray) -> np.ndarray:
    """RGB uint8 of values in [0, 1] through the JET colour map (the one ``overlay_heatmap`` uses)."""
    return np.uint8(255 * colormaps["jet"](np.clip(values, 0, 1))[..., :3])


def colour_bar(height: int, top: str, bottom: str) -> Image.Image:
    """A vertical JET colour bar ``height`` pixels tall with its end values beside it."""
    font = _font(12)
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    width = 20 + int(max(probe.textlength(top, font=font), probe.textlength(bottom, font=font))) + 2
    canvas = Image.new("RGB", (width, height), (255, 255, 255))
    strip = _jet(np.linspace(1, 0, height)[:, None].repeat(14, axis=1))
    canvas.paste(Image.fromarray(strip), (0, 0))
    draw = ImageDraw.Draw(canvas)
    draw.rectangle([0, 0, 13, height - 1], outline=(80, 80, 80))
    draw.text((18, 0), top, fill=(30, 30, 30), font=font)
    draw.text((18, height - 14), bottom, fill=(30, 30, 30), font=font)
    return canvas


def overlay_on_scale(image: np.ndarray, values: np.ndarray, low: float, high: float,
                     alpha: float = OVERLAY_ALPHA) -> np.ndarray:
    """``image`` under the JET map of ``values`` scaled from ``low`` (blue) to ``high`` (red), bilinear."""
    span = high - low if high > low else 1.0
    scaled = (np.asarray(values, dtype=np.float32) - low) / span
    heat = np.asarray(Image.fromarray(scaled.astype(np.float32)).resize(
        (image.shape[1], image.shape[0]), Image.BILINEAR))
    return np.uint8(np.clip((1 - alpha) * image.astype(np.float32) + alpha * _jet(heat).astype(np.float32), 0, 255))


def overlay_panel(image1: np.ndarray, image2: np.ndarray, map1: np.ndarray, map2: np.ndarray,
                  labels: tuple[str, str] = ("query", "gallery"), frame: tuple | None = None,
                  height: int = DISPLAY_HEIGHT) -> np.ndarray:
    """``image 1 | its attention | image 2's attention | image 2`` and a colour bar: the paper's figure 7 layout.

    Images are RGB uint8 at the model's input size (what the network saw); maps are (h, w) Siamese
    attention maps, each min-max normalised to its own range. ``frame`` colours the border around
    image 2 (green/red for true/wrong match).
    """
    tiles = [
        (_panel(image1, height), labels[0]),
        (_panel(overlay_heatmap(image1, np.asarray(map1)), height), f"{labels[0]} attention"),
        (_panel(overlay_heatmap(image2, np.asarray(map2)), height), f"{labels[1]} attention"),
        (_panel(image2, height), labels[1]),
    ]
    return _captioned_row(tiles, height, framed_from=2, frame=frame, bar=colour_bar(height, "max", "min"),
                          footer="colour: each attention map min-max normalised on its own (min blue, max red)")


def similarity_panel(image1: np.ndarray, image2: np.ndarray, map1: np.ndarray, map2: np.ndarray,
                     labels: tuple[str, str] = ("query", "gallery"), height: int = DISPLAY_HEIGHT) -> np.ndarray:
    """Both images with their similarity maps ``m_q``, ``m_g`` (each sums to the cosine similarity s), on
    one shared scale from 0 (or the most negative cell) to the largest cell of either map."""
    values = [np.asarray(map1, dtype=np.float32), np.asarray(map2, dtype=np.float32)]
    low = min(0.0, *(float(v.min()) for v in values))
    high = max(float(v.max()) for v in values)
    tiles = [
        (_panel(overlay_on_scale(image1, values[0], low, high), height), f"{labels[0]}: similarity map"),
        (_panel(overlay_on_scale(image2, values[1], low, high), height), f"{labels[1]}: similarity map"),
    ]
    return _captioned_row(tiles, height, bar=colour_bar(height, f"{high:.3f}", f"{low:.3f}"),
                          footer="colour: each cell's share of s, one scale for both maps")


def magnified(image: np.ndarray, scale: int) -> np.ndarray:
    """``image`` enlarged ``scale`` times (nearest neighbour: pixels stay where they were)."""
    return np.repeat(np.repeat(np.asarray(image), scale, axis=0), scale, axis=1)


def marked(image: np.ndarray, x: int, y: int, cell: tuple[int, int], map_size: tuple[int, int]) -> np.ndarray:
    """``image`` with the clicked pixel marked (a cross) and the feature-map cell it falls in outlined."""
    pil = Image.fromarray(np.asarray(image)).convert("RGB")
    draw = ImageDraw.Draw(pil)
    cell_h, cell_w = pil.height / map_size[0], pil.width / map_size[1]
    top, left = cell[0] * cell_h, cell[1] * cell_w
    draw.rectangle([left, top, left + cell_w - 1, top + cell_h - 1], outline=(255, 230, 0), width=2)
    arm = max(4, pil.height // 40)
    for dx, dy in ((1, 0), (0, 1)):
        draw.line([x - arm * dx, y - arm * dy, x + arm * dx, y + arm * dy], fill=(255, 0, 255), width=3)
    draw.ellipse([x - 2, y - 2, x + 2, y + 2], fill=(255, 255, 255))
    return np.asarray(pil)


def heat(image: np.ndarray, values: np.ndarray) -> np.ndarray:
    """``image`` with ``values`` (h, w) as a heat map from 0 to their largest value (where a clicked
    location's features match; the page's colour bar states this scale)."""
    values = np.asarray(values, dtype=np.float32)
    return overlay_on_scale(np.asarray(image), values, min(0.0, float(values.min())), float(values.max()))


def correspondence_pair(query_image: np.ndarray, gallery_image: np.ndarray, found) -> tuple[np.ndarray, np.ndarray]:
    """The clicked image marked and the other lit up by ``found.values`` (:class:`app.similarity.Correspondence`)."""
    if found.direction == "query":
        return (marked(query_image, found.x, found.y, found.cell, found.source_map_size),
                heat(gallery_image, found.values))
    return (heat(query_image, found.values),
            marked(gallery_image, found.x, found.y, found.cell, found.source_map_size))


def export_png(panels: list[np.ndarray], header: str) -> bytes:
    """One PNG with a text header and the ``panels`` (RGB uint8 pictures) stacked and centred."""
    font = _font(14)
    lines = header.splitlines() or [""]
    text_height = 20 * len(lines) + 12
    width = max(panel.shape[1] for panel in panels)
    canvas = Image.new("RGB", (width, text_height + sum(panel.shape[0] for panel in panels)), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    for i, line in enumerate(lines):
        draw.text((10, 6 + 20 * i), line, fill=(20, 20, 20), font=font)
    top = text_height
    for panel in panels:
        canvas.paste(Image.fromarray(panel), ((width - panel.shape[1]) // 2, top))
        top += panel.shape[0]
    buffer = io.BytesIO()
    canvas.save(buffer, format="PNG")
    return buffer.getvalue()


def colour_bar_html(low: str, high: str, note: str) -> str:
    """A horizontal JET colour bar as HTML, for heat maps the user clicks on (a bar drawn into the picture
    would move the pixels a click names)."""
    stops = ", ".join(f"rgb{tuple(int(c) for c in _jet(np.array([v]))[0])}" for v in np.linspace(0, 1, 7))
    return (f'<div style="display:flex;flex-wrap:wrap;align-items:center;gap:0.4em;font-size:0.85em">'
            f'<span style="white-space:nowrap">{low} <span style="display:inline-block;width:8em;height:0.8em;'
            f'border:1px solid #666;vertical-align:middle;background:linear-gradient(to right, {stops})"></span> '
            f'{high}</span><span>{note}</span></div>')
