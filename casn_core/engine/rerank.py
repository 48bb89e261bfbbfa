"""Batched CASN re-ranking: all queries in one call, every feature map read once, memory bounded.

The paper's ranking (sec. 4, "Evaluation Protocol"; docs/design.md, sec. 3) re-scores each query's top K
gallery images by feature distance with ``d = norm(d_f) + w norm(d_a)``, ``d_a`` the consistency
distance of the pair's Siamese attention (sec. 3.2.2, eq. 5). :func:`rank_query_casn` does this one
query at a time with :func:`pair_attention_grid` (a 1 x K grid). Here the (query, candidate) pairs of
all queries are scored together, and the work is split by which map it needs (docs/design.md, sec. 4:
the channel weights depend only on the pair's features, never on its maps):

1. query pass, queries in row order: each query's indicators (eq. 4, closed form, exactly the
   ``1 x K`` call :func:`rank_query_casn` makes), its attention rows ``M_m1`` (one ``(K, C) x (C, HW)``
   product per query) and the indicator bits (packed, D/8 bytes per pair) kept for step 2;
2. gallery pass, pairs sorted by gallery row: the needed gallery rows are read in batches of
   ``max_batch_bytes`` (so a map store on disk is read once, sequentially); each row is multiplied
   by the weights of all the pairs that need it (one batched product per row, the map broadcast over
   its pairs rather than gathered into a copy per pair) and gives those pairs' rows ``M_m2``;
3. alignment and distance for all pairs, then the combined distance per query.

The indicators come from the same call and the per-pair products have the same shapes as
:func:`pair_attention_grid`'s (``(1, K, C) x (1, C, HW)`` per query, ``(1, C) x (C, HW)`` per
gallery candidate), so the distances equal the per-query path's at the same thread count (tests: to
1e-6, identical rankings; a different thread count changes the BLAS's sums in the last bit, in this
path and in the per-query one alike). Maps stored in a 16-bit dtype are multiplied in that dtype, as
:func:`pair_attention_grid` does with 16-bit maps (the gallery side as one product per map, so
16-bit results are within the 16-bit tolerance of the per-query path, not bit-identical).

What is computed is a :class:`casn_core.rankings.RankingSpec` (w, K, threshold); how, a
:class:`casn_core.compute.Compute` (device, memory bounds, progress). Memory: ``max_batch_bytes`` of
maps, O(queries x K x (H + D/8)) per-pair state, and query x gallery matrices only ``chunk`` query
rows at a time (:func:`iter_casn_distmat`, :func:`feature_distance_blocks`):
nothing grows with queries x gallery unless the caller asks for the whole matrix
(:func:`casn_distmat`).

CUDA: with ``Compute(device="cuda")`` the products run on the GPU; maps given as device tensors stay there
(:func:`maps_on_device` puts a store's maps on the device when they fit), otherwise each batch of rows
is read on the host and moved.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import replace

import numpy as np
import torch
from tqdm import tqdm

from casn_core.attention.alignment import (
    align_rows,
    consistency_distance,
    row_importance,
)
from casn_core.attention.siamese import DEFAULT_THRESHOLD, indicator_closed_form
from casn_core.compute import DEFAULT_BATCH_BYTES, DEFAULT_STATE_BYTES, Compute
from casn_core.distances import unit_distance, unit_features
from casn_core.maps import read_maps
from casn_core.numeric import safe_divide, unit_range
from casn_core.rankings import RankingSpec

DEFAULT_BLOCK_BYTES = 32 << 20
"""Bytes of one (query rows x gallery) float32 block: the query-row chunk of every Q x G matrix."""

SORT_BLOCK_BYTES = 8 << 20
"""Bytes of float32 distances sorted at once for the candidate lists (their argsort is 3x that)."""


def map_row_bytes(maps) -> int:
    """Bytes of one image's map in ``maps`` (a tensor or :class:`casn_core.maps.FeatureMaps`)."""
    k, h, w = maps.shape[1:]
    return int(k * h * w * torch.empty(0, dtype=maps.dtype).element_size())


