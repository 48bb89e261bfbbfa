"""Exact spatial decomposition of the retrieval similarity (beyond the paper).

The ranking distance is ``d_f = |f_q/|f_q| - f_g/|f_g||`` with ``f = pool(A)``
(:mod:`casn_core.models.pooling`; :func:`casn_core.distances.feature_distance`), so
``d_f^2 = 2 - 2 s`` with the cosine similarity ``s``. Every pooling used here is linear and
channel-wise: ``f_p = sum_i w_p(i) A(i)`` for parts ``p`` (one part for GAP, ``w(i) = 1/HW``; ``P``
possibly overlapping stripes for PCB), with the pooling weight matrix ``W`` (P, HW). Hence
(Stylianou et al., "Visualizing Deep Similarity Networks", WACV 2019; Zhu et al., "Visual
Explanation for Deep Metric Learning", 2021)::

    s = sum_{i,j} C(i, j),   C(i, j) = sum_p w_p(i) w_p(j) <A_q(i), A_g(j)> / (|f_q| |f_g|)

with ``i`` a query position and ``j`` a gallery position. The query's map
``m_q(i) = sum_j C(i, j) = sum_p w_p(i) <A_q(i), f_g,p> / (|f_q| |f_g|)`` and the gallery's map
``m_g(j) = sum_i C(i, j)`` need no HW x HW matrix; each sums to ``s`` exactly. For PCB a query
position only corresponds with gallery positions of the stripes it is pooled into.

``W`` is derived from the model's own pool module by pooling one-hot maps
(:func:`pooling_weights`), so PCB's overlapping adaptive-average stripes are exact.

Everything here runs on the device of the maps; float16/bfloat16 maps are computed in float32.
Functions are differentiable with respect to the maps (wrap calls in ``torch.no_grad()`` for
inference).
"""
from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Union

import torch
from torch import nn

from casn_core.numeric import safe_divide

Pooling = Union[nn.Module, torch.Tensor]
"""A pool module (``model.pool``) or its weight matrix ``W`` (P, HW) from :func:`pooling_weights`."""

DIRECTIONS = ("query", "gallery")


@dataclass
class SimilarityExplanation:
    """The decomposition of the cosine similarity of a batch of pairs; leading dims (N, M) or (B,).

    ``similarity`` (...) the cosine similarity ``s`` of the retrieval features; ``map1`` (..., H1, W1)
    the query map ``m_q`` and ``map2`` (..., H2, W2) the gallery map ``m_g``, each summing to ``s``;
    ``rows1`` (..., H1), ``rows2`` (..., H2) their sums over the width (which body rows make the
    similarity); ``correspondence`` (..., H1*W1, H2*W2) the full ``C`` when asked for, else ``None``
    (row sums = ``map1``, column sums = ``map2``).
    """

    similarity: torch.Tensor
    map1: torch.Tensor
    map2: torch.Tensor
    rows1: torch.Tensor
    rows2: torch.Tensor
    correspondence: torch.Tensor | None = None

    @property
    def distance(self) -> torch.Tensor:
        """``d_f = sqrt(2 - 2 s)``, the feature distance the ranking uses."""
        return (2 - 2 * self.similarity).clamp_min(0).sqrt()

    def detach(self) -> "SimilarityExplanation":
        return SimilarityExplanation(**{f.name: _apply(getattr(self, f.name), lambda t: t.detach()) for f in fields(self)})

    def __getitem__(self, index) -> "SimilarityExplanation":
        return SimilarityExplanation(**{f.name: _apply(getattr(self, f.name), lambda t: t[index]) for f in fields(self)})


def _apply(value: torch.Tensor | None, fn) -> torch.Tensor | None:
    return None if value is None else fn(value)


