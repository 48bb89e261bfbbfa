"""Plots with axes for the app: importance vectors, similarity rows, the contrastive map, distances, CMC.

Each is drawn on its own ``Figure`` + Agg canvas (no pyplot state, so concurrent requests share
nothing) at the pixel size the page shows it (:data:`VECTORS_WIDTH` etc. at 100 dpi), so its text is
as large on screen as it was drawn; legends sit above the axes, never over the data.
"""
from __future__ import annotations

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from app.core import plot_aligned, plot_rows
from app.pair import PairExplanation

DPI = 100
VECTORS_WIDTH = 5.2
"""Inches at 100 dpi: the width of the page's wider explanation column at a 1280-pixel window."""
ROWS_WIDTH = 3.4
"""Inches at 100 dpi: the width of the narrower explanation column."""
COLOURS = ("tab:blue", "tab:orange")


def _render(fig: Figure) -> np.ndarray:
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[:, :, :3].copy()


def _legend_above(ax, handles=None, ncol: int = 2) -> None:
    kwargs = {"handles": handles} if handles is not None else {}
    ax.legend(loc="lower left", bbox_to_anchor=(0.0, 1.01), ncol=ncol, fontsize=8, frameon=False,
              borderaxespad=0.0, handlelength=1.5, columnspacing=1.0, **kwargs)


def vectors_figure(explanation: PairExplanation, labels: tuple[str, str] = ("query", "gallery")) -> np.ndarray:
    """Row max-pooled importance vectors with the threshold and the kept spans (shaded, in the legend), and
    the aligned vectors whose distance is d_a (eq. 5), one above the other."""
    fig = Figure(figsize=(VECTORS_WIDTH, 5.0), dpi=DPI, layout="constrained")
    top, bottom = fig.subplots(2, 1)
    fields = vars(explanation)  # the library's plotters read the fields by name (its JSON keys); no copy
    plot_rows(top, fields, labels)
    handles, _ = top.get_legend_handles_labels()
    spans = [Patch(facecolor=colour, alpha=0.25, label=f"{label} kept span") for colour, label in zip(COLOURS, labels)]
    top.set_title("")
    top.set_ylabel("row max (normalised)", fontsize=9)
    _legend_above(top, handles + spans, ncol=3)
    plot_aligned(bottom, fields, labels)
    bottom.set_title("")
    bottom.set_ylabel("aligned value", fontsize=9)
    _legend_above(bottom, ncol=2)
    bottom.text(1.0, 1.16, f"d_a = {explanation.attention_distance:.3f}", transform=bottom.transAxes,
                ha="right", va="bottom", fontsize=9)
    top.set_title("row importance M_m, threshold t, kept spans", fontsize=9, loc="left", pad=36)
    bottom.set_title("aligned vectors M*_m", fontsize=9, loc="left", pad=22)
    return _render(fig)


def similarity_rows_figure(explanation: PairExplanation, labels: tuple[str, str] = ("query", "gallery")) -> np.ndarray:
    """Row contributions to the similarity (sum over the width of each map): which body rows make s."""
    fig = Figure(figsize=(ROWS_WIDTH, 3.2), dpi=DPI, layout="constrained")
    ax = fig.subplots()
    for values, label, colour in zip((explanation.similarity_rows1, explanation.similarity_rows2), labels, COLOURS):
        rows = np.asarray(values, dtype=np.float64)
        ax.plot(np.arange(len(rows)), rows, marker="o", ms=3, color=colour, label=f"{label} (sum {rows.sum():.3f})")
    ax.axhline(0, color="grey", lw=0.8)
    ax.set_xlabel("feature-map row (top to bottom)", fontsize=9)
    ax.set_ylabel("contribution to s", fontsize=9)
    ax.tick_params(labelsize=8)
    ax.grid(alpha=0.3)
    _legend_above(ax, ncol=1)
    fig.suptitle(f"rows of s = {explanation.similarity:.3f} (d_f² = 2 − 2s)", fontsize=9)
    return _render(fig)


def contrastive_figure(query: np.ndarray, wrong: np.ndarray, true: np.ndarray, gap_map: np.ndarray, gap: float,
                       ranks: tuple[int, int | None] = (1, None)) -> np.ndarray:
    """The contrastive map over the query, the rank-1 wrong match and the best true match beside it.

    Red: the query's features there are closer to the wrong match; blue: closer to the true one. The
    colour scale is symmetric about 0 (white), from -max|cell| to +max|cell|; the map sums to the gap.
    """
    values = np.asarray(gap_map, dtype=np.float64)
    limit = float(np.abs(values).max()) or 1.0
    fig = Figure(figsize=(VECTORS_WIDTH, 3.9), dpi=DPI, layout="constrained")
    axes = fig.subplots(1, 4, width_ratios=[1.0, 1.0, 1.0, 0.09])
    h, w = query.shape[:2]
    axes[0].imshow(query)
    shown = axes[0].imshow(values, cmap="bwr", vmin=-limit, vmax=limit, alpha=0.55, extent=(0, w, h, 0),
                           interpolation="bilinear")
    axes[0].set_title("query: where it\nleans to each", fontsize=9)
    axes[1].imshow(wrong)
    axes[1].set_title("rank 1\n(wrong identity)", fontsize=9, color="#d72626")
    axes[2].imshow(true)
    axes[2].set_title(f"rank {ranks[1] if ranks[1] else '?'}\n(best true match)", fontsize=9, color="#22a03c")
    for ax in axes[:3]:
        ax.set_xticks([])
        ax.set_yticks([])
    bar = fig.colorbar(shown, cax=axes[3])
    bar.ax.tick_params(labelsize=7)
    bar.set_label("per-cell s(q, wrong) − s(q, true)", fontsize=8)
    fig.suptitle(f"similarity gap s(q, wrong) − s(q, true) = {gap:.3f}", fontsize=9)
    return _render(fig)


