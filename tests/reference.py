"""Independent references for tests: plain loops and float64, sharing no code path with what they check.

* :func:`reference_evaluate`, :func:`reference_per_query`: the Market-1501 protocol (docs/design.md, sec. 5)
  literally, one query at a time with Python loops: rank the gallery with a stable sort on (distance,
  gallery index), drop the entries with the query's id and camera, skip queries without a remaining
  true match, then compute the CMC curve, AP and INP by walking the ranking.
* :func:`reference_casn_distances`: the CASN ranking distance (paper sec. 4, as documented in
  ``casn_core.engine.rerank.combine_block``) in float64 numpy, with each candidate pair's d_a from the
  literal float64 oracle of sec. 3.2.2 (:func:`casn_core.attention.oracle_pair_attention`: autograd
  indicator, autograd Grad-CAM weights, slicing and ``F.interpolate``), not from the closed forms.
"""
from __future__ import annotations

import copy

import numpy as np


def reference_evaluate(distmat, q_pids, g_pids, q_camids, g_camids, max_rank: int = 50) -> dict:
    """Plain-loop Market-1501 evaluation (no numpy vectorisation), ties broken by gallery index."""
    dist = [[float(v) for v in row] for row in np.asarray(distmat)]
    q_pids = [int(v) for v in q_pids]
    g_pids = [int(v) for v in g_pids]
    q_camids = [int(v) for v in q_camids]
    g_camids = [int(v) for v in g_camids]
    num_gallery = len(g_pids)
    cmc_sum = [0.0] * max_rank
    ap_list: list[float] = []
    inp_list: list[float] = []
    for q in range(len(q_pids)):
        order = sorted(range(num_gallery), key=lambda g: (dist[q][g], g))  # Python's sort is stable
        hits = []
        for g in order:
            if g_pids[g] == q_pids[q] and g_camids[g] == q_camids[q]:
                continue  # same person, same camera: dropped
            hits.append(1 if g_pids[g] == q_pids[q] else 0)
        if sum(hits) == 0:
            continue  # no true match left: the query is skipped
        first = hits.index(1)  # 0-based position of the first true match
        for k in range(max_rank):
            if first <= k:
                cmc_sum[k] += 1.0
        found = 0
        precisions = []
        last = 0
        for position, hit in enumerate(hits):
            if hit:
                found += 1
                precisions.append(found / (position + 1))
                last = position
        ap_list.append(sum(precisions) / len(precisions))
        inp_list.append(found / (last + 1))
    num_valid = len(ap_list)
    return {
        "cmc": [v / num_valid for v in cmc_sum],
        "mAP": sum(ap_list) / num_valid,
        "mINP": sum(inp_list) / num_valid,
        "num_valid_queries": num_valid,
    }


def reference_per_query(distmat, q_pids, g_pids, q_camids, g_camids) -> list[tuple[int, float, float] | None]:
    """Per query: ``(first true rank (1-based), AP, INP)`` by :func:`reference_evaluate`'s loop, or ``None``
    for a query without a true match in another camera."""
    out = []
    for q in range(len(q_pids)):
        hits = [1 if int(g_pids[g]) == int(q_pids[q]) else 0
                for g in sorted(range(len(g_pids)), key=lambda g: (float(distmat[q][g]), g))
                if not (int(g_pids[g]) == int(q_pids[q]) and int(g_camids[g]) == int(q_camids[q]))]
        if sum(hits) == 0:
            out.append(None)
            continue
        positions = [p for p, hit in enumerate(hits) if hit]
        ap = sum((k + 1) / (p + 1) for k, p in enumerate(positions)) / len(positions)
        out.append((positions[0] + 1, ap, len(positions) / (positions[-1] + 1)))
    return out


def _unit_range(values: np.ndarray) -> np.ndarray:
    low, high = values.min(), values.max()
    return np.zeros_like(values) if high == low else (values - low) / (high - low)