def pooling_weights(
    pool: nn.Module, height: int, width: int, device: torch.device | str | None = None
) -> torch.Tensor:
    """The weight matrix ``W`` (P, H*W) of a linear, channel-wise pooling: ``f_p = sum_i W[p, i] A(i)``.

    Built by pooling the H*W one-hot maps of one channel, so it is whatever the module computes
    (e.g. the overlapping stripes of ``F.adaptive_avg_pool2d`` for PCB when H is not a multiple of
    the number of parts). The pool's output must be stripe-major (``p * K + k``), as both poolings of
    :mod:`casn_core.models.pooling` are.
    """
    if int(height) < 1 or int(width) < 1:
        raise ValueError(f"map size must be positive, got {height}x{width}")
    size = int(height) * int(width)
    one_hot = torch.eye(size, device=device, dtype=torch.float32).reshape(size, 1, int(height), int(width))
    with torch.no_grad():
        pooled = pool(one_hot)
    if pooled.ndim != 2 or pooled.shape[0] != size:
        raise ValueError(f"pool {type(pool).__name__} maps (N, 1, H, W) to {tuple(pooled.shape)}, expected (N, parts)")
    parts = getattr(pool, "num_parts", pooled.shape[1])
    if pooled.shape[1] != parts:
        raise ValueError(f"pool {type(pool).__name__} gives {pooled.shape[1]} outputs per channel, num_parts={parts}")
    return pooled.float().t().contiguous()


def _weights_for(pooling: Pooling, height: int, width: int, device: torch.device) -> torch.Tensor:
    if isinstance(pooling, nn.Module):
        return pooling_weights(pooling, height, width, device)
    if not isinstance(pooling, torch.Tensor):
        raise TypeError(f"pooling must be a pool module or a (parts, H*W) weight tensor, got {type(pooling).__name__}")
    if pooling.ndim != 2 or pooling.shape[1] != height * width:
        raise ValueError(f"pooling weights {tuple(pooling.shape)} do not fit a {height}x{width} map "
                         f"(expected (parts, {height * width}))")
    return pooling.to(device=device, dtype=torch.float32)


def _check_maps(name: str, maps: torch.Tensor, ndim: int) -> None:
    if not isinstance(maps, torch.Tensor) or maps.ndim != ndim:
        shape = tuple(maps.shape) if isinstance(maps, torch.Tensor) else type(maps).__name__
        raise ValueError(f"{name} must have {ndim} dims {'(N, K, H, W)' if ndim == 4 else '(K, H, W)'}, got {shape}")
    if not maps.is_floating_point():
        raise ValueError(f"{name} must be floating point, got {maps.dtype}")


CHUNK_ELEMENTS = 1 << 23
"""Maps of another dtype are converted to float32 this many elements at a time (32 MiB), not all at once."""