def distance_histogram(distances: np.ndarray, no_match: float, shown: list[float] | None = None) -> np.ndarray:
    """The query's feature distances to the whole gallery, the "no match" threshold, and the results shown."""
    values = np.asarray(distances, dtype=np.float64)
    fig = Figure(figsize=(6.0, 2.7), dpi=DPI, layout="constrained")
    ax = fig.subplots()
    ax.hist(values, bins=min(50, max(5, len(values) // 4)), color="0.6", label=f"gallery ({len(values)} images)")
    for i, value in enumerate(shown or []):
        ax.axvline(value, color="tab:blue", lw=0.8, alpha=0.6, label="shown results" if i == 0 else None)
    within = int((values <= no_match).sum())
    ax.axvline(no_match, color="tab:red", lw=2, label=f"no-match threshold {no_match:.2f} ({within} within)")
    ax.set_xlabel("feature distance d_f to the query", fontsize=9)
    ax.set_ylabel("gallery images", fontsize=9)
    ax.tick_params(labelsize=8)
    _legend_above(ax, ncol=3)
    ax.grid(alpha=0.3)
    return _render(fig)


def cmc_figure(summary, label: str = "CASN (feature + attention)") -> np.ndarray:
    """CMC curves of a CASN ranking (``label``) and of the feature ranking."""
    fig = Figure(figsize=(6.0, 3.8), dpi=DPI, layout="constrained")
    ax = fig.subplots()
    for key, name, style in (("casn", label, "-"), ("feature", "feature (d_f only)", "--")):
        cmc = getattr(summary, key)["cmc"]
        if cmc:
            ax.plot(np.arange(1, len(cmc) + 1), 100 * np.asarray(cmc), style, marker="o", ms=3,
                    label=f"{name}: R-1 {100 * cmc[0]:.1f}%")
    ax.set_xlabel("rank", fontsize=9)
    ax.set_ylabel("matching rate (%)", fontsize=9)
    lowest = min((100 * getattr(summary, key)["cmc"][0] for key in ("casn", "feature") if getattr(summary, key)["cmc"]),
                 default=0.0)
    ax.set_ylim(max(0.0, 10 * np.floor(lowest / 10) - 5), 101)  # the curves, not empty space below them
    ax.tick_params(labelsize=8)
    ax.grid(alpha=0.3)
    _legend_above(ax, ncol=1)
    fig.suptitle(f"CMC over {summary.num_valid} valid queries, {summary.num_gallery} gallery images", fontsize=9)
    return _render(fig)


def tuning_figure(curve: list[dict], chosen: tuple[float, int | str] | None = None) -> np.ndarray | None:
    """The checkpoint's validation curve (``payload["ranking"]["curve"]``, written by ``casn tune``):
    mAP against w, one line per K, the stored pair marked. None when the checkpoint has no curve."""
    points = [p for p in curve or [] if "attention_weight" in p and "mAP" in p]
    if not points:
        return None
    fig = Figure(figsize=(6.0, 3.4), dpi=DPI, layout="constrained")
    ax = fig.subplots()
    for k in sorted({str(p.get("topk")) for p in points}, key=lambda v: (not v.isdigit(), int(v) if v.isdigit() else 0)):
        line = sorted((p for p in points if str(p.get("topk")) == k), key=lambda p: p["attention_weight"])
        ax.plot([p["attention_weight"] for p in line], [100 * p["mAP"] for p in line], marker="o", ms=3,
                label=f"K = {k}")
    if chosen is not None:
        match = [p for p in points if p["attention_weight"] == chosen[0] and str(p.get("topk")) == str(chosen[1])]
        if match:
            ax.plot([chosen[0]], [100 * match[0]["mAP"]], marker="*", ms=14, color="gold", mec="black",
                    ls="none", label="stored (w, K)")
    ax.set_xlabel("attention weight w", fontsize=9)
    ax.set_ylabel("validation mAP (%)", fontsize=9)
    ax.tick_params(labelsize=8)
    ax.grid(alpha=0.3)
    _legend_above(ax, ncol=4)
    fig.suptitle("how w was chosen: mAP on the checkpoint's validation identities (casn tune)", fontsize=9)
    return _render(fig)
