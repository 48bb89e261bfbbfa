"""The verdict of a failure: what ranked the wrong match first, and whether attention would have helped.

Paper sec. 4 ranks by ``d = norm(d_f) + w norm(d_a)`` on the top K by ``d_f`` (each part min-max
normalised over those K candidates; docs/design.md, sec. 3). For a query whose rank-1 image is a
wrong identity W while its best true match T ranks lower, this module says

- what actually put W first under the ranking shown (``d_f`` alone at w = 0; the combined distance
  otherwise; or that T lies beyond the top K, where attention never re-scores it);
- which of ``d_f`` and ``d_a`` favours W (the smaller distance favours);
- where T ranks with the attention term and without it: at the shown w when it is above 0, else at
  the paper's w = 1 on the same K; and the break-even w above which T's combined distance would
  fall below W's (same K and normalisation), when ``d_a`` favours T.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from app.core import PAPER_WEIGHT, RankingSpec, pair_attention
from app.ranking import QueryRanking, rank_with
from app.reranking import QueryAttention
from app.state import AppState


@dataclass(frozen=True)
class Verdict:
    """The failure explained in three sentences, and the numbers behind them (``data``, for the API)."""

    ranked_by: str
    favours: str
    attention: str
    data: dict

    @property
    def line(self) -> str:
        return f"{self.ranked_by} {self.favours} {self.attention}"


@torch.no_grad()
def _attention_distances(state: AppState, query_index: int, wrong: int, true: int) -> tuple[float, float]:
    """``d_a`` of (q, W) and (q, T) (both computed here: T may lie beyond the computed prefix).

    By the function the pair panels beside the verdict use (``pair_attention``, inside ``explain_maps``): in
    float32, with eq. 4's features pooled from the maps. With bfloat16 maps the ranking's grid multiplies in
    bf16 and takes the features extracted before the maps were rounded; its d_a differed from the panels' by
    up to 0.009 on Market-1501, and the page quoted two values for one pair."""
    rows = torch.tensor([wrong, true])
    query_maps = state.query.maps[query_index][None].expand(2, -1, -1, -1)
    attention = pair_attention(state.model, query_maps, state.gallery.maps[rows], state.threshold)
    values = attention.distance.float().tolist()
    return values[0], values[1]


def _rank(ranking: QueryRanking, gallery_index: int) -> int | None:
    position = ranking.position(gallery_index)
    return None if position is None else position + 1


def _favour(name: str, wrong: float, true: float) -> str:
    if wrong < true:
        return f"{name} favours the **wrong** match ({wrong:.3f} < {true:.3f})"
    if wrong > true:
        return f"{name} favours the **true** match ({true:.3f} < {wrong:.3f})"
    return f"{name} does not separate them ({wrong:.3f} both)"


def verdict(state: AppState, ranking: QueryRanking, wrong: int, true: int, attention: QueryAttention) -> Verdict:
    """The verdict of query ``ranking.query_index`` whose rank-1 ``wrong`` beats its best true match ``true``."""
    q = ranking.query_index
    spec = ranking.ranking
    weight = 0.0 if spec is None else float(spec.attention_weight)
    k = ranking.topk
    f_wrong, f_true = (float(ranking.feature_distance[ranking.position(i)]) for i in (wrong, true))
    a_wrong, a_true = _attention_distances(state, q, wrong, true)
    feature_only = rank_with(state, q, RankingSpec("feature", 0.0, None, state.threshold), attention)
    true_by_feature = _rank(feature_only, true)
    row = state.feature_row(q).numpy()
    beyond = int((row < row[true]).sum()) >= k  # the top K is taken by d_f before junk is dropped

    tested = weight if weight > 0 else PAPER_WEIGHT
    with_attention = ranking if weight > 0 else rank_with(
        state, q, RankingSpec("custom", tested, None if k >= len(state.gallery) else k, state.threshold), attention)
    true_with_attention = _rank(with_attention, true)
    position_w, position_t = with_attention.position(wrong), with_attention.position(true)
    break_even = None
    if position_w is not None and position_t is not None and with_attention.reranked(position_w) \
            and with_attention.reranked(position_t):
        nf_w, nf_t = with_attention.feature_part[position_w], with_attention.feature_part[position_t]
        na_w, na_t = (with_attention.attention_part[p] / tested for p in (position_w, position_t))
        if na_w > na_t:
            break_even = float(max(0.0, (nf_t - nf_w) / (na_w - na_t)))

    k_text = "all" if k >= len(state.gallery) else str(k)
    if weight == 0:
        ranked_by = (f"**What ranked it first:** d_f alone (w = 0): d_f(q, wrong) = {f_wrong:.3f} < "
                     f"d_f(q, true) = {f_true:.3f}; the attention term is off.")
    elif beyond:
        ranked_by = (f"**What ranked it first:** the true match is beyond the top K = {k_text} by d_f (rank "
                     f"{true_by_feature} by d_f), so attention never re-scored it; it follows in feature order.")
    else:
        s_w, s_t = (float(ranking.score[ranking.position(i)]) for i in (wrong, true))
        ranked_by = (f"**What ranked it first:** d = norm(d_f) + {weight:g}·norm(d_a) on the top K = {k_text}: "
                     f"wrong d = {s_w:.3f} < true d = {s_t:.3f}.")
    favours = f"**Verdict:** {_favour('d_f', f_wrong, f_true)}; {_favour('d_a', a_wrong, a_true)}."
    if true_with_attention == 1:
        outcome = "puts the true match **first**"
    else:
        outcome = f"does **not** put the true match first (it ranks {true_with_attention})"
    where = f"at w = {tested:g}" + (" (the paper's w; the shown ranking has w = 0)" if weight == 0 else "")
    sentence = (f"The attention term {where}, K = {k_text}, {outcome}; by d_f alone it ranks {true_by_feature}.")
    if break_even is not None:
        sentence += f" On this K the true match passes the wrong one for w > {break_even:.2f}."
    elif a_wrong <= a_true:
        sentence += " No w helps this pair: d_a favours the wrong match too."
    data = {
        "ranked_by": "feature distance" if weight == 0 else ("feature order beyond the top K" if beyond else
                                                             "combined distance"),
        "feature_distance": {"wrong": f_wrong, "true": f_true},
        "attention_distance": {"wrong": a_wrong, "true": a_true},
        "favours_wrong": {"feature_distance": f_wrong < f_true, "attention_distance": a_wrong < a_true},
        "tested_attention_weight": tested, "topk": k,
        "true_rank_feature_only": true_by_feature, "true_rank_with_attention": true_with_attention,
        "attention_puts_true_first": true_with_attention == 1, "break_even_attention_weight": break_even,
    }
    return Verdict(ranked_by, favours, sentence, data)

