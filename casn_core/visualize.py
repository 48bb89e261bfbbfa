"""Pictures of a pair explanation: attention overlays, row importance vectors, aligned vectors.

The layout follows the paper's figures 5-8: both images with their Siamese attention maps, the row
max-pooled importance vectors with the threshold and the kept spans, and the aligned vectors.
"""
from __future__ import annotations

import io

import cv2
import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from casn_core.numeric import unit_range


def overlay_heatmap(image: np.ndarray, attention_map: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """Blend a JET colour map of ``attention_map`` (h, w), scaled to [0, 1], onto an RGB uint8 image."""
    heat = unit_range(np.asarray(attention_map, dtype=np.float32), dim=None).astype(np.float32)
    heat = cv2.resize(heat, (image.shape[1], image.shape[0]), interpolation=cv2.INTER_LINEAR)
    colour = cv2.applyColorMap(np.uint8(255 * heat), cv2.COLORMAP_JET)[:, :, ::-1]
    return np.uint8(np.clip((1 - alpha) * image.astype(np.float32) + alpha * colour, 0, 255))


def plot_rows(ax: Axes, explanation: dict, labels: tuple[str, str] = ("image 1", "image 2")) -> None:
    """Row importance vectors (normalised to [0, 1]) with the threshold and the kept spans."""
    colours = ("tab:blue", "tab:orange")
    for key, span_key, label, colour in zip(("rows1", "rows2"), ("span1", "span2"), labels, colours):
        norm = unit_range(np.asarray(explanation[key], dtype=np.float64))
        ax.plot(np.arange(len(norm)), norm, marker="o", ms=3, color=colour, label=label)
        first, last = explanation[span_key]
        ax.axvspan(first - 0.5, last + 0.5, color=colour, alpha=0.12)
    ax.axhline(explanation["threshold"], color="gray", ls="--", lw=1, label=f"t = {explanation['threshold']:.2f}")
    ax.set_xlabel("row (top to bottom)")
    ax.set_ylabel("row max, normalised")
    ax.set_title("importance vectors M_m and kept spans")
    ax.legend(fontsize=7, loc="upper right")


def plot_aligned(ax: Axes, explanation: dict, labels: tuple[str, str] = ("image 1", "image 2")) -> None:
    """The aligned vectors M*_m1 and M*_m2 and their distance (eq. 5)."""
    for key, label in zip(("aligned1", "aligned2"), labels):
        ax.plot(np.asarray(explanation[key]), marker="o", ms=3, label=label)
    ax.set_title(f"aligned vectors, distance {explanation['attention_distance']:.3f}")
    ax.set_xlabel("aligned position")
    ax.set_ylim(-0.05, 1.05)
    ax.legend(fontsize=7, loc="upper right")


def explanation_figure(image1: np.ndarray, image2: np.ndarray, explanation: dict, title: str = "") -> Figure:
    """A 1x4 figure: both overlays, the row vectors with spans, the aligned vectors."""
    fig = Figure(figsize=(11, 4.2), dpi=100)  # no pyplot: no global backend or figure registry
    grid = fig.add_gridspec(1, 4, width_ratios=[1, 1, 2, 2])
    for i, (image, key) in enumerate(((image1, "map1"), (image2, "map2"))):
        ax = fig.add_subplot(grid[0, i])
        ax.imshow(overlay_heatmap(image, np.asarray(explanation[key])))
        ax.set_title(f"image {i + 1}")
        ax.axis("off")
    plot_rows(fig.add_subplot(grid[0, 2]), explanation)
    plot_aligned(fig.add_subplot(grid[0, 3]), explanation)
    head = (
        f"same-person probability {explanation['same_probability']:.3f} | feature distance "
        f"{explanation['feature_distance']:.3f} | attention distance {explanation['attention_distance']:.3f}"
    )
    fig.suptitle(f"{title}\n{head}" if title else head, fontsize=9)
    fig.tight_layout()
    return fig


def figure_png(fig: Figure) -> bytes:
    """Render a figure to PNG bytes (Agg canvas attached here; nothing global is touched)."""
    if not isinstance(fig.canvas, FigureCanvasAgg):
        FigureCanvasAgg(fig)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()
