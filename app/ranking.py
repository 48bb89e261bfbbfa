"""Per-query CASN ranking with its AP and first true match, and the dataset's rank-1, mAP and CMC.

The ranking is the paper's (sec. 4, "Evaluation Protocol"; DESIGN.md sec. 3): the top K gallery
images by feature distance are re-scored by ``norm(d_f) + w * norm(d_a)``, with ``d_a`` the
consistency distance of the pair's Siamese attention; the rest keep their feature order.
Scoring follows Market-1501 (DESIGN.md sec. 5): gallery images of the query's identity taken by the
query's camera are left out of the list ("junk"), and a query with no remaining true match has no AP.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from casn_core.engine.inference import rank_query_casn

from app.state import AppState


@dataclass
class QueryRanking:
    """One query's ranked gallery after removing junk; arrays are in rank order.

    ``feature_part``/``attention_part`` are NaN beyond the top K (ranked by feature distance only).
    ``first_true_rank`` is 1-based; it and ``ap`` are None when the gallery holds no true match.
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


def average_precision(matches: np.ndarray) -> float | None:
    """Mean over the true matches of the precision at each of them (Market-1501 AP)."""
    hits = np.flatnonzero(matches)
    if len(hits) == 0:
        return None
    return float(np.mean((np.arange(len(hits)) + 1) / (hits + 1)))


def junk_mask(state: AppState, query_index: int) -> np.ndarray:
    """Gallery images left out for this query: same identity and same camera, or identity -1."""
    pid, cam = state.query.pids[query_index], state.query.camids[query_index]
    g_pids, g_cams = np.asarray(state.gallery.pids), np.asarray(state.gallery.camids)
    return ((g_pids == pid) & (g_cams == cam)) | (g_pids == -1)


def rank_query(state: AppState, query_index: int, topk: int | None = None, casn: bool = True) -> QueryRanking:
    """Rank the gallery for one query: with Siamese attention on the top K, or (``casn=False``) by feature."""
    if not 0 <= query_index < len(state.query):
        raise IndexError(f"query index {query_index} is out of range 0..{len(state.query) - 1}")
    k = state.topk if topk is None else topk
    dist = state.feature_distances[query_index]
    if casn and k > 0:
        ranked = rank_query_casn(state.model, state.query.maps[query_index], state.gallery.maps, dist, k,
                                 state.attention_weight, state.threshold, state.query.features[query_index],
                                 state.gallery.features)
        order, score = ranked.order, ranked.distance
        feat_part, att_part, att_dist = ranked.feature_part, ranked.attention_part, ranked.attention_distance
    else:
        order = np.argsort(dist.numpy(), kind="stable")
        score = dist.numpy()[order]
        feat_part = att_part = att_dist = np.full(len(order), np.nan)
        k = 0
    junk = junk_mask(state, query_index)
    keep = ~junk[order]
    order = order[keep]
    matches = np.asarray(state.gallery.pids)[order] == state.query.pids[query_index]
    hits = np.flatnonzero(matches)
    return QueryRanking(
        query_index=query_index, order=order, score=np.asarray(score)[keep],
        feature_part=np.asarray(feat_part)[keep], attention_part=np.asarray(att_part)[keep],
        feature_distance=dist.numpy()[order], attention_distance=np.asarray(att_dist)[keep],
        matches=matches, excluded=int(junk.sum()), topk=min(k, len(state.gallery)),
        first_true_rank=int(hits[0]) + 1 if len(hits) else None, ap=average_precision(matches),
    )


@dataclass
class QueryStats:
    """What the query picker needs of every query."""

    first_true_rank: int | None
    ap: float | None


@dataclass
class DatasetSummary:
    """Rank-k and mAP over the valid queries, for CASN ranking and feature-only ranking."""

    num_query: int
    num_gallery: int
    num_valid: int
    casn: dict
    feature: dict
    per_query: list[QueryStats]


def _scores(rankings: list[QueryRanking], max_rank: int) -> dict:
    valid = [r for r in rankings if r.first_true_rank is not None]
    if not valid:
        return {"rank1": float("nan"), "rank5": float("nan"), "rank10": float("nan"), "mAP": float("nan"),
                "cmc": []}
    firsts = np.array([r.first_true_rank for r in valid])
    cmc = [(firsts <= k).mean() for k in range(1, max_rank + 1)]
    return {"rank1": float(cmc[0]), "rank5": float(cmc[min(4, max_rank - 1)]),
            "rank10": float(cmc[min(9, max_rank - 1)]), "mAP": float(np.mean([r.ap for r in valid])),
            "cmc": [float(v) for v in cmc]}


def summarise_dataset(state: AppState, progress: bool = False) -> DatasetSummary:
    """Rank every query twice (CASN with attention on the top K, and feature distance alone)."""
    from tqdm import tqdm

    casn, feature = [], []
    for index in tqdm(range(len(state.query)), desc="rank queries", disable=not progress, unit="query"):
        casn.append(rank_query(state, index))
        feature.append(rank_query(state, index, casn=False))
    max_rank = min(50, len(state.gallery))
    casn_scores, feature_scores = _scores(casn, max_rank), _scores(feature, max_rank)
    return DatasetSummary(
        num_query=len(state.query), num_gallery=len(state.gallery),
        num_valid=sum(r.first_true_rank is not None for r in casn), casn=casn_scores, feature=feature_scores,
        per_query=[QueryStats(r.first_true_rank, r.ap) for r in casn],
    )


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
