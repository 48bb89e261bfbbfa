"""Attention distances kept for re-ranking at any w: one query's candidates, or every query's top K.

The paper's ranking distance is ``d = norm(d_f) + w norm(d_a)`` on the top K by ``d_f`` (sec. 4;
docs/design.md, sec. 3). ``d_a``, the consistency distance of a pair's Siamese attention (eq. 5), does
not depend on w, and the normalisations are cheap; so the pair-attention pass, the only costly
step, is done once per query (or once per K for the whole dataset) and every w after that re-ranks
without it. The combination itself is the library's (:func:`casn_core.engine.rerank.combine_block`,
the rows ``casn eval`` scores).
"""
from __future__ import annotations

import threading
from collections import OrderedDict

import torch

from app.core import casn_attention, pair_attention_grid
from app.state import AppState

CHUNK = 512
"""Gallery maps read (and pair attentions computed) at once for one query: bounds the memory of K = all."""


class QueryAttention:
    """``d_a`` of each query's gallery images in feature order, computed as far as a request needs and kept.

    A prefix per query (the first n images by ``d_f``), extended when a larger K asks for more; at
    most ``capacity`` queries are kept (least recently used dropped).
    """

    def __init__(self, state: AppState, capacity: int = 64) -> None:
        self.state = state
        self.capacity = int(capacity)
        self._prefixes: OrderedDict[int, torch.Tensor] = OrderedDict()
        self._lock = threading.Lock()

    def _known(self, query_index: int) -> torch.Tensor:
        with self._lock:
            known = self._prefixes.get(query_index)
            if known is not None:
                self._prefixes.move_to_end(query_index)
            return known if known is not None else torch.empty(0)

    @torch.no_grad()
    def distances(self, query_index: int, by_feature: torch.Tensor, count: int) -> torch.Tensor:
        """``d_a`` (count,) of the gallery images ``by_feature[:count]`` (the query's feature order)."""
        state = self.state
        known = self._known(query_index)
        if len(known) >= count:
            return known[:count]
        parts = [known]
        query_map = state.query.maps[query_index][None]
        query_feature = state.query.features[query_index][None]
        for start in range(len(known), count, CHUNK):
            rows = by_feature[start:min(count, start + CHUNK)]
            grid = pair_attention_grid(state.model, query_map, state.gallery.maps[rows], threshold=state.threshold,
                                       query_features=query_feature, gallery_features=state.gallery.features[rows],
                                       keep_maps=False)
            parts.append(grid.distance[0].float().cpu())
        grown = torch.cat(parts)
        with self._lock:
            current = self._prefixes.get(query_index)
            if current is None or len(current) < len(grown):
                self._prefixes[query_index] = grown
            self._prefixes.move_to_end(query_index)
            while len(self._prefixes) > self.capacity:
                self._prefixes.popitem(last=False)
        return grown[:count]


class DatasetAttention:
    """``d_a`` (Q, k) of every query's top-k candidates, computed once per k (the library's batched pass,
    :func:`casn_core.engine.rerank.casn_attention`) and kept for any w; at most ``capacity`` values of k."""

    def __init__(self, state: AppState, capacity: int = 3) -> None:
        self.state = state
        self.capacity = int(capacity)
        self._by_k: OrderedDict[int, torch.Tensor] = OrderedDict()
        self._lock = threading.Lock()

    def known(self, k: int) -> bool:
        with self._lock:
            return k in self._by_k

    def __call__(self, candidates: torch.Tensor) -> torch.Tensor:
        k = int(candidates.shape[1])
        with self._lock:
            if k in self._by_k:
                self._by_k.move_to_end(k)
                return self._by_k[k]
        state = self.state
        attention = casn_attention(state.model, state.query, state.gallery, candidates, state.threshold)
        with self._lock:
            self._by_k[k] = attention
            while len(self._by_k) > self.capacity:
                self._by_k.popitem(last=False)
        return attention
