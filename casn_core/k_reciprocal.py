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
``N x N`` sort), which also keeps each image's 4 (k1 + 1) nearest distances for the weights of eq. 7;
the reciprocity and expansion tests are broadcast comparisons instead of per-image loops; ``V`` is kept
sparse (CSR arrays); and the Jaccard sums are one ``bincount`` per query over an inverted index. Memory is
a block of distances plus ``V``'s non-zeros, not several ``N x N`` matrices (the reference holds three:
4.5 GB at Market-1501's 19,281 images). Speed and memory against the reference: ``bench/k_reciprocal.py``.
On inputs without distance ties it gives the reference's numbers (tests/test_k_reciprocal.py compares
with torchreid's copy).
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
    # the expanded sets lie almost entirely among each image's 4 (k1 + 1) nearest, whose distances the
    # neighbour search keeps; the few others are computed pair by pair (_set_distances)
    kept = min(total, 4 * (config.k1 + 1))
    nearest, near_distance, row_max, distance = _nearest(features, kept, config.block_rows, num_query)
    weights = _encode(features, nearest[:, :config.k1 + 1], (nearest, near_distance), row_max, config.k1)
    if config.k2 != 1:
        weights = _query_expansion(weights, nearest[:, :config.k2])
    jaccard = _jaccard_to_gallery(weights, num_query, total)
    distance /= row_max[:num_query, None]
    return ((1.0 - config.lambda_value) * jaccard + config.lambda_value * distance).astype(np.float32)


def _squared_distance(rows: torch.Tensor, columns: torch.Tensor) -> torch.Tensor:
    """``|a - b|^2 = 2 - 2 a.b`` of unit vectors, clamped at 0 against rounding."""
    return (2.0 - 2.0 * rows @ columns.T).clamp_min_(0.0)


