"""Re-identification metrics: CMC, mAP and mINP under the Market-1501 protocol (docs/design.md, section 5).

:func:`evaluate_rank` has the signature and the semantics of torchreid's ``evaluate_rank`` for
Market-1501 (``torchreid.metrics.rank.eval_market1501``), so the two can be swapped:

* every query is compared with the whole gallery, ranked by increasing distance;
* gallery entries with the query's person id **and** the query's camera are removed from that
  query's ranking (they are the same person seen by the same camera: too easy, not counted);
* a query with no remaining true match (same id, other camera) is skipped: it counts neither in
  the CMC curve nor in mAP or mINP;
* CMC rank-k = fraction of valid queries whose first true match is among the k best;
  AP = mean, over the true matches, of the precision at the match's rank;
  INP = (number of true matches) / (rank of the hardest, i.e. last, true match) (Ye et al. 2021);
  mAP and mINP are the means over valid queries.

Person id 0 (a distractor) is an ordinary gallery entry: it never matches a query of another id.
As in torchreid, ids are compared as plain integers, so a query of id 0 would match gallery id 0
(the Market-1501 query split holds no distractors). Ids -1 ("junk") are dropped by the data loader.

Deliberate differences from torchreid, all documented here:

* **Ties.** Equal distances are ranked by gallery index (a stable sort): entry ``g`` comes before
  entry ``h`` with the same distance when ``g < h``. torchreid's ``np.argsort`` (quicksort) leaves
  the order of ties unspecified, so results on matrices with ties can differ from torchreid's.
* **max_rank larger than the gallery.** A :class:`UserWarning` is issued (torchreid prints a note)
  but ``cmc`` still has length ``max_rank``: ranks beyond the gallery size repeat the last value
  (every valid query has found its first match by then, so the value is 1.0). torchreid shortens
  the curve to the gallery size instead.
* ``cmc`` is float64 (torchreid casts it to float32); ``mAP`` and ``mINP`` are Python floats.
* NaN distances and an all-invalid query set raise :class:`ValueError` (torchreid asserts).

Speed: no full sort of the distance matrix. The rank of a true match ``j`` of a query is
``1 + #{valid entries g : (d_g, g) < (d_j, j)}``, and AP, INP and CMC only need these ranks. Per
chunk of queries (in torch, multithreaded) the few true-match distances of each query are sorted,
every other valid gallery entry is located among them with ``torch.searchsorted`` and counted with a
histogram; the rare entries whose distance equals a true match's exactly are counted separately
with the index tie-break. Market-1501-sized problems (3,368 x 15,913) take well under a second on
two CPU cores (``python bench/metrics.py``).
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

__all__ = ["QueryResults", "evaluate_rank", "evaluate_rank_per_query", "junk_mask"]

# query rows per chunk are chosen so that a chunk holds about this many (query, gallery) pairs
_CHUNK_ELEMENTS = 1 << 22
# (tied pair, threshold) comparisons per block in the exact tie-break
_TIE_BLOCK_ELEMENTS = 1 << 22
# bins per query between its closest and its farthest true match (see _closer_binned)
_BINS = 4096
# the binned counting (fast) needs finite match distances; False forces the searchsorted path (tests)
_USE_BINS = True


def _as_tensor(value: Any, name: str) -> torch.Tensor:
    """A torch tensor viewing ``value`` (numpy array, tensor, list); ``ValueError`` otherwise."""
    if isinstance(value, torch.Tensor):
        return value.detach()
    try:
        array = np.asarray(value)
    except Exception as exc:  # pragma: no cover - exotic inputs
        raise ValueError(f"{name} must be an array or a tensor, got {type(value).__name__}") from exc
    if array.dtype == object or array.dtype.kind not in "biuf":
        raise ValueError(f"{name} must hold numbers, got dtype {array.dtype}")
    if not array.dtype.isnative:
        array = array.astype(array.dtype.newbyteorder("="))
    array = np.ascontiguousarray(array)
    if not array.flags.writeable:  # torch warns about (and could write to) read-only buffers
        array = array.copy()
    return torch.from_numpy(array)


def _as_distmat(distmat: Any) -> torch.Tensor:
    """The distance matrix as a 2-D float32/float64 tensor (exact conversions only)."""
    dist = _as_tensor(distmat, "distmat")
    if dist.dim() != 2:
        raise ValueError(f"distmat must be 2-D (num_query, num_gallery), got shape {tuple(dist.shape)}")
    if dist.shape[0] == 0:
        raise ValueError("distmat has no query rows (empty query set)")
    if dist.shape[1] == 0:
        raise ValueError("distmat has no gallery columns (empty gallery)")
    if dist.is_complex():
        raise ValueError("distmat must be real-valued")
    if dist.dtype in (torch.float16, torch.bfloat16):
        dist = dist.float()  # exact: keeps the order and the ties
    elif not dist.is_floating_point():
        dist = dist.double()
    if torch.isnan(dist).any():
        raise ValueError("distmat contains NaN")
    return dist


def _as_ids(value: Any, name: str, length: int, device: torch.device) -> torch.Tensor:
    """Person or camera ids as a 1-D int64 tensor of the given length."""
    ids = _as_tensor(value, name)
    if ids.dim() != 1:
        raise ValueError(f"{name} must be 1-D, got shape {tuple(ids.shape)}")
    if ids.shape[0] != length:
        raise ValueError(f"{name} has {ids.shape[0]} entries but distmat implies {length}")
    if ids.is_floating_point():
        if not torch.equal(ids, torch.round(ids)):
            raise ValueError(f"{name} must hold integer ids")
    return ids.to(device=device, dtype=torch.int64)


def _exact_counts(dist: torch.Tensor, thr: torch.Tensor, idx: torch.Tensor, counts: torch.Tensor,
                  rows: torch.Tensor, cols: torch.Tensor, entry_bins: torch.Tensor | None = None,
                  thr_bins: torch.Tensor | None = None) -> torch.Tensor:
    """Per (row, threshold slot): how many of the candidate pairs ``(rows, cols)`` rank before the match.

    The candidates are valid non-matching gallery entries. Without bins, only exact ties are
    examined (an entry equally distant from a match ranks before it when its index is smaller).
    With bins, an entry is examined against the matches of its own bin (the bin counts handle the
    others): it ranks before a match when strictly closer, or equally close with a smaller index.
    """
    num_rows, kmax = thr.shape
    out = torch.zeros(num_rows, kmax, dtype=torch.int64, device=dist.device)
    slots = torch.arange(kmax, device=dist.device)
    block = max(1, _TIE_BLOCK_ELEMENTS // kmax)
    for start in range(0, rows.numel(), block):
        r = rows[start:start + block]
        c = cols[start:start + block]
        d = dist[r, c][:, None]
        t = thr[r]
        before = (t == d) & (idx[r] > c[:, None])
        if entry_bins is not None and thr_bins is not None:
            before = (before | (t > d)) & (thr_bins[r] == entry_bins[r, c][:, None])
        before &= slots[None, :] < counts[r][:, None]
        out.index_add_(0, r, before.to(torch.int64))
    return out


def _closer_searchsorted(dist: torch.Tensor, other: torch.Tensor, thr: torch.Tensor, idx: torch.Tensor,
                         counts: torch.Tensor) -> torch.Tensor:
    """(B, Kmax): valid non-matching entries ranked before each sorted match (any distances)."""
    num_rows, kmax = thr.shape
    # hi[g] = number of thresholds <= d_g: g is strictly closer than the thresholds in slots >= hi[g]
    hi = torch.searchsorted(thr, dist.contiguous(), right=True)
    bucket = torch.where(other, hi, torch.full_like(hi, kmax + 1))
    hist = torch.zeros(num_rows, kmax + 2, dtype=torch.int64, device=dist.device)
    hist.scatter_add_(1, bucket, torch.ones_like(bucket))
    closer = torch.cumsum(hist, dim=1)[:, :kmax]
    # exact ties between an entry and a real threshold: compare with the largest real threshold <= d_g
    top = torch.minimum(hi, counts[:, None])
    cand = thr.gather(1, (top - 1).clamp(min=0))
    tied = other & (top > 0) & (cand == dist)
    if bool(tied.any()):
        trows, tcols = tied.nonzero(as_tuple=True)
        closer = closer + _exact_counts(dist, thr, idx, counts, trows, tcols)
    return closer


def _closer_binned(dist: torch.Tensor, same_pid: torch.Tensor, thr: torch.Tensor, idx: torch.Tensor,
                   counts: torch.Tensor) -> torch.Tensor:
    """Same as :func:`_closer_searchsorted`, faster; needs finite match distances.

    Each row's range [first match distance, last match distance] is cut into ``_BINS`` equal bins
    by a monotone map (subtract, multiply, floor: exactly rounded operations, so x <= y implies
    bin(x) <= bin(y)); entries outside the range fall in one bin below or one above. A histogram of
    the bins counts, for every match, the entries of the lower bins (all strictly closer); entries
    that share a bin with a match are compared exactly. The matches' bins are read from the same
    bin tensor as the entries', so equal distances always share a bin.
    """
    num_rows, num_gallery = dist.shape
    kmax = thr.shape[1]
    nb = _BINS
    device = dist.device
    rows_all = torch.arange(num_rows, device=device)
    lo = thr[:, 0]
    hi = thr[rows_all, counts - 1]
    width = hi - lo
    fallback = torch.clamp(lo.abs(), min=1.0)
    scale = nb / torch.where(width > 0, width, fallback)
    x = dist - lo[:, None]
    x.mul_(scale[:, None]).floor_().clamp_(-1, nb + 1).add_(1)  # bins 0 .. nb + 2
    real = torch.arange(kmax, device=device)[None, :] < counts[:, None]
    thr_bins = x.gather(1, idx.clamp(max=num_gallery - 1)).long()
    thr_bins = torch.where(real, thr_bins, torch.full_like(thr_bins, nb + 3))
    x.masked_fill_(same_pid, nb + 3)  # same id (match or dropped): counted elsewhere / never
    bins = x.long()
    del x
    hist = torch.zeros(num_rows, nb + 4, dtype=torch.int64, device=device)
    hist.scatter_add_(1, bins, torch.ones((1, 1), dtype=torch.int64, device=device).expand_as(bins))
    cum = torch.cumsum(hist, dim=1)
    closer = cum.gather(1, thr_bins - 1)  # entries in bins strictly below the match's bin
    lut = torch.zeros(num_rows, nb + 4, dtype=torch.bool, device=device)
    lut.scatter_(1, thr_bins, True)
    lut[:, nb + 3] = False
    shared = lut.gather(1, bins)
    crows, ccols = shared.nonzero(as_tuple=True)
    if crows.numel():
        closer = closer + _exact_counts(dist, thr, idx, counts, crows, ccols, bins, thr_bins)
    return closer


def _match_ranks(dist: torch.Tensor, same_pid: torch.Tensor, match: torch.Tensor
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """1-based ranks of the true matches of each row, in ranking order.

    ``dist`` (B, N); ``same_pid`` (B, N): gallery entry has the query's id; ``match`` (B, N): true
    match (same id, other camera); every row has at least one. Valid entries are
    ``~same_pid | match``. Returns ``(ranks, counts, slots)`` where ``ranks`` (B, Kmax) holds, for
    ``slot < counts[row]``, the rank of the row's slot-th best true match (garbage elsewhere).
    """
    device = dist.device
    num_rows, num_gallery = dist.shape
    counts = match.sum(dim=1)
    kmax = int(counts.max())
    rows, cols = match.nonzero(as_tuple=True)  # row-major: columns ascending within a row
    offsets = torch.cumsum(counts, 0) - counts
    slot = torch.arange(rows.numel(), device=device) - offsets[rows]
    thr = torch.full((num_rows, kmax), float("inf"), dtype=dist.dtype, device=device)
    idx = torch.full((num_rows, kmax), num_gallery, dtype=torch.int64, device=device)
    thr[rows, slot] = dist[rows, cols]
    idx[rows, slot] = cols
    # stable: equal distances stay in gallery-index order; +inf padding stays after real +inf values
    thr, order = torch.sort(thr, dim=1, stable=True)
    thr = thr.contiguous()
    idx = idx.gather(1, order)
    real_thr = thr[torch.arange(kmax, device=device)[None, :] < counts[:, None]]
    if _USE_BINS and bool(torch.isfinite(real_thr).all()):
        closer = _closer_binned(dist, same_pid, thr, idx, counts)
    else:
        closer = _closer_searchsorted(dist, ~same_pid, thr, idx, counts)
    slots = torch.arange(kmax, device=device)
    ranks = closer + slots[None, :] + 1  # + the better-ranked matches + 1 (1-based)
    return ranks, counts, slots


@dataclass
class QueryResults:
    """Per-query results of a ranking (as fast-reid's evaluator returns them), in query order.

    ``first_true_rank`` is the 1-based rank of the first true match (0 for a query with no true
    match in the gallery); ``ap`` and ``inp`` are NaN for such queries; ``valid`` says which queries
    count. :meth:`summary` gives the dataset numbers (CMC over valid queries, mAP, mINP).
    """

    first_true_rank: np.ndarray
    ap: np.ndarray
    inp: np.ndarray
    valid: np.ndarray

    def __len__(self) -> int:
        return len(self.valid)

    def summary(self, max_rank: int = 50) -> dict[str, Any]:
        """``{"cmc", "mAP", "mINP", "num_valid_queries"}`` over the valid queries (see :func:`evaluate_rank`)."""
        max_rank = _check_max_rank(max_rank)
        num_valid = int(self.valid.sum())
        if num_valid == 0:
            raise ValueError("no query has a true match in the gallery (same person id, different camera): "
                             "all query identities are missing from the gallery")
        first = self.first_true_rank[self.valid]
        hits = np.bincount(np.minimum(first, max_rank + 1) - 1, minlength=max_rank + 1)[:max_rank]
        cmc = np.cumsum(hits).astype(np.float64) / num_valid
        return {"cmc": cmc, "mAP": float(self.ap[self.valid].sum() / num_valid),
                "mINP": float(self.inp[self.valid].sum() / num_valid), "num_valid_queries": num_valid}


def junk_mask(q_pid: int, q_camid: int, g_pids: Any, g_camids: Any) -> np.ndarray:
    """Gallery entries the Market-1501 protocol leaves out of one query's ranking: same id *and* same camera.

    The rule :func:`evaluate_rank_per_query` applies (vectorised there); exposed for code that shows
    a ranking, so the list shown and the numbers computed drop the same entries.
    """
    return (np.asarray(g_pids) == q_pid) & (np.asarray(g_camids) == q_camid)


def _check_max_rank(max_rank: Any) -> int:
    if isinstance(max_rank, bool) or not isinstance(max_rank, (int, np.integer)):
        raise ValueError(f"max_rank must be a positive integer, got {max_rank!r}")
    if int(max_rank) < 1:
        raise ValueError(f"max_rank must be a positive integer, got {max_rank}")
    return int(max_rank)


def evaluate_rank_per_query(distmat: Any, q_pids: Any, g_pids: Any, q_camids: Any, g_camids: Any) -> QueryResults:
    """First true rank, AP, INP and validity of every query under the Market-1501 protocol.

    The one implementation behind :func:`evaluate_rank`, ``python -m casn_core eval`` and the app's
    per-query numbers (protocol and tie rule in the module docstring).
    """
    dist = _as_distmat(distmat)
    num_query, num_gallery = dist.shape
    device = dist.device
    qp = _as_ids(q_pids, "q_pids", num_query, device)
    gp = _as_ids(g_pids, "g_pids", num_gallery, device)
    qc = _as_ids(q_camids, "q_camids", num_query, device)
    gc = _as_ids(g_camids, "g_camids", num_gallery, device)
    first_rank = np.zeros(num_query, dtype=np.int64)
    ap = np.full(num_query, np.nan)
    inp = np.full(num_query, np.nan)
    valid = np.zeros(num_query, dtype=bool)
    chunk = max(1, _CHUNK_ELEMENTS // num_gallery)
    with torch.no_grad():
        for start in range(0, num_query, chunk):
            stop = min(start + chunk, num_query)
            same_pid = qp[start:stop, None] == gp[None, :]
            match = same_pid & (qc[start:stop, None] != gc[None, :])
            valid_rows = match.any(dim=1)
            if not bool(valid_rows.any()):
                continue
            rows = valid_rows.nonzero(as_tuple=True)[0]
            if rows.numel() < stop - start:
                d, same_pid, match = dist[start:stop][rows], same_pid[rows], match[rows]
            else:
                d = dist[start:stop]
            ranks, counts, slots = _match_ranks(d, same_pid, match)
            real = slots[None, :] < counts[:, None]
            ranks64 = ranks.to(torch.float64)
            precision = torch.where(real, (slots[None, :] + 1).to(torch.float64) / ranks64,
                                    torch.zeros_like(ranks64))
            last = ranks64.gather(1, (counts - 1)[:, None])[:, 0]
            index = (rows + start).cpu().numpy()
            ap[index] = (precision.sum(dim=1) / counts.to(torch.float64)).cpu().numpy()
            inp[index] = (counts.to(torch.float64) / last).cpu().numpy()
            first_rank[index] = ranks[:, 0].cpu().numpy()
            valid[index] = True
    return QueryResults(first_true_rank=first_rank, ap=ap, inp=inp, valid=valid)


def evaluate_rank(
    distmat: Any,
    q_pids: Any,
    g_pids: Any,
    q_camids: Any,
    g_camids: Any,
    max_rank: int = 50,
) -> dict[str, Any]:
    """CMC, mAP and mINP of a query x gallery distance matrix under the Market-1501 protocol.

    Same signature and semantics as torchreid's ``evaluate_rank`` (Market-1501 protocol, see the
    module docstring and docs/design.md, section 5): gallery entries with the query's id *and* camera are
    dropped, queries without a remaining true match are skipped, smaller distance = better rank,
    and equal distances are ranked by gallery index (stable order).

    Args:
        distmat: (num_query, num_gallery) distances, numpy array or torch tensor (any device).
        q_pids, g_pids: person ids of queries and gallery entries (integers; 0 = distractor).
        q_camids, g_camids: camera ids of queries and gallery entries.
        max_rank: length of the returned CMC curve (>= 1). When larger than the gallery, a warning
            is issued and the curve is padded with its last value (1.0).

    Returns:
        ``{"cmc": float64 array (max_rank,), "mAP": float, "mINP": float,
        "num_valid_queries": int}``; ``cmc[k-1]`` is the rank-k accuracy; all fractions in [0, 1].

    Raises:
        ValueError: on a non-2-D or empty ``distmat``, id arrays whose length does not match it,
            NaN distances, ``max_rank < 1``, or when no query has a true match in the gallery.
    """
    max_rank = _check_max_rank(max_rank)
    results = evaluate_rank_per_query(distmat, q_pids, g_pids, q_camids, g_camids)
    num_gallery = np.shape(distmat)[1]
    if max_rank > num_gallery:
        warnings.warn(f"max_rank={max_rank} exceeds the gallery size ({num_gallery}); the CMC curve is padded "
                      "with its last value", UserWarning, stacklevel=2)
    return results.summary(max_rank)