def reference_feature_distances(query_features, gallery_features) -> np.ndarray:
    """(Q, G) float64 Euclidean distances of the L2-normalised features."""
    q = np.asarray(query_features, dtype=np.float64)
    g = np.asarray(gallery_features, dtype=np.float64)
    q = q / np.linalg.norm(q, axis=1, keepdims=True)
    g = g / np.linalg.norm(g, axis=1, keepdims=True)
    return np.sqrt(((q[:, None, :] - g[None, :, :]) ** 2).sum(-1))


def reference_casn_distances(model, query_maps, gallery_maps, query_features, gallery_features, topk,
                             weight: float, threshold: float) -> dict:
    """The CASN distance matrix in float64: ``{"distance" (Q, G), "feature" (Q, G), "candidates" (Q, k),
    "attention" (Q, k)}``.

    Per query: the ``k = min(topk, G)`` nearest by feature distance (ties by gallery index) are the
    candidates; each gets ``unit_range(d_f) + weight * unit_range(d_a)`` over the candidates; the rest
    follow above all of them in feature order, ``max + 1 + unit_range(d_f over the rest)``.
    """
    import torch

    from casn_core.attention import oracle_pair_attention

    model64 = copy.deepcopy(model).double().eval()
    feature = reference_feature_distances(query_features, gallery_features)
    num_query, num_gallery = feature.shape
    k = num_gallery if topk is None else min(int(topk), num_gallery)
    candidates = np.stack([np.array(sorted(range(num_gallery), key=lambda g: (feature[q, g], g))[:k])
                           for q in range(num_query)])
    attention = np.empty((num_query, k))
    distance = np.empty((num_query, num_gallery))
    for q in range(num_query):
        query_map = torch.as_tensor(np.asarray(query_maps[q:q + 1])[0]).double()
        for c, g in enumerate(candidates[q]):
            gallery_map = torch.as_tensor(np.asarray(gallery_maps[int(g):int(g) + 1])[0]).double()
            pair = oracle_pair_attention(model64, query_map, gallery_map, threshold)
            attention[q, c] = float(pair["distance"].detach())
        combined = _unit_range(feature[q, candidates[q]]) + weight * _unit_range(attention[q])
        rest = np.setdiff1d(np.arange(num_gallery), candidates[q])
        if len(rest):
            distance[q, rest] = combined.max() + 1 + _unit_range(feature[q, rest])
        distance[q, candidates[q]] = combined
    return {"distance": distance, "feature": feature, "candidates": candidates, "attention": attention}


def reference_similarity(map1, map2, weights) -> dict:
    """The exact decomposition of the cosine similarity of two pooled features, in float64 with einsum.

    ``map1``, ``map2``: feature maps (K, H, W); ``weights``: the pooling's (P, H*W) weights written out
    from its definition (GAP: one row of 1/HW). With ``f_p = sum_i w_p(i) A(:, i)`` and ``f`` the
    concatenation over parts: ``s = f1 . f2 / (|f1| |f2|)``; the similarity maps are
    ``sum_p w_p(i) A1(:, i) . f2_p / (|f1| |f2|)`` (and the other way round), which sum to ``s``; rows are
    their sums over the width. Returns ``{"similarity", "map1", "map2", "rows1", "rows2"}`` (numpy).
    """
    a1 = np.asarray(map1, dtype=np.float64)
    a2 = np.asarray(map2, dtype=np.float64)
    w = np.asarray(weights, dtype=np.float64)
    k, h, width = a1.shape
    q, g = a1.reshape(k, h * width), a2.reshape(k, h * width)
    f1 = np.einsum("pi,ki->pk", w, q)
    f2 = np.einsum("pi,ki->pk", w, g)
    norm = np.linalg.norm(f1) * np.linalg.norm(f2)
    m1 = np.einsum("pi,ki,pk->i", w, q, f2).reshape(h, width) / norm
    m2 = np.einsum("pi,ki,pk->i", w, g, f1).reshape(h, width) / norm
    return {"similarity": float((f1 * f2).sum() / norm), "map1": m1, "map2": m2,
            "rows1": m1.sum(axis=1), "rows2": m2.sum(axis=1)}


def gap_weights(height: int, width: int) -> np.ndarray:
    """Global average pooling's weights from its definition: (1, H*W), every position 1 / (H W)."""
    return np.full((1, height * width), 1.0 / (height * width))