def _nearest(features: torch.Tensor, count: int, block_rows: int,
             num_query: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The ``count`` nearest of every row (itself first), nearest first, their squared distances, every
    row's largest distance, and the first ``num_query`` rows' squared distances to the other rows (the
    query x gallery block that eq. 12 needs, kept so it is computed once)."""
    nearest = np.empty((len(features), count), dtype=np.int64)
    distance = np.empty((len(features), count), dtype=np.float32)
    row_max = np.empty(len(features), dtype=np.float32)
    query_to_gallery = np.empty((num_query, len(features) - num_query), dtype=np.float32)
    for start in range(0, len(features), block_rows):
        block = _squared_distance(features[start:start + block_rows], features)
        rows = torch.arange(start, start + len(block))
        block[torch.arange(len(block)), rows] = 0.0  # the reference's diagonal is exactly 0: itself first
        top = torch.topk(block, count, dim=1, largest=False)
        nearest[start:start + len(block)] = top.indices.numpy()
        distance[start:start + len(block)] = top.values.numpy()
        row_max[start:start + len(block)] = block.amax(dim=1).numpy()
        if start < num_query:  # the zeroed diagonal lies in the query columns, so these are plain distances
            query_to_gallery[start:start + len(block)] = block[:num_query - start, num_query:].numpy()
    np.maximum(row_max, np.finfo(np.float32).tiny, out=row_max)  # all images identical: avoid 0 / 0
    return nearest, distance, row_max, query_to_gallery


def _mutual(nearest: np.ndarray, k: int) -> np.ndarray:
    """``(N, k + 1)`` mask of ``R(i, k)`` over each row's k + 1 nearest: the members that have the row among
    their own k + 1 nearest."""
    forward = nearest[:, :k + 1]
    backward = forward[forward]  # (N, k + 1, k + 1): the k + 1 nearest of each forward neighbour
    return (backward == np.arange(len(nearest))[:, None, None]).any(axis=2)


def _segments(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """The indices ``starts[s] .. starts[s] + lengths[s] - 1`` of every segment, concatenated."""
    offsets = np.repeat(starts - np.concatenate([[0], np.cumsum(lengths)[:-1]]), lengths)
    return offsets + np.arange(lengths.sum())


def _encode(features: torch.Tensor, nearest: np.ndarray, known: tuple[np.ndarray, np.ndarray], row_max: np.ndarray,
            k1: int) -> "_Sparse":
    """``V`` (eq. 7) over the expanded k1-reciprocal sets (eq. 6), as CSR arrays.

    The reference loops over images and candidates with ``intersect1d``; here the membership tests are
    broadcast comparisons of ``(N, k1 + 1, k1/2 + 1)`` arrays, one per member of ``R(i, k1)``."""
    total = len(nearest)
    half_k = int(np.around(k1 / 2.0))
    forward, mutual = nearest[:, :k1 + 1], _mutual(nearest, k1)
    half, half_mutual = nearest[:, :half_k + 1], _mutual(nearest, half_k)
    theirs, theirs_mask = half[forward], half_mutual[forward]  # (N, k1 + 1, k/2 + 1): each candidate's R(c, k1/2)
    shared = np.zeros(theirs.shape, dtype=bool)
    for j in range(forward.shape[1]):  # membership of their members in R(i, k1), one column of R at a time
        shared |= (theirs == forward[:, j, None, None]) & mutual[:, j, None, None]
    count, size = (shared & theirs_mask).sum(axis=2), theirs_mask.sum(axis=2)
    accepted = mutual & (count > 2.0 / 3.0 * size)  # candidate c's set joins i's expansion
    joined = accepted[..., None] & theirs_mask
    rows = np.concatenate([np.broadcast_to(np.arange(total)[:, None], forward.shape)[mutual],
                           np.broadcast_to(np.arange(total)[:, None, None], theirs.shape)[joined]])
    columns = np.concatenate([forward[mutual], theirs[joined]])
    keys = np.unique(rows.astype(np.int64) * total + columns)  # sorted by row, then column; duplicates gone
    rows, columns = keys // total, keys % total
    distance = _set_distances(features, rows, columns, *known)
    weight = np.exp(-distance / row_max[rows])
    weight /= np.bincount(rows, weights=weight, minlength=total)[rows]
    return _Sparse.from_coo(rows, columns, weight, total)


def _set_distances(features: torch.Tensor, rows: np.ndarray, columns: np.ndarray, nearest: np.ndarray,
                   near_distance: np.ndarray) -> np.ndarray:
    """``|a - b|^2`` of the pairs ``(rows, columns)``: looked up among each row's kept nearest, and computed
    from the features for the pairs that are not there."""
    total = len(nearest)
    known_keys = (np.arange(total)[:, None] * total + nearest).reshape(-1)
    order = np.argsort(known_keys)
    known_keys, known_values = known_keys[order], near_distance.reshape(-1)[order]
    keys = rows.astype(np.int64) * total + columns
    where = np.minimum(np.searchsorted(known_keys, keys), len(known_keys) - 1)
    found = known_keys[where] == keys
    distance = np.where(found, known_values[where], 0.0).astype(np.float64)
    missing = np.flatnonzero(~found)
    for part in np.array_split(missing, max(1, len(missing) // 16384)):
        if len(part):
            dots = (features[torch.from_numpy(rows[part])] * features[torch.from_numpy(columns[part])]).sum(dim=1)
            distance[part] = (2.0 - 2.0 * dots).clamp_min_(0.0).double().numpy()
    return distance


def _query_expansion(weights: "_Sparse", nearest: np.ndarray) -> "_Sparse":
    """Each row of ``V`` replaced by the mean of the rows of its k2 nearest (eq. 11)."""
    total, k2 = len(nearest), nearest.shape[1]
    sources = nearest.reshape(-1)
    lengths = np.diff(weights.indptr)[sources]
    take = _segments(weights.indptr[sources], lengths)
    rows = np.repeat(np.repeat(np.arange(total), k2), lengths)
    keys, inverse = np.unique(rows.astype(np.int64) * total + weights.indices[take], return_inverse=True)
    sums = np.bincount(inverse, weights=weights.data[take].astype(np.float64)) / k2
    return _Sparse.from_coo(keys // total, keys % total, sums, total)


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
        take = _segments(starts, lengths)
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
    def from_coo(cls, rows: np.ndarray, columns: np.ndarray, values: np.ndarray, size: int) -> "_Sparse":
        """From entries sorted by row (as ``np.unique`` of ``row * size + column`` leaves them)."""
        indptr = np.concatenate([[0], np.cumsum(np.bincount(rows, minlength=size))]).astype(np.int64)
        return cls(indptr, columns.astype(np.int64), values.astype(np.float32), size)

    def row(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        return self.indices[self.indptr[i]:self.indptr[i + 1]], self.data[self.indptr[i]:self.indptr[i + 1]]
