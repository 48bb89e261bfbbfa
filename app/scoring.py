"""Scoring rankings: per-query results and the dataset's rank-k / mAP / mINP / CMC, for any (w, K).

Every number comes from the project's one metrics implementation,
:func:`casn_core.metrics.evaluate_rank_per_query`, fed with the distance rows ``python -m casn_core
eval`` scores (paper sec. 4, "Evaluation Protocol"; docs/design.md, sec. 3 and 5):
:func:`score_dataset` builds them with the library's ``casn_candidates`` and ``iter_casn_distmat``
blocks of ~32 MB and scores them with its :class:`casn_core.engine.evaluator.RankingEvaluator` (the one
``casn eval`` uses), one block at a time, so no query x gallery matrix is held.

The attention distances ``d_a`` of the candidates do not depend on w, so a caller that keeps them
(:class:`app.reranking.DatasetAttention`) scores any w on the same K without a pair-attention pass.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from app.core import (
    Compute, QueryResults, RankingEvaluator, RankingSpec, casn_candidates, evaluate_rank_per_query, iter_casn_distmat,
    metrics_junk_mask,
)
from app.state import AppState

MAX_RANK = 50
"""Length of the CMC curve (capped at the gallery size), as ``eval`` reports it."""


@dataclass
class QueryStats:
    """What the query picker needs of every query."""

    first_true_rank: int | None
    ap: float | None


@dataclass
class DatasetSummary:
    """Rank-k, mAP and mINP over the valid queries, for one CASN ranking and for the feature ranking.

    ``ranking``: which CASN ranking ``casn`` and ``per_query`` score (None: the app's default one).
    """

    num_query: int
    num_gallery: int
    num_valid: int
    casn: dict
    feature: dict
    per_query: list[QueryStats]
    ranking: RankingSpec | None = None


def junk_mask(state: AppState, query_index: int) -> np.ndarray:
    """Gallery entries the Market-1501 protocol drops for this query (same identity and same camera).

    This is the rule :func:`casn_core.metrics.evaluate_rank_per_query` applies; the app uses it only
    to hide those entries from the list it shows.
    """
    return metrics_junk_mask(state.query.pids[query_index], state.query.camids[query_index], state.gallery.pids,
                             state.gallery.camids)


def query_scores(state: AppState, query_indices, distmat: np.ndarray) -> QueryResults:
    """The metrics' per-query results of ``distmat`` rows for ``query_indices``."""
    indices = np.atleast_1d(np.asarray(query_indices))
    return evaluate_rank_per_query(distmat, np.asarray(state.query.pids)[indices], state.gallery.pids,
                                   np.asarray(state.query.camids)[indices], state.gallery.camids)


def optional(results: QueryResults, row: int) -> tuple[int | None, float | None]:
    """``(first true rank, AP)`` of one row; ``(None, None)`` when the query has no true match."""
    if not bool(results.valid[row]):
        return None, None
    return int(results.first_true_rank[row]), float(results.ap[row])


def scores_dict(results: QueryResults, max_rank: int) -> dict:
    """``{"rank1", "rank5", "rank10", "mAP", "mINP", "cmc"}`` from the metrics' summary (NaN when no query counts)."""
    if not bool(results.valid.any()):
        return {"rank1": float("nan"), "rank5": float("nan"), "rank10": float("nan"), "mAP": float("nan"),
                "mINP": float("nan"), "cmc": []}
    summary = results.summary(max_rank)
    cmc = [float(v) for v in summary["cmc"]]
    return {"rank1": cmc[0], "rank5": cmc[min(4, max_rank - 1)], "rank10": cmc[min(9, max_rank - 1)],
            "mAP": float(summary["mAP"]), "mINP": float(summary["mINP"]), "cmc": cmc}


def score_dataset(state: AppState, progress: bool = False, weight: float | None = None, topk: int | None = None,
                  attention: Callable[[torch.Tensor], torch.Tensor] | None = None) -> tuple[QueryResults, QueryResults]:
    """``(casn, feature)`` per-query results of every query, computed and scored in query blocks.

    ``weight`` / ``topk``: the CASN ranking (default: the state's). ``attention(candidates)``: the
    (Q, k) ``d_a`` of the candidates when the caller keeps them (else the library computes them).
    The rows are the ones :func:`casn_core.engine.inference.casn_distmat` returns (the same
    ``iter_casn_distmat`` blocks), so the numbers equal scoring the whole matrix.
    """
    weight = state.attention_weight if weight is None else float(weight)
    topk = state.topk if topk is None else int(topk)
    feature = RankingEvaluator(state.query, state.gallery)
    candidates = casn_candidates(state.query.features, state.gallery.features, topk, on_block=feature.process)
    if weight == 0:  # the top K by d_f, then the rest by d_f: the feature order itself (as eval scores it)
        return feature.results(), feature.results()
    known = None if attention is None else attention(candidates)
    ranking = RankingSpec.custom(weight, topk, state.threshold)
    casn = RankingEvaluator(state.query, state.gallery).process_all(iter_casn_distmat(
        state.model, state.query, state.gallery, ranking, Compute(progress=progress), candidates=candidates,
        attention=known))
    return casn.results(), feature.results()


def build_summary(state: AppState, casn: QueryResults, feature: QueryResults,
                  ranking: RankingSpec | None = None) -> DatasetSummary:
    max_rank = min(MAX_RANK, len(state.gallery))
    return DatasetSummary(
        num_query=len(state.query), num_gallery=len(state.gallery), num_valid=int(casn.valid.sum()),
        casn=scores_dict(casn, max_rank), feature=scores_dict(feature, max_rank),
        per_query=[QueryStats(*optional(casn, i)) for i in range(len(casn))], ranking=ranking,
    )
