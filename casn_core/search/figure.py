"""The ranked strip of a search: the query, then its best gallery images with rank and distances.

Drawn on an explicit :class:`matplotlib.figure.Figure` (no pyplot state, no backend switch), in
the style of :mod:`casn_core.visualize`. When both the query and a result have Market-style names,
the result's frame is green for the same person id and red otherwise; unlabelled results are
framed grey.
"""
from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Sequence

import numpy as np
from matplotlib.figure import Figure

from casn_core.atomic import write_bytes_atomic
from casn_core.search.index import SearchResult

SAME, OTHER, UNKNOWN = "tab:green", "tab:red", "0.6"


def _thumbnail(path: str | os.PathLike, height: int = 128) -> np.ndarray:
    from casn_core.images import load_rgb

    image = load_rgb(path)
    width = max(1, round(image.width * height / max(image.height, 1)))
    return np.asarray(image.resize((width, height)))


def _frame(ax, colour: str, width: float = 4.0) -> None:
    for spine in ax.spines.values():
        spine.set_visible(True)
        spine.set_edgecolor(colour)
        spine.set_linewidth(width)
    ax.set_xticks([])
    ax.set_yticks([])


def _short(text: str, limit: int = 22) -> str:
    return text if len(text) <= limit else "..." + text[-(limit - 3):]


def strip_figure(results: Sequence[SearchResult], gallery: str | os.PathLike, queries: Sequence[str | os.PathLike | np.ndarray],
                 max_results: int = 10) -> Figure:
    """One row per query: the query image, then its first ``max_results`` results.

    ``queries`` are the query images (paths or RGB arrays) in the order of ``results``; result
    paths are read relative to ``gallery``.
    """
    if len(results) != len(queries):
        raise ValueError(f"{len(results)} results for {len(queries)} query images")
    columns = 1 + max([min(max_results, len(r.results)) for r in results] + [1])
    fig = Figure(figsize=(1.25 * columns, 2.9 * len(results) + 0.3), dpi=100, layout="constrained")
    grid = fig.add_gridspec(len(results), columns)
    for row, (result, query) in enumerate(zip(results, queries)):
        ax = fig.add_subplot(grid[row, 0])
        ax.imshow(query if isinstance(query, np.ndarray) else _thumbnail(query))
        _frame(ax, "tab:blue")
        ax.set_title("query", fontsize=8)
        ax.set_xlabel(_short(Path(result.query).name), fontsize=6)
        for col, hit in enumerate(result.results[:max_results], start=1):
            ax = fig.add_subplot(grid[row, col])
            ax.imshow(_thumbnail(Path(gallery) / hit.path))
            if result.query_pid is None or hit.pid is None:
                colour = UNKNOWN
            else:
                colour = SAME if hit.pid == result.query_pid else OTHER
            _frame(ax, colour)
            ax.set_title(f"#{hit.rank}  d={hit.distance:.2f}\nd_f={hit.feature_distance:.2f}", fontsize=7)
            ax.set_xlabel(_short(hit.path), fontsize=6)
    fig.suptitle(f"search of {_short(str(gallery), 60)} (d: feature + Siamese attention on the top "
                 f"{results[0].rerank_k}, w = {results[0].attention_weight:g}; d_f: feature distance)"
                 if results else "search", fontsize=8)
    return fig


def save_figure(fig: Figure, path: str | os.PathLike) -> Path:
    """Write ``fig`` as PNG atomically (:mod:`casn_core.atomic`)."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return write_bytes_atomic(path, buffer.getvalue())