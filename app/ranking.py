"""Per-query rankings as the app shows them: the app's default ranking, or any (w, K).

Presentation only. The rankings are the library's: the default one is
:func:`casn_core.engine.inference.rank_query_casn` (the paper's sec. 4 "Evaluation Protocol",
docs/design.md, sec. 3), and any other (w, K) is :func:`casn_core.engine.rerank.combine_block` on
the query's feature row with attention distances kept by :class:`app.reranking.QueryAttention`:
the rows ``python -m casn_core eval`` scores for the same (w, K). Every number that scores a ranking
(first true rank, AP) comes from :func:`casn_core.metrics.evaluate_rank_per_query` on that row
(:mod:`app.scoring`), so the app's numbers and the CLI's are the same computation.

What this module adds is the list a user reads: the ranked gallery with the Market-1501 junk
entries (the query's identity seen by the query's camera; docs/design.md, sec. 5) left out, each
entry's score split into its feature and attention parts.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from app import presets
from app.core import RankingSpec, combine_block, rank_query_casn, unit_range
from app.reranking import QueryAttention
from app.scoring import (  # noqa: F401  (the names below were defined here before app.scoring held them)
    MAX_RANK, DatasetSummary, QueryStats, build_summary, junk_mask, optional, query_scores, score_dataset,
    scores_dict,
)
from app.state import AppState

_optional = optional
SHOWN_ATTENTION = 100
"""At w = 0 nothing depends on d_a; it is still computed for the first this many images by d_f, to show it."""


@dataclass
class QueryRanking:
    """One query's ranked gallery after removing junk; arrays are in rank order.

    ``feature_part``/``attention_part`` are NaN beyond the top K (ranked by feature distance only);
    ``attention_distance`` is NaN where it was not computed. ``first_true_rank`` (1-based) and ``ap``
    come from the metrics module; both are None when the gallery holds no true match (the query is
    not valid under the protocol). ``ranking``: the (w, K) it was made with; ``junk_in_topk``: how
    many of the top K by ``d_f`` are junk (re-ranked, then dropped from the list).
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
    ranking: RankingSpec | None = None
    junk_in_topk: int = 0

    @property
    def failed(self) -> bool:
        """The rank-1 image is a wrong identity while a true match exists."""
        return self.first_true_rank is not None and self.first_true_rank > 1

    @property
    def attention_weight(self) -> float:
        return 0.0 if self.ranking is None else float(self.ranking.attention_weight)

    @property
    def reranked_count(self) -> int:
        """Entries of the list re-scored with attention: the top K by d_f less the junk among them."""
        return int(np.isfinite(self.feature_part).sum())

    def reranked(self, position: int) -> bool:
        """Whether the entry at ``position`` was among the top K re-scored with attention."""
        return bool(np.isfinite(self.feature_part[position]))

    def position(self, gallery_index: int) -> int | None:
        """0-based position of a gallery image in this ranking (None when left out as junk)."""
        hits = np.flatnonzero(self.order == gallery_index)
        return int(hits[0]) if len(hits) else None


def _finish(state: AppState, query_index: int, row: np.ndarray, parts: tuple[np.ndarray, ...], k: int,
            spec: RankingSpec) -> QueryRanking:
    """The shown list of a distance row (junk left out) with its parts, scored by the metrics."""
    feat_part, att_part, att_dist, dist = parts
    order = np.argsort(row, kind="stable")  # the metrics' tie rule: equal distances in gallery order
    junk = junk_mask(state, query_index)
    topk_junk = int(junk[np.argsort(dist, kind="stable")[:k]].sum())
    order = order[~junk[order]]
    first, ap = optional(query_scores(state, [query_index], row[None]), 0)
    return QueryRanking(
        query_index=query_index, order=order, score=row[order], feature_part=feat_part[order],
        attention_part=att_part[order], feature_distance=dist[order], attention_distance=att_dist[order],
        matches=np.asarray(state.gallery.pids)[order] == state.query.pids[query_index], excluded=int(junk.sum()),
        topk=k, first_true_rank=first, ap=ap, distance_row=row, ranking=spec, junk_in_topk=topk_junk,
    )


