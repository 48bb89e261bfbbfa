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


def plot_similarity_rows(ax: Axes, explanation: dict, labels: tuple[str, str] = ("image 1", "image 2")) -> None:
    """Row contributions to the cosine similarity s (sums over the width of the exact similarity maps)."""
    for key, label in zip(("similarity_rows1", "similarity_rows2"), labels):
        ax.plot(np.asarray(explanation[key]), marker="o", ms=3, label=label)
    ax.axhline(0.0, color="gray", lw=0.8)
    ax.set_xlabel("row (top to bottom)")
    ax.set_ylabel("contribution to s")
    ax.set_title(f"similarity by row, s = {explanation['similarity']:.3f}")
    ax.legend(fontsize=7, loc="upper right")


def explanation_figure(image1: np.ndarray, image2: np.ndarray, explanation: dict, title: str = "") -> Figure:
    """Both explainers of a pair (``PairExplanation.to_json()`` keys).

    Top row, the paper's Siamese attention (figs. 5-8): both overlays, the row vectors with spans,
    the aligned vectors. Bottom row, when the explanation has them, the exact similarity maps of
    both images (each sums to s) and their row contributions.
    """
    has_similarity = "similarity_map1" in explanation
    rows = 2 if has_similarity else 1
    fig = Figure(figsize=(11, 4.2 * rows), dpi=100)  # no pyplot: no global backend or figure registry
    grid = fig.add_gridspec(rows, 4, width_ratios=[1, 1, 2, 2])
    for i, (image, key) in enumerate(((image1, "map1"), (image2, "map2"))):
        ax = fig.add_subplot(grid[0, i])
        ax.imshow(overlay_heatmap(image, np.asarray(explanation[key])))
        ax.set_title(f"image {i + 1}: Siamese attention", fontsize=8)
        ax.axis("off")
    plot_rows(fig.add_subplot(grid[0, 2]), explanation)
    plot_aligned(fig.add_subplot(grid[0, 3]), explanation)
    if has_similarity:
        for i, (image, key) in enumerate(((image1, "similarity_map1"), (image2, "similarity_map2"))):
            ax = fig.add_subplot(grid[1, i])
            ax.imshow(overlay_heatmap(image, np.clip(np.asarray(explanation[key]), 0, None)))
            ax.set_title(f"image {i + 1}: similarity map", fontsize=8)
            ax.axis("off")
        plot_similarity_rows(fig.add_subplot(grid[1, 2:]), explanation)
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