def query_chunk(num_gallery: int, block_bytes: int = DEFAULT_BLOCK_BYTES) -> int:
    """Query rows per block so that one float32 (rows x gallery) block takes about ``block_bytes``."""
    return max(1, int(block_bytes) // max(1, 4 * int(num_gallery)))


def maps_on_device(maps, device: torch.device | str, max_fraction: float = 0.5):
    """``maps`` as one tensor on a CUDA ``device`` when they take at most ``max_fraction`` of its free
    memory; otherwise (or on the CPU) ``maps`` unchanged, so callers move rows per batch."""
    device = torch.device(device)
    if device.type != "cuda" or isinstance(maps, torch.Tensor) and maps.device == device:
        return maps
    free, _ = torch.cuda.mem_get_info(device)
    if len(maps) * map_row_bytes(maps) > max_fraction * free:
        return maps
    return maps.to(device)


def feature_distance_blocks(query_features: torch.Tensor, gallery_features: torch.Tensor,
                            chunk: int | None = None) -> Iterator[tuple[int, torch.Tensor]]:
    """``(first query row, (n, G) float32 block)`` of the feature distance matrix, ``chunk`` rows at a time.

    Each block is :func:`casn_core.distances.feature_distance` of those query rows (Euclidean
    distance of L2-normalised ``f``); the gallery is normalised once, not once per block.
    """
    q, g = unit_features(query_features), unit_features(gallery_features)
    chunk = chunk or query_chunk(g.shape[0])
    for start in range(0, q.shape[0], chunk):
        yield start, unit_distance(q[start:start + chunk], g)


def casn_candidates(query_features: torch.Tensor, gallery_features: torch.Tensor, topk: int | None,
                    chunk: int | None = None,
                    on_block: Callable[[int, torch.Tensor], None] | None = None) -> torch.Tensor:
    """(Q, k) candidates of every query (``k = min(topk, G)``; ``None`` = all), feature blocks
    computed ``chunk`` rows at a time and handed to ``on_block(start, block)`` (e.g. to score the
    feature ranking in the same pass) before they are dropped."""
    num_query, num_gallery = query_features.shape[0], gallery_features.shape[0]
    k = num_gallery if topk is None else min(topk, num_gallery)
    out = torch.empty((num_query, k), dtype=torch.long)
    sort_rows = query_chunk(num_gallery, SORT_BLOCK_BYTES)  # argsort's int64 indices: a few rows at a time
    for start, block in feature_distance_blocks(query_features, gallery_features, chunk):
        for row in range(0, block.shape[0], sort_rows):
            part = block[row:row + sort_rows]
            out[start + row:start + row + part.shape[0]] = torch.argsort(part, dim=1, stable=True)[:, :k]
        if on_block is not None:
            on_block(start, block)
    return out


def _rows(product: torch.Tensor, height: int, width: int) -> torch.Tensor:
    return row_importance(product.float().clamp_min(0).reshape(-1, height, width))


def query_rows(query_map: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Rows ``M_m1`` (k, H) of one query map (C, H, W) under its k pairs' channel weights (k, C):
    ``ReLU(sum_c w_c A_c)``, the ``(1, k, C) x (1, C, HW)`` product of :func:`pair_attention_grid`."""
    channels, height, width = query_map.shape
    return _rows(torch.bmm(weights[None], query_map.reshape(1, channels, height * width)), height, width)


def gallery_rows(gallery_map: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Rows ``M_m2`` (n, H) of one gallery map (C, H, W) under the channel weights (n, C) of the n pairs
    that have it as candidate. float32: per pair the ``(1, C) x (C, HW)`` product of
    :func:`pair_attention_grid` (so the same sums, bit for bit), with the map broadcast over the pairs
    instead of copied; 16-bit maps: one ``(n, C) x (C, HW)`` product in that dtype."""
    channels, height, width = gallery_map.shape
    matrix = gallery_map.reshape(channels, height * width)
    if matrix.element_size() < 4:
        # 16-bit maps: one (n, C) x (C, HW) product (the CPU's bf16 matrix units; a batched 1 x C
        # product per pair is ~60x slower there); 16-bit results are within the stated tolerance anyway
        return _rows(torch.mm(weights, matrix), height, width)
    n = weights.shape[0]
    return _rows(torch.bmm(weights[:, None, :], matrix.expand(n, channels, height * width)), height, width)


class _QueryGroup:
    """The maps and features of a group of queries (what :func:`iter_casn_distmat` reads of a cache)."""

    def __init__(self, maps, features: torch.Tensor) -> None:
        self.maps, self.features = maps, features

    def __len__(self) -> int:
        return self.features.shape[0]


@torch.no_grad()
def attention_distances(model, query, gallery, candidates: torch.Tensor, threshold: float = DEFAULT_THRESHOLD,
                        compute: Compute = Compute()) -> torch.Tensor:
    """``d_a`` (Q, k) of every pair ``(q, candidates[q, j])``: the consistency distance (eq. 5).

    ``query`` / ``gallery``: cache-like objects (:class:`casn_core.maps.FeatureCache`): ``maps``, tensors
    or :class:`casn_core.maps.FeatureMaps`, read where they are (no move to ``compute.device``, see
    :func:`casn_attention`), and ``features`` (Q, D) / (G, D). ``compute``: the device, the map bytes
    per read (``max_batch_bytes``) and the progress bar.
    """
    query_maps, gallery_maps = query.maps, gallery.maps
    query_features, gallery_features = query.features, gallery.features
    device = torch.device(compute.device) if compute.device is not None else next(model.parameters()).device
    budget = compute.max_batch_bytes or DEFAULT_BATCH_BYTES
    progress = compute.progress
    num_query, k = candidates.shape
    height, width = query_maps.shape[2:]
    if tuple(gallery_maps.shape[1:]) != tuple(query_maps.shape[1:]):
        raise ValueError(f"query maps {tuple(query_maps.shape)} and gallery maps {tuple(gallery_maps.shape)} differ")
    head, pool = model.bce_head, model.pool
    fq = query_features.float().to(device)
    fg = gallery_features.float().to(device)
    cand = candidates.to(device)
    row_bytes = map_row_bytes(query_maps)
    per_read = max(1, budget // max(1, row_bytes))
    rows_q = torch.empty((num_query, k, height), dtype=torch.float32, device=device)
    rows_g = torch.empty((num_query * k, height), dtype=torch.float32, device=device)
    feature_dim = fq.shape[1]
    bits = np.empty((num_query, k, (feature_dim + 7) // 8), dtype=np.uint8)  # packed indicators of step 2

    # 1. query pass, queries in row order: the exact 1 x k indicator call of rank_query_casn (so the
    #    indicators are bit for bit the per-query path's), one product per query, bits packed
    bar = tqdm(total=num_query * 2, desc="casn re-rank", disable=not progress, unit="query")
    for start in range(0, num_query, per_read):
        stop = min(num_query, start + per_read)
        block = read_maps(query_maps, np.arange(start, stop), device)
        for i in range(start, stop):
            indicator = indicator_closed_form(head, fq[i:i + 1], fg[cand[i]])[0][0]  # (k, D)
            weights = pool.channel_weights(indicator, height, width).to(block.dtype)  # (k, C)
            rows_q[i] = query_rows(block[i - start], weights)
            bits[i] = np.packbits(indicator.bool().cpu().numpy(), axis=-1)
        del block
        bar.update(stop - start)

    # 2. gallery pass: pairs sorted by gallery row; per batch, the needed rows are read once and each
    #    row is multiplied by the weights of the pairs that need it (contiguous after the sort)
    flat = candidates.reshape(-1).numpy()
    order = np.argsort(flat, kind="stable")
    flat_bits = bits.reshape(num_query * k, -1)
    sorted_rows = flat[order]
    unique, first = np.unique(sorted_rows, return_index=True)
    bounds = np.append(first, order.size)  # pairs of unique[j]: order[bounds[j]:bounds[j + 1]]
    done_pairs = 0
    for u_start in range(0, unique.size, per_read):
        u_stop = min(unique.size, u_start + per_read)
        block = read_maps(gallery_maps, unique[u_start:u_stop], device)  # (U, C, H, W)
        p_start, p_stop = int(bounds[u_start]), int(bounds[u_stop])
        pairs = order[p_start:p_stop]
        indicator = torch.from_numpy(np.unpackbits(flat_bits[pairs], axis=-1, count=feature_dim)).to(device)
        weights = pool.channel_weights(indicator.to(fq.dtype), height, width).to(block.dtype)  # (P, C)
        out = torch.empty((len(pairs), height), dtype=torch.float32, device=device)
        for j in range(u_stop - u_start):
            a, b = int(bounds[u_start + j]) - p_start, int(bounds[u_start + j + 1]) - p_start
            out[a:b] = gallery_rows(block[j], weights[a:b])
        rows_g[torch.as_tensor(pairs, device=device)] = out
        del block, weights, indicator
        done = int(p_stop * num_query / max(1, order.size))
        bar.update(done - done_pairs)
        done_pairs = done
    bar.close()

    # 3. alignment and distance (elementwise per pair, as pair_attention_grid's _finish)
    rows_g = rows_g.view(num_query, k, height)
    distances = torch.empty((num_query, k), dtype=torch.float32, device=device)
    for start in range(0, num_query, 256):
        aligned_q, aligned_g, _, _ = align_rows(rows_q[start:start + 256], rows_g[start:start + 256], threshold)
        distances[start:start + 256] = consistency_distance(aligned_q, aligned_g)
    return distances.cpu()


def combine_block(feature_block: torch.Tensor, candidates: torch.Tensor, attention: torch.Tensor,
                  weight: float = 1.0) -> torch.Tensor:
    """CASN distance rows (n, G) float32 from feature distances (n, G), candidates (n, k) and ``d_a`` (n, k).

    As :func:`casn_core.engine.inference.rank_query_casn`: candidates get ``unit_range(d_f) + w
    unit_range(d_a)`` (each normalised over the query's candidates), the rest follow in feature order
    above all of them: ``max + 1 + unit_range(d_f over the rest)``. Every value is computed in
    float32 by the same operations as the per-query path, so float32 holds them exactly (a float64
    copy would only widen identical numbers: same ranking, same ties).
    """
    feature_block = feature_block.float()
    num_gallery = feature_block.shape[1]
    k = candidates.shape[1]
    combined = unit_range(feature_block.gather(1, candidates), dim=1) + weight * unit_range(attention.float(), dim=1)
    if k < num_gallery:
        rest = torch.ones_like(feature_block, dtype=torch.bool).scatter_(1, candidates, False)
        low = torch.where(rest, feature_block, torch.full_like(feature_block, float("inf"))).amin(dim=1, keepdim=True)
        high = torch.where(rest, feature_block, torch.full_like(feature_block, float("-inf"))).amax(dim=1, keepdim=True)
        out = (combined.amax(dim=1, keepdim=True) + 1) + safe_divide(feature_block - low, high - low)
    else:
        out = torch.empty_like(feature_block)
    return out.scatter_(1, candidates, combined)


def casn_attention(model, query, gallery, candidates: torch.Tensor, threshold: float = DEFAULT_THRESHOLD,
                   compute: Compute = Compute()) -> torch.Tensor:
    """``d_a`` (Q, k) of every (query, candidate) pair of two caches (:func:`attention_distances`),
    their maps held on a CUDA ``compute.device`` while they fit (:func:`maps_on_device`)."""
    device = torch.device(compute.device) if compute.device is not None else next(model.parameters()).device
    return attention_distances(model, _QueryGroup(maps_on_device(query.maps, device), query.features),
                               _QueryGroup(maps_on_device(gallery.maps, device), gallery.features), candidates,
                               threshold, replace(compute, device=device))


def iter_casn_distmat(model, query, gallery, ranking: RankingSpec, compute: Compute = Compute(),
                      candidates: torch.Tensor | None = None,
                      attention: torch.Tensor | None = None) -> Iterator[tuple[int, torch.Tensor]]:
    """``(first query row, (n, G) float32 block)`` of the CASN distance matrix of ``ranking`` (its w, K
    and threshold; sec. 4), ``compute.chunk`` query rows at a time (default: :func:`query_chunk`, ~32 MB
    blocks), so a caller scoring it block by block (``casn_core.metrics.evaluate_rank_per_query``) never
    holds the whole matrix.

    ``candidates``: the (Q, k) lists of :func:`casn_candidates` when the caller already has them;
    ``attention``: their ``d_a`` (:func:`casn_attention`), which does not depend on w.
    """
    chunk = compute.chunk
    if candidates is None:
        candidates = casn_candidates(query.features, gallery.features, ranking.topk, chunk)
    if attention is None:
        attention = casn_attention(model, query, gallery, candidates, ranking.threshold, compute)
    for start, block in feature_distance_blocks(query.features, gallery.features, chunk):
        stop = start + block.shape[0]
        yield start, combine_block(block, candidates[start:stop], attention[start:stop], ranking.attention_weight)


class _RowRange:
    """Rows ``[start, stop)`` of a map tensor or store, read like the whole (``read``, ``shape``, ``len``)."""

    def __init__(self, maps, start: int, stop: int) -> None:
        self.maps, self.start, self.stop = maps, int(start), int(stop)
        self.shape = torch.Size((self.stop - self.start, *maps.shape[1:]))
        self.dtype = maps.dtype

    def __len__(self) -> int:
        return self.stop - self.start

    def read(self, indices) -> torch.Tensor:
        return read_maps(self.maps, np.asarray(indices) + self.start, torch.device("cpu"))

    def to(self, device) -> torch.Tensor:
        return read_maps(self.maps, np.arange(self.start, self.stop), torch.device(device))


def pairs_per_group(num_gallery_k: int, height: int, feature_dim: int, state_bytes: int = DEFAULT_STATE_BYTES) -> int:
    """Queries whose ``k`` pairs' state (D/8 bytes of indicator bits, two float32 rows of H) fits ``state_bytes``."""
    per_query = max(1, num_gallery_k) * ((feature_dim + 7) // 8 + 8 * height)
    return max(1, int(state_bytes) // per_query)


def grouped_casn_blocks(model, query, gallery, ranking: RankingSpec,
                        compute: Compute = Compute()) -> Iterator[tuple[int, torch.Tensor]]:
    """:func:`iter_casn_distmat`'s blocks, computed for groups of queries whose per-pair state fits
    ``compute.state_bytes``: with K = all (the paper's ranking) every query has one pair per gallery
    image, and the whole set's indicators alone would take queries x gallery x D/8 bytes (8.6 GB for
    Market-1501). Each group reads the gallery maps once; a single group is exactly :func:`iter_casn_distmat`."""
    num_query, num_gallery = len(query.features), len(gallery.features)
    k = ranking.effective_topk(num_gallery)
    group = pairs_per_group(k, query.maps.shape[2], query.features.shape[1], compute.state_bytes)
    if group >= num_query:
        yield from iter_casn_distmat(model, query, gallery, ranking, compute)
        return
    bar = tqdm(total=num_query * k, desc="casn re-rank", disable=not compute.progress, unit="pair", unit_scale=True)
    quiet = replace(compute, progress=False)  # one bar over the groups, not one per group
    for start in range(0, num_query, group):
        stop = min(num_query, start + group)
        part = _QueryGroup(_RowRange(query.maps, start, stop), query.features[start:stop])
        for offset, block in iter_casn_distmat(model, part, gallery, ranking, quiet):
            yield start + offset, block
        bar.update((stop - start) * k)
    bar.close()


def casn_distmat(model, query, gallery, ranking: RankingSpec, compute: Compute = Compute()) -> np.ndarray:
    """CASN distance matrix (Q, G), float32, of ``ranking`` on two :class:`FeatureCache`-like objects
    (``maps``, ``features``), maps in RAM, on a device, or in a store on disk. See the module docstring;
    use :func:`iter_casn_distmat` to score it without holding it whole."""
    out = np.empty((len(query.features), len(gallery.features)), dtype=np.float32)
    for start, block in iter_casn_distmat(model, query, gallery, ranking, compute):
        out[start:start + block.shape[0]] = block.numpy()
    return out