def _float_chunks(maps: torch.Tensor):
    """``maps`` (N, K, H, W) as float32 pieces along N, keeping the memory layout (no full-size copy for bf16)."""
    if maps.dtype == torch.float32:
        yield maps
        return
    per_map = max(1, maps[0].numel())
    for piece in maps.split(max(1, CHUNK_ELEMENTS // per_map)):
        yield piece.float()


def _part_features(maps: torch.Tensor, weights: torch.Tensor, features: torch.Tensor | None) -> torch.Tensor:
    """``f`` as (N, P, K): the given pooled features (N, P*K), or ``W`` applied to the maps (N, K, H, W)."""
    n, k = maps.shape[:2]
    parts = weights.shape[0]
    if features is None:
        return torch.cat([torch.einsum("nkx,px->npk", piece.flatten(2), weights) for piece in _float_chunks(maps)])
    if features.shape != (n, parts * k):
        raise ValueError(f"features {tuple(features.shape)} do not match {n} maps of {k} channels and {parts} parts")
    return features.float().reshape(n, parts, k)


def _position_products(maps: torch.Tensor, vectors: torch.Tensor) -> torch.Tensor:
    """``<A_n(i), v>`` for maps (N, K, H, W) and float32 vectors (V, K) -> (N, HW, V), in float32.

    Maps stored channels-last are read as one contiguous (N*HW, K) matrix (one GEMM); others as N
    products (V, K) x (K, HW).
    """
    out = []
    for piece in _float_chunks(maps):
        n, k = piece.shape[:2]
        by_position = piece.flatten(2).transpose(1, 2)  # (n, HW, K) view
        if by_position.is_contiguous():
            out.append((by_position.reshape(-1, k) @ vectors.t()).reshape(n, -1, vectors.shape[0]))
        else:
            out.append(torch.matmul(vectors, piece.flatten(2)).transpose(1, 2))
    return out[0] if len(out) == 1 else torch.cat(out)


def similarity_decomposition(
    query_maps: torch.Tensor,
    gallery_maps: torch.Tensor,
    pooling: Pooling,
    query_features: torch.Tensor | None = None,
    gallery_features: torch.Tensor | None = None,
    full: bool = False,
) -> SimilarityExplanation:
    """Decomposition of every (query, gallery) pair: maps (N, K, H1, W1) and (M, K, H2, W2) -> fields (N, M, ...).

    ``pooling``: the pool module or its weights ``W`` (P, HW) (a tensor only fits maps of one size).
    ``query_features`` (N, P*K) and ``gallery_features`` (M, P*K): the cached pooled features ``f``
    (default: ``W`` applied to the maps). The per-pair cost is one matrix-vector product per image
    side, like :func:`casn_core.attention.siamese.pair_attention_grid`; maps stored channels-last are
    read as contiguous (HW, K) matrices. ``full=True`` adds ``C`` (N, M, H1*W1, H2*W2).
    """
    _check_maps("query_maps", query_maps, 4)
    _check_maps("gallery_maps", gallery_maps, 4)
    n, k, h1, w1 = query_maps.shape
    m, k2, h2, w2 = gallery_maps.shape
    if k != k2:
        raise ValueError(f"query maps have {k} channels and gallery maps {k2}")
    device = query_maps.device
    if gallery_maps.device != device:
        raise ValueError(f"query maps are on {device} and gallery maps on {gallery_maps.device}")
    query, gallery = query_maps, gallery_maps  # converted to float32 piece by piece
    wq = _weights_for(pooling, h1, w1, device)
    wg = _weights_for(pooling, h2, w2, device)
    if wq.shape[0] != wg.shape[0]:
        raise ValueError(f"query pooling has {wq.shape[0]} parts and gallery pooling {wg.shape[0]}")
    parts = wq.shape[0]
    fq = _part_features(query, wq, query_features)  # (N, P, K)
    fg = _part_features(gallery, wg, gallery_features)  # (M, P, K)
    denom = fq.flatten(1).norm(dim=1)[:, None] * fg.flatten(1).norm(dim=1)[None, :]  # (N, M)
    similarity = safe_divide(fq.flatten(1) @ fg.flatten(1).t(), denom)

    # m_q(i) = sum_p w_p(i) <A_q(i), f_g,p> / (|f_q||f_g|)
    prod_q = _position_products(query, fg.reshape(m * parts, k)).reshape(n, h1 * w1, m, parts)
    map1 = torch.einsum("nxmp,px->nmx", prod_q, wq)
    # m_g(j) = sum_p w_p(j) <A_g(j), f_q,p> / (|f_q||f_g|)
    prod_g = _position_products(gallery, fq.reshape(n * parts, k)).reshape(m, h2 * w2, n, parts)
    map2 = torch.einsum("myns,sy->nmy", prod_g, wg)
    map1 = safe_divide(map1, denom[..., None]).reshape(n, m, h1, w1)
    map2 = safe_divide(map2, denom[..., None]).reshape(n, m, h2, w2)
    corr = None
    if full:
        pair_weights = wq.t() @ wg  # (HW1, HW2): sum_p w_p(i) w_p(j)
        local = torch.einsum("nkx,mky->nmxy", query.float().flatten(2), gallery.float().flatten(2))
        corr = safe_divide(local * pair_weights, denom[..., None, None])
    return SimilarityExplanation(similarity, map1, map2, map1.sum(dim=-1), map2.sum(dim=-1), corr)


def similarity_grid(
    model: nn.Module,
    query_maps: torch.Tensor,
    gallery_maps: torch.Tensor,
    query_features: torch.Tensor | None = None,
    gallery_features: torch.Tensor | None = None,
    full: bool = False,
) -> SimilarityExplanation:
    """:func:`similarity_decomposition` with the pooling of ``model`` (a :class:`casn_core.models.CASN`).

    Features (N, P*K), (M, P*K) default to the pooling weights of ``model.pool`` applied to the maps
    (the model's own retrieval features ``f``, computed piece by piece for bfloat16 maps).
    """
    return similarity_decomposition(query_maps, gallery_maps, model.pool, query_features, gallery_features, full)


def explain_similarity(
    pooling: Pooling, maps1: torch.Tensor, maps2: torch.Tensor, full: bool = False
) -> SimilarityExplanation:
    """Decomposition of a list of pairs ``maps1[b]`` with ``maps2[b]`` (B, K, H, W) -> fields (B, ...)."""
    _check_maps("maps1", maps1, 4)
    _check_maps("maps2", maps2, 4)
    if maps1.shape[0] != maps2.shape[0]:
        raise ValueError(f"maps1 holds {maps1.shape[0]} images and maps2 {maps2.shape[0]}; pairs need as many")
    parts = []
    for b in range(maps1.shape[0]):
        parts.append(similarity_decomposition(maps1[b:b + 1], maps2[b:b + 1], pooling, full=full)[0, 0])
    names = [f.name for f in fields(SimilarityExplanation)]
    return SimilarityExplanation(**{
        name: None if getattr(parts[0], name) is None else torch.stack([getattr(p, name) for p in parts])
        for name in names
    })


def _flat_index(index: int | tuple[int, int], height: int, width: int) -> int:
    if isinstance(index, (tuple, list)):
        if len(index) != 2:
            raise ValueError(f"a location is an int or (y, x), got {index!r}")
        y, x = (int(v) for v in index)
        if not (0 <= y < height and 0 <= x < width):
            raise ValueError(f"location (y={y}, x={x}) is outside the {height}x{width} map")
        return y * width + x
    flat = int(index)
    if not 0 <= flat < height * width:
        raise ValueError(f"location index {flat} is outside the {height}x{width} map ({height * width} positions)")
    return flat


def correspondence(
    query_map: torch.Tensor,
    gallery_map: torch.Tensor,
    index: int | tuple[int, int],
    pooling: Pooling,
    direction: str = "query",
) -> torch.Tensor:
    """One row or column of ``C`` for one pair of maps (K, H1, W1) and (K, H2, W2).

    ``direction="query"``: ``index`` (flat or ``(y, x)``) is a query position ``i``; returns
    ``C(i, :)`` as a (H2, W2) gallery map: where that location's features match in the gallery
    image (it sums to ``map1[i]``). ``direction="gallery"``: ``index`` is a gallery position ``j``;
    returns ``C(:, j)`` as a (H1, W1) query map (summing to ``map2[j]``).
    """
    if direction not in DIRECTIONS:
        raise ValueError(f"direction must be one of {DIRECTIONS}, got {direction!r}")
    _check_maps("query_map", query_map, 3)
    _check_maps("gallery_map", gallery_map, 3)
    k, h1, w1 = query_map.shape
    k2, h2, w2 = gallery_map.shape
    if k != k2:
        raise ValueError(f"query map has {k} channels and gallery map {k2}")
    device = query_map.device
    query, gallery = query_map.float().reshape(k, -1), gallery_map.float().reshape(k, -1)
    wq = _weights_for(pooling, h1, w1, device)
    wg = _weights_for(pooling, h2, w2, device)
    denom = (wq @ query.t()).norm() * (wg @ gallery.t()).norm()
    if direction == "query":
        i = _flat_index(index, h1, w1)
        row = (query[:, i] @ gallery) * (wq[:, i] @ wg)  # (HW2,)
        return safe_divide(row, denom).reshape(h2, w2)
    j = _flat_index(index, h2, w2)
    column = (gallery[:, j] @ query) * (wg[:, j] @ wq)  # (HW1,)
    return safe_divide(column, denom).reshape(h1, w1)


def contrastive_map(
    query_map: torch.Tensor, wrong_map: torch.Tensor, true_map: torch.Tensor, pooling: Pooling
) -> torch.Tensor:
    """Why did a wrong match rank above the true one? ``m_q`` of ``s(q, wrong) - s(q, true)`` (H, W).

    Maps (K, H, W). Positive where the query's features are closer to the wrong gallery image than
    to the true one; the map sums to the similarity gap ``s(q, wrong) - s(q, true)`` exactly (and
    ``d_f(q, true)^2 - d_f(q, wrong)^2 = 2 * gap``).
    """
    for name, value in (("query_map", query_map), ("wrong_map", wrong_map), ("true_map", true_map)):
        _check_maps(name, value, 3)
    if wrong_map.shape != true_map.shape:
        raise ValueError(f"wrong_map {tuple(wrong_map.shape)} and true_map {tuple(true_map.shape)} differ")
    result = similarity_decomposition(query_map[None], torch.stack([wrong_map, true_map]), pooling)
    return result.map1[0, 0] - result.map1[0, 1]
