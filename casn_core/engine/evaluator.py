"""One evaluator for every ranking: scored block by block, never a whole query x gallery matrix.

:class:`RankingEvaluator` follows fast-reid's ``DatasetEvaluator`` (``process`` / ``evaluate``): each
block of query rows of a distance matrix is scored with the Market-1501 protocol as it arrives
(:func:`casn_core.metrics.evaluate_rank_per_query`; docs/design.md, sec. 5) and dropped, and
``evaluate`` concatenates the per-query results. Every query's numbers depend on its own row only, so
the result equals scoring the whole matrix. ``casn eval``, the pair signals, ``casn tune`` and the
app's dataset summary score their rankings with it.

:func:`evaluate_rankings` scores the feature ranking and any number of named CASN rankings
(:class:`casn_core.rankings.RankingSpec`; docs/design.md, sec. 3) of two feature caches.
"""
from __future__ import annotations

import logging
import time
from dataclasses import asdict
from typing import Iterable, Sequence

import numpy as np
import torch

from casn_core.compute import Compute
from casn_core.engine.rerank import feature_distance_blocks, grouped_casn_blocks
from casn_core.k_reciprocal import KReciprocalConfig, k_reciprocal_distance
from casn_core.maps import FeatureCache
from casn_core.metrics import QueryResults, evaluate_rank_per_query
from casn_core.models.casn import CASN
from casn_core.rankings import RankingSpec

log = logging.getLogger(__name__)


def summarise(result: dict) -> dict:
    """``{"rank1", "rank5", "rank10", "mAP", "mINP"}`` (fractions) from :func:`evaluate_rank`'s output
    (or ``QueryResults.summary``, the same dict)."""
    cmc = result["cmc"]
    return {
        "rank1": float(cmc[0]),
        "rank5": float(cmc[min(4, len(cmc) - 1)]),
        "rank10": float(cmc[min(9, len(cmc) - 1)]),
        "mAP": float(result["mAP"]),
        "mINP": float(result["mINP"]),
    }


def concat_query_results(parts: list[QueryResults]) -> QueryResults:
    """Per-query results of consecutive query blocks, in order, as one :class:`QueryResults`."""
    return QueryResults(*(np.concatenate([getattr(p, name) for p in parts])
                          for name in ("first_true_rank", "ap", "inp", "valid")))


class RankingEvaluator:
    """Scores one ranking of ``query`` against ``gallery`` block by block: :meth:`process` each
    ``(first query row, (n, G) distances)`` block, then :meth:`evaluate` (summary) or :meth:`results`
    (per query)."""

    def __init__(self, query: FeatureCache, gallery: FeatureCache) -> None:
        self.q_pids, self.q_camids = np.asarray(query.pids), np.asarray(query.camids)
        self.g_pids, self.g_camids = np.asarray(gallery.pids), np.asarray(gallery.camids)
        self.max_rank = min(50, len(self.g_pids))
        self.parts: list[QueryResults] = []
        self.next_row = 0

    def process(self, start: int, block: torch.Tensor | np.ndarray) -> None:
        if start != self.next_row:
            raise ValueError(f"blocks must arrive in query order: expected row {self.next_row}, got {start}")
        stop = start + block.shape[0]
        self.parts.append(evaluate_rank_per_query(block, self.q_pids[start:stop], self.g_pids,
                                                  self.q_camids[start:stop], self.g_camids))
        self.next_row = stop

    def process_all(self, blocks: Iterable[tuple[int, torch.Tensor]]) -> "RankingEvaluator":
        for start, block in blocks:
            self.process(start, block)
        return self

    def results(self) -> QueryResults:
        """Per-query results (first true rank, AP, INP, valid) of every processed row."""
        if self.next_row != len(self.q_pids):
            raise ValueError(f"{self.next_row} of {len(self.q_pids)} query rows were processed")
        return concat_query_results(self.parts)

    def evaluate(self) -> dict:
        """``{"rank1", "rank5", "rank10", "mAP", "mINP"}`` (:func:`summarise`)."""
        return summarise(self.results().summary(self.max_rank))


def pair_attention_estimate(spec: RankingSpec, num_query: int, num_gallery: int) -> str:
    """``"paper (w = 1, K = all): 3,368 x 15,913 = 53.6 M pair attentions"``."""
    if spec.attention_weight == 0:
        return f"{spec.label()}: w = 0 is the feature ranking, no pair attention needed"
    k = spec.effective_topk(num_gallery)
    return f"{spec.label()}: {num_query:,} x {k:,} = {num_query * k / 1e6:.1f} M pair attentions"


def evaluate_rankings(model: CASN, query: FeatureCache, gallery: FeatureCache, rankings: Sequence[RankingSpec] = (),
                      compute: Compute = Compute(), k_reciprocal: KReciprocalConfig | None = None) -> dict:
    """Score the feature ranking and every CASN ranking in ``rankings`` on cached query and gallery features.

    Returns ``{"num_query", "num_gallery", "feature": metrics, <ranking name>: metrics + its settings,
    "seconds": {...}}`` (metrics: :func:`summarise`). ``query`` / ``gallery`` hold their maps in RAM
    (:func:`extract_split`) or in a store on disk (``MapStore.as_cache()``); the CASN re-ranking reads
    only the candidates' maps. No query x gallery matrix is held whole: each ranking is computed and
    scored ``compute.chunk`` query rows at a time (:func:`casn_core.engine.rerank.query_chunk`, ~32 MB blocks)
    with :func:`casn_core.metrics.evaluate_rank_per_query`, whose per-query results concatenate (every
    query's numbers depend on its own row only), so the metrics equal ``evaluate_rank`` of the whole
    matrix; with K = all the pairs are scored in query groups of bounded memory
    (:func:`casn_core.engine.rerank.grouped_casn_blocks`, ``compute.state_bytes``). The CASN rankings run
    on ``compute.device`` (``None``: the model's). ``k_reciprocal``: also score the feature ranking re-ranked
    by k-reciprocal encoding (:mod:`casn_core.k_reciprocal`, not part of CASN), as ``"feature_k_reciprocal"``;
    it holds its ``(Q, G)`` distance whole.
    """
    def scored(blocks) -> dict:
        return RankingEvaluator(query, gallery).process_all(blocks).evaluate()

    timing = {}
    started = time.perf_counter()
    results = {"num_query": len(query), "num_gallery": len(gallery),
               "feature": scored(feature_distance_blocks(query.features, gallery.features, compute.chunk))}
    timing["feature_ranking"] = time.perf_counter() - started
    if k_reciprocal is not None:
        started = time.perf_counter()
        reranked = k_reciprocal_distance(query.features, gallery.features, k_reciprocal)
        results["feature_k_reciprocal"] = {**scored([(0, reranked)]), **asdict(k_reciprocal)}
        del results["feature_k_reciprocal"]["block_rows"]
        timing["feature_k_reciprocal_ranking"] = time.perf_counter() - started
    done: dict[tuple, dict] = {}
    for spec in rankings:
        key = (spec.attention_weight, spec.effective_topk(len(gallery)), spec.threshold)
        if key not in done:
            started = time.perf_counter()
            if spec.attention_weight == 0:
                # w = 0: the top K by d_f, then the rest by d_f, is the feature order itself
                done[key] = dict(results["feature"])
            else:
                log.info("%s", pair_attention_estimate(spec, len(query), len(gallery)))
                done[key] = scored(grouped_casn_blocks(model, query, gallery, spec, compute))
            timing[f"{spec.name}_ranking"] = time.perf_counter() - started
        results[spec.name] = {**done[key], **spec.settings()}
    results["seconds"] = timing
    return results

