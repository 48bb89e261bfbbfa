"""Batched CASN re-ranking: all queries in one call, every feature map read once.

The paper's ranking (sec. 4, "Evaluation Protocol"; DESIGN.md sec. 3) re-scores each query's top K
gallery images by feature distance with ``d = norm(d_f) + w norm(d_a)``, ``d_a`` the consistency
distance of the pair's Siamese attention (sec. 3.2.2, eq. 5). :func:`rank_query_casn` does this one
query at a time with :func:`pair_attention_grid` (a 1 x K grid). Here the (query, candidate) pairs of
all queries are scored together, and the work is split by which map it needs (DESIGN.md sec. 4:
the channel weights depend only on the pair's features, never on its maps):

1. query pass, queries in row order: each query's indicators (eq. 4, closed form, exactly the
   ``1 x K`` call :func:`rank_query_casn` makes), its attention rows ``M_m1`` and the indicator
   bits (packed, D/8 bytes per pair) kept for step 2;
2. gallery pass, pairs sorted by gallery row: each needed gallery map is read once per batch of
   pairs (so a map store on disk is read about once, sequentially) and gives the rows ``M_m2``;
3. alignment and distance for all pairs, then the combined distance per query.

The per-pair products are the same batched matrix products as :func:`pair_attention_grid`'s, so the
distances equal the per-query path's (tests: to 1e-6, identical rankings). Memory is bounded by
``max_batch_bytes`` of maps plus O(queries x K x (H + D/8)), whatever the gallery size.

CUDA: with ``device="cuda"`` the products run on the GPU; maps given as device tensors stay there
(:func:`maps_on_device` puts a store's maps on the device when they fit), otherwise each batch of rows
is read on the host and moved.
"""
from __future__ import annotations

import numpy as np
import torch
from tqdm import tqdm

from casn_core.attention.alignment import align_rows, consistency_distance, row_importance
from casn_core.attention.siamese import DEFAULT_THRESHOLD, indicator_closed_form
from casn_core.numeric import unit_range

DEFAULT_BATCH_BYTES = 256 << 20
"""Map bytes read per batch of the gallery pass (and of query rows in the query pass)."""


def _row_bytes(maps) -> int:
    k, h, w = maps.shape[1:]
    return int(k * h * w * torch.empty(0, dtype=maps.dtype).element_size())


def read_rows(maps, indices: np.ndarray, device: torch.device) -> torch.Tensor:
    """Rows ``indices`` of an in-memory map tensor or a :class:`casn_core.store.StoredMaps`, on ``device``."""
    if isinstance(maps, torch.Tensor):
        index = torch.as_tensor(indices, dtype=torch.long, device=maps.device)
        rows = maps[index]  # advanced indexing keeps the channels-last layout (index_select does not)
    else:
        rows = maps.read(indices)
    return rows.to(device, non_blocking=True)


def maps_on_device(maps, device: torch.device | str, max_fraction: float = 0.5):
    """``maps`` as one tensor on a CUDA ``device`` when they take at most ``max_fraction`` of its free
    memory; otherwise (or on the CPU) ``maps`` unchanged, so callers move rows per batch."""
    device = torch.device(device)
    if device.type != "cuda" or isinstance(maps, torch.Tensor) and maps.device == device:
        return maps
    free, _ = torch.cuda.mem_get_info(device)
    if len(maps) * _row_bytes(maps) > max_fraction * free:
        return maps
    if isinstance(maps, torch.Tensor):
        return maps.to(device)
    return maps.to(device)


def candidate_lists(feature_distances: torch.Tensor, k: int, chunk: int = 256) -> torch.Tensor:
    """(Q, k) gallery indices of each query's ``k`` nearest by feature distance (stable order, as
    :func:`rank_query_casn`'s ``argsort(stable=True)[:k]``)."""
    out = torch.empty((feature_distances.shape[0], k), dtype=torch.long)
    for start in range(0, feature_distances.shape[0], chunk):
        block = feature_distances[start:start + chunk]
        out[start:start + chunk] = torch.argsort(block, dim=1, stable=True)[:, :k]
    return out


