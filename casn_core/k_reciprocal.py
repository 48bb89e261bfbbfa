"""k-reciprocal re-ranking (Zhong, Zheng, Cao and Li, "Re-ranking Person Re-identification with k-reciprocal
Encoding", CVPR 2017), the post-processing torchreid (``test.rerank``) and fast-reid (``TEST.RERANK``) offer.

It is not part of CASN: it re-ranks the feature ranking using the gallery's own neighbourhood structure,
and ``casn eval --k-reciprocal`` reports it as a row of its own (docs/design.md, sec. 5).

The arithmetic follows the authors' reference code (as copied into torchreid's
``torchreid/reid/utils/rerank.py``), step for step, on the query and gallery features together:

1. ``d``: squared Euclidean distance of the L2-normalised features (the feature ranking's metric,
   squared as the reference squares its input), each row divided by its maximum;
2. ``R(i, k1)``: the k1-reciprocal neighbours of every image (i among the k1 + 1 nearest of each of
   its own k1 + 1 nearest), expanded by the k1/2-reciprocal sets of its members that share more than 2/3
   of their set with it (eq. 6 of the paper);
3. ``V``: row i puts ``exp(-d(i, j))``, normalised to sum to one, on the expanded set (eq. 7), then
   local query expansion averages the rows of the k2 nearest (eq. 11);
4. Jaccard distance ``1 - sum min(V_i, V_j) / sum max(V_i, V_j)`` (eq. 10, with ``sum max = 2 - sum
   min`` for rows that sum to one) and ``d* = (1 - lambda) d_J + lambda d`` (eq. 12).

What is ours is how it runs: the nearest neighbours come from ``torch.topk`` on blocks of rows (never an
``N x N`` sort), ``V`` is kept sparse (CSR arrays), and the Jaccard sums are one ``bincount`` per query
over an inverted index, so memory is a block of distances plus ``V``'s non-zeros, not several ``N x N``
matrices (the reference holds three: 4.5 GB at Market-1501's 19,281 images). On inputs without distance
ties it gives the reference's numbers (tests/test_k_reciprocal.py compares with torchreid's copy).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class KReciprocalConfig:
    """The paper's parameters (sec. 4.2; torchreid's and fast-reid's defaults): ``k1`` 20, ``k2`` 6,
    ``lambda_value`` 0.3. ``block_rows``: rows of the ``N x N`` distance computed at a time."""

    k1: int = 20
    k2: int = 6
    lambda_value: float = 0.3
    block_rows: int = 2048

    def __post_init__(self) -> None:
        if self.k1 < 1 or not 1 <= self.k2 <= self.k1 + 1:
            raise ValueError(f"k-reciprocal re-ranking needs k1 >= 1 and 1 <= k2 <= k1 + 1; got k1={self.k1}, "
                             f"k2={self.k2}")
        if not 0.0 <= self.lambda_value <= 1.0:
            raise ValueError(f"k-reciprocal lambda must be in [0, 1]; got {self.lambda_value}")
        if self.block_rows < 1:
            raise ValueError(f"block_rows must be >= 1; got {self.block_rows}")


def k_reciprocal_distance(query_features: torch.Tensor | np.ndarray, gallery_features: torch.Tensor | np.ndarray,
                          config: KReciprocalConfig = KReciprocalConfig()) -> np.ndarray:
    """The re-ranked ``(Q, G)`` distance ``d*`` (eq. 12) of query and gallery features (module docstring)."""
    query = torch.as_tensor(query_features, dtype=torch.float32)
    gallery = torch.as_tensor(gallery_features, dtype=torch.float32)
    if query.ndim != 2 or gallery.ndim != 2 or query.shape[1] != gallery.shape[1]:
        raise ValueError(f"k-reciprocal re-ranking needs (Q, D) and (G, D) features; got {tuple(query.shape)} "
                         f"and {tuple(gallery.shape)}")
    features = F.normalize(torch.cat([query, gallery]), dim=1)
    num_query, total = len(query), len(features)
    if total < config.k1 + 1:
        raise ValueError(f"k-reciprocal re-ranking with k1={config.k1} needs more than {config.k1} images; "
                         f"got {total}")
    nearest, row_max = _nearest(features, config.k1 + 1, config.block_rows)
    weights = _encode(features, nearest, row_max, config.k1)
    if config.k2 != 1:
        weights = _query_expansion(weights, nearest[:, :config.k2])
    jaccard = _jaccard_to_gallery(weights, num_query, total)
    distance = _squared_distance(features[:num_query], features[num_query:]).numpy()
    distance /= row_max[:num_query, None]
    return ((1.0 - config.lambda_value) * jaccard + config.lambda_value * distance).astype(np.float32)


def _squared_distance(rows: torch.Tensor, columns: torch.Tensor) -> torch.Tensor:
    """``|a - b|^2 = 2 - 2 a.b`` of unit vectors, clamped at 0 against rounding."""
    return (2.0 - 2.0 * rows @ columns.T).clamp_min_(0.0)


def _nearest(features: torch.Tensor, count: int, block_rows: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``count`` nearest of every row (itself first), nearest first, and every row's largest distance."""
    nearest = np.empty((len(features), count), dtype=np.int64)
    row_max = np.empty(len(features), dtype=np.float32)
    for start in range(0, len(features), block_rows):
        block = _squared_distance(features[start:start + block_rows], features)
        rows = torch.arange(start, start + len(block))
        block[torch.arange(len(block)), rows] = 0.0  # the reference's diagonal is exactly 0: itself first
        nearest[start:start + len(block)] = torch.topk(block, count, dim=1, largest=False).indices.numpy()
        row_max[start:start + len(block)] = block.amax(dim=1).numpy()
    np.maximum(row_max, np.finfo(np.float32).tiny, out=row_max)  # all images identical: avoid 0 / 0
    return nearest, row_max