def rank_query(state: AppState, query_index: int) -> QueryRanking:
    """Rank the gallery for one query with the app's default ranking: feature distance, with Siamese
    attention on the top ``state.topk`` (:func:`casn_core.engine.inference.rank_query_casn`)."""
    if not 0 <= query_index < len(state.query):
        raise IndexError(f"query index {query_index} is out of range 0..{len(state.query) - 1}")
    k = state.topk
    dist_row = state.feature_row(query_index)
    dist = dist_row.numpy()
    num_gallery = len(dist)
    ranked = rank_query_casn(state.model, state.query.maps[query_index], state.gallery.maps, dist_row,
                             RankingSpec.custom(state.attention_weight, k, state.threshold),
                             state.query.features[query_index], state.gallery.features)
    # the row eval scores (casn_core.engine.inference.casn_distmat): combined distances in rank order
    row, feat_part, att_part, att_dist = (np.empty(num_gallery) for _ in range(4))
    row[ranked.order] = ranked.distance
    feat_part[ranked.order] = ranked.feature_part
    att_part[ranked.order] = ranked.attention_part
    att_dist[ranked.order] = ranked.attention_distance
    return _finish(state, query_index, row, (feat_part, att_part, att_dist, dist), min(k, num_gallery),
                   presets.default_spec(state))


def rank_with(state: AppState, query_index: int, spec: RankingSpec, attention: QueryAttention) -> QueryRanking:
    """Rank the gallery for one query with any (w, K): the library's combination
    (:func:`casn_core.engine.rerank.combine_block`, eval's rows) of the feature row and the kept ``d_a``.

    w = 0 is the feature ranking: the row is ``d_f`` itself (what ``eval`` scores for w = 0), and
    ``d_a`` is computed for the first :data:`SHOWN_ATTENTION` images only, to be shown.
    """
    if not 0 <= query_index < len(state.query):
        raise IndexError(f"query index {query_index} is out of range 0..{len(state.query) - 1}")
    dist_row = state.feature_row(query_index)
    num_gallery = dist_row.shape[0]
    k = presets.effective_topk(state, spec.topk)
    weight = float(spec.attention_weight)
    by_feature = torch.argsort(dist_row, stable=True)
    computed = k if weight > 0 else min(num_gallery, max(k, SHOWN_ATTENTION) if k < num_gallery else SHOWN_ATTENTION)
    d_a = attention.distances(query_index, by_feature, computed)
    att_dist = np.full(num_gallery, np.nan)
    att_dist[by_feature[:computed].numpy()] = d_a.numpy()
    feat_part, att_part = np.full(num_gallery, np.nan), np.full(num_gallery, np.nan)
    candidates = by_feature[:k]
    if weight > 0:
        row = combine_block(dist_row[None], candidates[None], d_a[:k][None], weight)[0].numpy().astype(np.float64)
        feat_part[candidates.numpy()] = unit_range(dist_row[candidates].float(), dim=None).numpy()
        att_part[candidates.numpy()] = (weight * unit_range(d_a[:k].float(), dim=None)).numpy()
    else:
        row = dist_row.numpy().astype(np.float64)
    return _finish(state, query_index, row, (feat_part, att_part, att_dist, dist_row.numpy()), k, spec)


def summarise_dataset(state: AppState, progress: bool = False) -> DatasetSummary:
    """Score the default CASN ranking of every query (``eval``'s own rows) and the feature ranking, in
    query blocks (no query x gallery matrix held; :func:`app.scoring.score_dataset`)."""
    return build_summary(state, *score_dataset(state, progress))


def _num(value) -> float | None:
    return None if value is None or not np.isfinite(value) else float(value)


def ranking_dict(state: AppState, ranking: QueryRanking, limit: int | None = None, start: int = 0) -> dict:
    """The JSON form of a ranking (API ``rank_query``): entries ``start`` to ``start + limit``, paths
    relative to the data, the ranking's settings under ``"ranking"``."""
    q = ranking.query_index
    stop = len(ranking.order) if limit is None else min(start + limit, len(ranking.order))
    spec = ranking.ranking or presets.default_spec(state)
    entries = []
    for pos in range(max(0, start), stop):
        g = int(ranking.order[pos])
        entries.append({
            "rank": pos + 1, "gallery_index": g, "name": state.relative(state.gallery.paths[g]),
            "pid": int(state.gallery.pids[g]), "camid": int(state.gallery.camids[g]),
            "match": bool(ranking.matches[pos]), "score": _num(ranking.score[pos]),
            "feature_distance": _num(ranking.feature_distance[pos]),
            "attention_distance": _num(ranking.attention_distance[pos]),
            "feature_part": _num(ranking.feature_part[pos]), "attention_part": _num(ranking.attention_part[pos]),
            "reranked_with_attention": ranking.reranked(pos),
        })
    return {
        "query": {"index": q, "name": state.relative(state.query.paths[q]), "pid": int(state.query.pids[q]),
                  "camid": int(state.query.camids[q])},
        "first_true_rank": ranking.first_true_rank, "ap": ranking.ap, "failed": ranking.failed,
        "excluded_same_camera": ranking.excluded, "topk_attention": ranking.topk,
        "attention_weight": float(spec.attention_weight), "threshold": state.threshold,
        "ranking_settings": presets.settings(state, spec), "num_ranked": int(len(ranking.order)),
        "ranking": entries,
    }
