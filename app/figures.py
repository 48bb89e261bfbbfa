"""Pictures for the app: bordered thumbnails, attention overlays, importance vectors, the CMC curve.

Figures are drawn on their own ``Figure`` + Agg canvas (no pyplot state), so concurrent requests
do not share anything.
"""
from __future__ import annotations

import io

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image, ImageDraw, ImageFont

from app.core import overlay_heatmap, plot_aligned, plot_rows

GREEN = (34, 160, 60)
RED = (215, 38, 38)
GREY = (150, 150, 150)
DARK = (60, 60, 60)
DISPLAY_HEIGHT = 256


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


def _panel(image: np.ndarray, height: int) -> Image.Image:
    pil = Image.fromarray(image)
    width = max(1, round(pil.width * height / pil.height))
    return pil.resize((width, height), Image.BILINEAR)


def _captioned_row(tiles: list[tuple[Image.Image, str]], height: int, framed_from: int | None = None,
                   frame: tuple | None = None) -> np.ndarray:
    """Tiles side by side under their captions; ``frame`` outlines the tiles from index ``framed_from`` on."""
    gap, caption, pad = 10, 22, 4
    width = sum(t.width for t, _ in tiles) + gap * (len(tiles) - 1) + 2 * pad
    canvas = Image.new("RGB", (width, height + caption + 2 * pad), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    font = _font(13)
    x = pad
    for i, (tile, text) in enumerate(tiles):
        if frame is not None and framed_from is not None and i >= framed_from:
            draw.rectangle([x - 3, pad + caption - 3, x + tile.width + 2, pad + caption + height + 2], outline=frame,
                           width=3)
        canvas.paste(tile, (x, pad + caption))
        text_width = draw.textlength(text, font=font)
        draw.text((x + max(0, (tile.width - text_width) / 2), pad + 2), text, fill=(30, 30, 30), font=font)
        x += tile.width + gap
    return np.asarray(canvas)


def overlay_panel(image1: np.ndarray, image2: np.ndarray, map1: np.ndarray, map2: np.ndarray,
                  labels: tuple[str, str] = ("query", "gallery"), frame: tuple | None = None,
                  height: int = DISPLAY_HEIGHT) -> np.ndarray:
    """``image 1 | its attention | image 2's attention | image 2``, the paper's figure 7 layout.

    Images are RGB uint8 at the model's input size (what the network saw); maps are (h, w) Siamese
    attention maps. ``frame`` colours the border around image 2 (green/red for true/wrong match).
    """
    tiles = [
        (_panel(image1, height), labels[0]),
        (_panel(overlay_heatmap(image1, np.asarray(map1)), height), f"{labels[0]} attention"),
        (_panel(overlay_heatmap(image2, np.asarray(map2)), height), f"{labels[1]} attention"),
        (_panel(image2, height), labels[1]),
    ]
    return _captioned_row(tiles, height, framed_from=2, frame=frame)


def similarity_panel(image1: np.ndarray, image2: np.ndarray, map1: np.ndarray, map2: np.ndarray,
                     labels: tuple[str, str] = ("query", "gallery"), height: int = DISPLAY_HEIGHT) -> np.ndarray:
    """Both images with their similarity maps ``m_q``, ``m_g`` (each sums to the cosine similarity s)."""
    tiles = [
        (_panel(overlay_heatmap(image1, np.asarray(map1)), height), f"{labels[0]}: similarity map"),
        (_panel(overlay_heatmap(image2, np.asarray(map2)), height), f"{labels[1]}: similarity map"),
    ]
    return _captioned_row(tiles, height)


def similarity_rows_figure(explanation: dict, labels: tuple[str, str] = ("query", "gallery")) -> np.ndarray:
    """Row contributions to the similarity (sum over the width of each map): which body rows make s."""
    fig = Figure(figsize=(4.5, 3.0), dpi=100)
    ax = fig.subplots()
    for key, label, colour in (("similarity_rows1", labels[0], "tab:blue"), ("similarity_rows2", labels[1],
                                                                             "tab:orange")):
        rows = np.asarray(explanation[key], dtype=np.float64)
        ax.plot(np.arange(len(rows)), rows, marker="o", ms=3, color=colour, label=f"{label} (sum {rows.sum():.3f})")
    ax.axhline(0, color="grey", lw=0.8)
    ax.set_xlabel("feature-map row (top to bottom)")
    ax.set_ylabel("contribution to s")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper right")
    ax.set_title(f"row contributions to s = {explanation['similarity']:.3f} (d_f² = 2 − 2s)", fontsize=9)
    fig.tight_layout()
    return _render(fig)


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
    """``image`` with ``values`` (h, w) as a heat map (where a clicked location's features match)."""
    return overlay_heatmap(np.asarray(image), np.asarray(values))


def contrastive_figure(image: np.ndarray, gap_map: np.ndarray, gap: float, height: int = DISPLAY_HEIGHT) -> np.ndarray:
    """The query beside its contrastive map (red: closer to the wrong match; blue: closer to the true one)."""
    values = np.asarray(gap_map, dtype=np.float64)
    limit = float(np.abs(values).max())
    fig = Figure(figsize=(4.2, 3.6), dpi=100)
    left, right = fig.subplots(1, 2)
    left.imshow(image)
    left.set_title("query", fontsize=9)
    right.imshow(image, alpha=0.55)
    h, w = image.shape[:2]
    shown = right.imshow(values, cmap="bwr", vmin=-limit if limit > 0 else -1, vmax=limit if limit > 0 else 1,
                         alpha=0.6, extent=(0, w, h, 0), interpolation="bilinear")
    right.set_title(f"s(q, wrong) − s(q, true) = {gap:.3f}", fontsize=8)
    for ax in (left, right):
        ax.set_xticks([])
        ax.set_yticks([])
    fig.colorbar(shown, ax=right, fraction=0.08)
    fig.tight_layout()
    return _render(fig)


def distance_histogram(distances: np.ndarray, no_match: float, shown: list[float] | None = None) -> np.ndarray:
    """The query's feature distances to the whole gallery, the "no match" threshold, and the results shown."""
    values = np.asarray(distances, dtype=np.float64)
    fig = Figure(figsize=(5.0, 2.6), dpi=100)
    ax = fig.subplots()
    ax.hist(values, bins=min(50, max(5, len(values) // 4)), color="0.6", label=f"gallery ({len(values)} images)")
    for i, value in enumerate(shown or []):
        ax.axvline(value, color="tab:blue", lw=0.8, alpha=0.6, label="shown results" if i == 0 else None)
    within = int((values <= no_match).sum())
    ax.axvline(no_match, color="tab:red", lw=2, label=f"no-match threshold {no_match:.2f} ({within} within)")
    ax.set_xlabel("feature distance d_f to the query")
    ax.set_ylabel("gallery images")
    ax.legend(fontsize=7, loc="upper left")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return _render(fig)


def _render(fig: Figure) -> np.ndarray:
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[:, :, :3].copy()


def vectors_figure(explanation: dict, labels: tuple[str, str] = ("query", "gallery")) -> np.ndarray:
    """Row max-pooled importance vectors with threshold and kept spans, and the aligned vectors."""
    fig = Figure(figsize=(9.0, 3.0), dpi=100)
    left, right = fig.subplots(1, 2)
    plot_rows(left, explanation, labels)
    plot_aligned(right, explanation, labels)
    left.set_title("row importance M_m (normalised), threshold, kept spans", fontsize=9)
    right.set_title(f"aligned vectors M*_m, consistency distance {explanation['attention_distance']:.3f}", fontsize=9)
    fig.tight_layout()
    return _render(fig)


def cmc_figure(summary) -> np.ndarray:
    """CMC curves of CASN ranking and feature-only ranking."""
    fig = Figure(figsize=(5.0, 3.2), dpi=100)
    ax = fig.subplots()
    for key, label, style in (("casn", "CASN (feature + attention)", "-"), ("feature", "feature only", "--")):
        cmc = getattr(summary, key)["cmc"]
        if cmc:
            ax.plot(np.arange(1, len(cmc) + 1), 100 * np.asarray(cmc), style, marker="o", ms=3,
                    label=f"{label}: R-1 {100 * cmc[0]:.1f}%")
    ax.set_xlabel("rank")
    ax.set_ylabel("matching rate (%)")
    ax.set_ylim(0, 101)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    ax.set_title(f"CMC over {summary.num_valid} valid queries, {summary.num_gallery} gallery images", fontsize=9)
    fig.tight_layout()
    return _render(fig)


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
