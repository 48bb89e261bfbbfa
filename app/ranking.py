"""Per-query CASN rankings as the app shows them, and the dataset's rank-k / mAP / mINP / CMC.

Presentation only. The ranking is the library's (:func:`casn_core.engine.inference.rank_query_casn`:
the paper's sec. 4 "Evaluation Protocol", docs/design.md, sec. 3); every number that scores a ranking
(first true rank, AP, INP, CMC, mAP, and which queries count) comes from the project's one metrics
implementation, :func:`casn_core.metrics.evaluate_rank_per_query`, fed with the same (1, G)
distance row that ``python -m casn_core eval`` scores (``casn_distmat``'s row of that query). So the
app's numbers and the CLI's are the same computation, not two that agree.

What this module adds is the list a user reads: the ranked gallery with the Market-1501 junk
entries (the query's identity seen by the query's camera; docs/design.md, sec. 5) left out, each entry's
score split into its feature and attention parts.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from app.core import QueryResults, evaluate_rank_per_query, metrics_junk_mask, rank_query_casn
from app.state import AppState

MAX_RANK = 50
"""Length of the CMC curve (capped at the gallery size), as ``eval`` reports it."""


@dataclass
class QueryRanking:
    """One query's ranked gallery after removing junk; arrays are in rank order.

    ``feature_part``/``attention_part`` are NaN beyond the top K (ranked by feature distance only).
    ``first_true_rank`` (1-based) and ``ap`` come from the metrics module; both are None when the
    gallery holds no true match (the query is not valid under the protocol).
    """

    query_index: int
    order: np.ndarray
    score: np.ndarray
    feature_part: np.ndarray
    attention_part: np.ndarray
    feature_distance: np.ndarray
    attention_distance: np.ndarray
    matches: np.ndarray
    excluded: int
    topk: int
    first_true_rank: int | None
    ap: float | None
    distance_row: np.ndarray | None = None

    @property
    def failed(self) -> bool:
        """The rank-1 image is a wrong identity while a true match exists."""
        return self.first_true_rank is not None and self.first_true_rank > 1

    def reranked(self, position: int) -> bool:
        """Whether the entry at ``position`` was among the top K re-scored with attention."""
        return bool(np.isfinite(self.feature_part[position]))

    def position(self, gallery_index: int) -> int | None:
        """0-based position of a gallery image in this ranking (None when left out as junk)."""
        hits = np.flatnonzero(self.order == gallery_index)
        return int(hits[0]) if len(hits) else None


def junk_mask(state: AppState, query_index: int) -> np.ndarray:
    """Gallery entries the Market-1501 protocol drops for this query (same identity and same camera).

    This is the rule :func:`casn_core.metrics.evaluate_rank_per_query` applies; the app uses it only
    to hide those entries from the list it shows (``tests/test_app_client.py`` checks that the first
    true match of the shown list is the metrics' ``first_true_rank``).
    """
    return metrics_junk_mask(state.query.pids[query_index], state.query.camids[query_index], state.gallery.pids,
                             state.gallery.camids)


def query_scores(state: AppState, query_indices, distmat: np.ndarray) -> QueryResults:
    """The metrics' per-query results of ``distmat`` rows for ``query_indices``."""
    indices = np.atleast_1d(np.asarray(query_indices))
    return evaluate_rank_per_query(distmat, np.asarray(state.query.pids)[indices], state.gallery.pids,
                                   np.asarray(state.query.camids)[indices], state.gallery.camids)


def _optional(results: QueryResults, row: int) -> tuple[int | None, float | None]:
    if not bool(results.valid[row]):
        return None, None
    return int(results.first_true_rank[row]), float(results.ap[row])


def rank_query(state: AppState, query_index: int) -> QueryRanking:
    """Rank the gallery for one query: feature distance, with Siamese attention on the top ``state.topk``."""
    if not 0 <= query_index < len(state.query):
        raise IndexError(f"query index {query_index} is out of range 0..{len(state.query) - 1}")
    k = state.topk
    dist_row = state.feature_row(query_index)
    dist = dist_row.numpy()
    num_gallery = len(dist)
    ranked = rank_query_casn(state.model, state.query.maps[query_index], state.gallery.maps,
                             dist_row, k, state.attention_weight, state.threshold,
                             state.query.features[query_index], state.gallery.features)
    # the row eval scores (casn_core.engine.inference.casn_distmat): combined distances in rank order
    row, feat_part, att_part, att_dist = (np.empty(num_gallery) for _ in range(4))
    row[ranked.order] = ranked.distance
    feat_part[ranked.order] = ranked.feature_part
    att_part[ranked.order] = ranked.attention_part
    att_dist[ranked.order] = ranked.attention_distance
    order = np.argsort(row, kind="stable")  # the metrics' tie rule: equal distances in gallery order
    junk = junk_mask(state, query_index)
    order = order[~junk[order]]
    first, ap = _optional(query_scores(state, [query_index], row[None]), 0)
    return QueryRanking(
        query_index=query_index, order=order, score=row[order], feature_part=feat_part[order],
        attention_part=att_part[order], feature_distance=dist[order], attention_distance=att_dist[order],
        matches=np.asarray(state.gallery.pids)[order] == state.query.pids[query_index], excluded=int(junk.sum()),
        topk=min(k, num_gallery), first_true_rank=first, ap=ap, distance_row=row,
    )


@dataclass
class QueryStats:
    """What the query picker needs of every query."""

    first_true_rank: int | None
    ap: float | None


@dataclass
class DatasetSummary:
    """Rank-k, mAP and mINP over the valid queries, for CASN ranking and feature-only ranking."""

    num_query: int
    num_gallery: int
    num_valid: int
    casn: dict
    feature: dict
    per_query: list[QueryStats]


def scores_dict(results: QueryResults, max_rank: int) -> dict:
    """``{"rank1", "rank5", "rank10", "mAP", "mINP", "cmc"}`` from the metrics' summary (NaN when no query counts)."""
    if not bool(results.valid.any()):
        return {"rank1": float("nan"), "rank5": float("nan"), "rank10": float("nan"), "mAP": float("nan"),
                "mINP": float("nan"), "cmc": []}
    summary = results.summary(max_rank)
    cmc = [float(v) for v in summary["cmc"]]
    return {"rank1": cmc[0], "rank5": cmc[min(4, max_rank - 1)], "rank10": cmc[min(9, max_rank - 1)],
            "mAP": float(summary["mAP"]), "mINP": float(summary["mINP"]), "cmc": cmc}


def summarise_dataset(state: AppState, progress: bool = False) -> DatasetSummary:
    """Score the CASN ranking of every query (``eval``'s own rows: :func:`casn_distmat`'s blocks) and the
    feature ranking, in query blocks (no query x gallery matrix held; :func:`app.summary.score_dataset`).

    ``tests/test_app_client.py`` checks that :func:`rank_query` of each query gives the same row.
    """
    from app.summary import build_summary, score_dataset

    return build_summary(state, *score_dataset(state, progress))


def ranking_dict(state: AppState, ranking: QueryRanking, limit: int | None = None) -> dict:
    """The JSON form of a ranking (API ``rank_query``): top ``limit`` entries, paths relative to the data."""
    q = ranking.query_index
    limit = len(ranking.order) if limit is None else min(limit, len(ranking.order))

    def num(value) -> float | None:
        return None if value is None or not np.isfinite(value) else float(value)

    entries = []
    for pos in range(limit):
        g = int(ranking.order[pos])
        entries.append({
            "rank": pos + 1, "gallery_index": g, "name": state.relative(state.gallery.paths[g]),
            "pid": int(state.gallery.pids[g]), "camid": int(state.gallery.camids[g]),
            "match": bool(ranking.matches[pos]), "score": num(ranking.score[pos]),
            "feature_distance": num(ranking.feature_distance[pos]),
            "attention_distance": num(ranking.attention_distance[pos]),
            "feature_part": num(ranking.feature_part[pos]), "attention_part": num(ranking.attention_part[pos]),
            "reranked_with_attention": ranking.reranked(pos),
        })
    return {
        "query": {"index": q, "name": state.relative(state.query.paths[q]), "pid": int(state.query.pids[q]),
                  "camid": int(state.query.camids[q])},
        "first_true_rank": ranking.first_true_rank, "ap": ranking.ap, "failed": ranking.failed,
        "excluded_same_camera": ranking.excluded, "topk_attention": ranking.topk,
        "attention_weight": state.attention_weight, "threshold": state.threshold, "ranking": entries,
    }