@torch.no_grad()
def attention_distances(
    model,
    query_maps,
    gallery_maps,
    query_features: torch.Tensor,
    gallery_features: torch.Tensor,
    candidates: torch.Tensor,
    threshold: float = DEFAULT_THRESHOLD,
    device: torch.device | str | None = None,
    max_batch_bytes: int | None = None,
    progress: bool = False,
) -> torch.Tensor:
    """``d_a`` (Q, k) of every pair ``(q, candidates[q, j])``: the consistency distance (eq. 5).

    Maps are tensors or :class:`casn_core.store.StoredMaps`; features are (Q, D) / (G, D).
    """
    device = torch.device(device) if device is not None else next(model.parameters()).device
    budget = max_batch_bytes or DEFAULT_BATCH_BYTES
    num_query, k = candidates.shape
    _, channels, height, width = query_maps.shape
    if tuple(gallery_maps.shape[1:]) != tuple(query_maps.shape[1:]):
        raise ValueError(f"query maps {tuple(query_maps.shape)} and gallery maps {tuple(gallery_maps.shape)} differ")
    head, pool = model.bce_head, model.pool
    fq = query_features.float().to(device)
    fg = gallery_features.float().to(device)
    cand = candidates.to(device)
    row_bytes = _row_bytes(query_maps)
    rows_q = torch.empty((num_query, k, height), dtype=torch.float32, device=device)
    rows_g = torch.empty_like(rows_q)
    bits = None  # (Q, k, ceil(D / 8)) packed indicators, filled by the query pass

    # 1. query pass: the exact 1 x k grid of rank_query_casn, per query
    per_read = max(1, budget // max(1, row_bytes))
    bar = tqdm(total=num_query * 2, desc="casn re-rank", disable=not progress, unit="query")
    for start in range(0, num_query, per_read):
        stop = min(num_query, start + per_read)
        block = read_rows(query_maps, np.arange(start, stop), device)
        for i in range(start, stop):
            indicator, _ = indicator_closed_form(head, fq[i:i + 1], fg[cand[i]])  # (1, k, D)
            weights = pool.channel_weights(indicator, height, width).to(block.dtype)  # (1, k, K)
            qmap = block[i - start:i - start + 1].reshape(1, channels, height * width)
            product = torch.bmm(weights, qmap).float().clamp_min(0)  # (1, k, HW)
            rows_q[i] = row_importance(product.reshape(k, height, width))
            packed = np.packbits(indicator[0].bool().cpu().numpy(), axis=-1)
            if bits is None:
                bits = np.empty((num_query, k, packed.shape[-1]), dtype=np.uint8)
            bits[i] = packed
        bar.update(stop - start)
    feature_dim = fq.shape[1]

    # 2. gallery pass: pairs sorted by gallery row, each needed row read once per batch
    flat = candidates.reshape(-1).numpy()
    order = np.argsort(flat, kind="stable")
    flat_bits = bits.reshape(num_query * k, -1)
    pairs_per_batch = max(1, budget // max(1, row_bytes))
    done_queries = 0
    for start in range(0, order.size, pairs_per_batch):
        pairs = order[start:start + pairs_per_batch]
        rows = flat[pairs]
        unique, local = np.unique(rows, return_inverse=True)
        block = read_rows(gallery_maps, unique, device)  # (U, K, H, W)
        indicator = torch.from_numpy(np.unpackbits(flat_bits[pairs], axis=-1, count=feature_dim)).to(device)
        weights = pool.channel_weights(indicator.to(fq.dtype)[:, None, :], height, width).to(block.dtype)  # (P, 1, K)
        gathered = block[torch.as_tensor(local, device=device).reshape(-1)]  # keeps channels-last, as maps[candidates]
        product = torch.bmm(weights, gathered.reshape(len(pairs), channels, height * width))
        product = product.float().clamp_min(0).reshape(len(pairs), height, width)
        target = torch.as_tensor(pairs, device=device)
        rows_g.view(num_query * k, height)[target] = row_importance(product)
        del block, gathered
        finished = int((start + len(pairs)) * num_query / order.size)
        bar.update(finished - done_queries)
        done_queries = finished
    bar.close()

    # 3. alignment and distance (elementwise per pair, as pair_attention_grid's _finish)
    distances = torch.empty((num_query, k), dtype=torch.float32, device=device)
    for start in range(0, num_query, 256):
        aligned_q, aligned_g, _, _ = align_rows(rows_q[start:start + 256], rows_g[start:start + 256], threshold)
        distances[start:start + 256] = consistency_distance(aligned_q, aligned_g)
    return distances.cpu()


def combine_distances(feature_distances: torch.Tensor, candidates: torch.Tensor, attention: torch.Tensor,
                      weight: float = 1.0) -> np.ndarray:
    """The distance matrix of the CASN ranking from ``d_f`` (Q, G), candidates (Q, k) and ``d_a`` (Q, k).

    As :func:`casn_core.engine.inference.rank_query_casn`: candidates get ``unit_range(d_f) + w
    unit_range(d_a)`` (each normalised over the query's candidates), the rest follow in feature order
    above all of them: ``max + 1 + unit_range(d_f over the rest)``.
    """
    num_query, num_gallery = feature_distances.shape
    k = candidates.shape[1]
    out = np.empty((num_query, num_gallery), dtype=np.float64)
    for i in range(num_query):
        row = feature_distances[i]
        cand = candidates[i]
        combined = unit_range(row[cand], dim=None) + weight * unit_range(attention[i], dim=None)
        values = np.empty(num_gallery, dtype=np.float64)
        if k < num_gallery:
            rest = torch.ones(num_gallery, dtype=torch.bool)
            rest[cand] = False
            values[rest.numpy()] = (combined.max() + 1 + unit_range(row[rest], dim=None)).numpy()
        values[cand.numpy()] = combined.numpy()
        out[i] = values
    return out


def casn_distmat_batched(
    model,
    query,
    gallery,
    topk: int | None = 100,
    weight: float = 1.0,
    threshold: float = DEFAULT_THRESHOLD,
    progress: bool = True,
    device: torch.device | str | None = None,
    max_batch_bytes: int | None = None,
) -> np.ndarray:
    """CASN distance matrix (Q, G) of two :class:`FeatureCache`-like objects (``maps``, ``features``),
    maps in RAM, on a device, or in a store on disk. See the module docstring."""
    from casn_core.engine.inference import feature_distance

    dist = feature_distance(query.features, gallery.features)
    num_gallery = dist.shape[1]
    k = num_gallery if topk is None else min(topk, num_gallery)
    candidates = candidate_lists(dist, k)
    device = torch.device(device) if device is not None else next(model.parameters()).device
    gallery_maps = maps_on_device(gallery.maps, device)
    query_maps = maps_on_device(query.maps, device)
    attention = attention_distances(model, query_maps, gallery_maps, query.features, gallery.features, candidates,
                                    threshold, device, max_batch_bytes, progress)
    return combine_distances(dist, candidates, attention, weight)