def _reciprocal(nearest: np.ndarray, k: int) -> list[np.ndarray]:
    """``R(i, k)``: the members of each row's k + 1 nearest that have the row among their own k + 1 nearest."""
    forward = nearest[:, :k + 1]
    backward = forward[forward]  # (N, k + 1, k + 1): the k + 1 nearest of each forward neighbour
    mutual = (backward == np.arange(len(nearest))[:, None, None]).any(axis=2)
    return [forward[i][mutual[i]] for i in range(len(nearest))]


def _encode(features: torch.Tensor, nearest: np.ndarray, row_max: np.ndarray, k1: int) -> "_Sparse":
    """``V`` (eq. 7) over the expanded k1-reciprocal sets (eq. 6), as CSR arrays."""
    full = _reciprocal(nearest, k1)
    half = _reciprocal(nearest, int(np.around(k1 / 2.0)))
    rows: list[np.ndarray] = []
    values: list[np.ndarray] = []
    for i, members in enumerate(full):
        expansion = [members]
        for candidate in members:
            theirs = half[candidate]
            if len(np.intersect1d(theirs, members)) > 2.0 / 3.0 * len(theirs):
                expansion.append(theirs)
        columns = np.unique(np.concatenate(expansion))
        distance = _squared_distance(features[i:i + 1], features[torch.from_numpy(columns)])[0].numpy()
        weight = np.exp(-distance / row_max[i])
        rows.append(columns)
        values.append((weight / weight.sum()).astype(np.float32))
    return _Sparse.from_rows(rows, values, len(nearest))


def _query_expansion(weights: "_Sparse", nearest: np.ndarray) -> "_Sparse":
    """Each row of ``V`` replaced by the mean of the rows of its k2 nearest (eq. 11)."""
    rows: list[np.ndarray] = []
    values: list[np.ndarray] = []
    for neighbours in nearest:
        columns = np.concatenate([weights.row(j)[0] for j in neighbours])
        data = np.concatenate([weights.row(j)[1] for j in neighbours])
        unique, inverse = np.unique(columns, return_inverse=True)
        rows.append(unique)
        values.append((np.bincount(inverse, weights=data) / len(neighbours)).astype(np.float32))
    return _Sparse.from_rows(rows, values, weights.size)


def _jaccard_to_gallery(weights: "_Sparse", num_query: int, total: int) -> np.ndarray:
    """``d_J`` (eq. 10) of every query row against the gallery rows (indices ``num_query:``)."""
    order = np.argsort(weights.indices, kind="stable")  # inverted index: for each column, its rows
    column_rows = np.repeat(np.arange(total), np.diff(weights.indptr))[order]
    column_values = weights.data[order]
    column_ptr = np.concatenate([[0], np.cumsum(np.bincount(weights.indices, minlength=total))])
    jaccard = np.empty((num_query, total - num_query), dtype=np.float32)
    for i in range(num_query):
        columns, mine = weights.row(i)
        starts, stops = column_ptr[columns], column_ptr[columns + 1]
        lengths = stops - starts
        take = np.repeat(starts - np.cumsum(np.concatenate([[0], lengths[:-1]])), lengths) + np.arange(lengths.sum())
        shared = np.minimum(np.repeat(mine, lengths), column_values[take])
        overlap = np.bincount(column_rows[take], weights=shared, minlength=total)[num_query:]
        jaccard[i] = 1.0 - overlap / (2.0 - overlap)
    return jaccard


@dataclass(frozen=True)
class _Sparse:
    """A CSR matrix as three arrays (what scipy.sparse would hold; scipy is not a dependency of the core)."""

    indptr: np.ndarray
    indices: np.ndarray
    data: np.ndarray
    size: int

    @classmethod
    def from_rows(cls, rows: list[np.ndarray], values: list[np.ndarray], size: int) -> "_Sparse":
        indptr = np.concatenate([[0], np.cumsum([len(r) for r in rows])]).astype(np.int64)
        return cls(indptr, np.concatenate(rows).astype(np.int64), np.concatenate(values).astype(np.float32), size)

    def row(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        return self.indices[self.indptr[i]:self.indptr[i + 1]], self.data[self.indptr[i]:self.indptr[i + 1]]
