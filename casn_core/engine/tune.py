"""A validated ranking weight: ``python -m casn_core tune`` and ``train --val-ids N``.

The paper ranks by ``d = norm(d_f) + w norm(d_a)`` on the top K by feature distance with w = 1
(sec. 4, "Evaluation Protocol"). Whether the attention distance helps depends on the data and on how
well the Siamese head learned, so we (not the paper) pick w and K on held-out *validation*
identities: a grid over w that includes 0 (= the feature ranking) and a few K, scored by mAP with the
Market-1501 protocol. Two rules pick the point:

* ``best``: the highest validation mAP (ties: higher rank-1, then smaller w, then smaller K);
* ``one-se`` (default): the one-standard-error rule (Breiman et al., *Classification and Regression
  Trees*, 1984; Hastie et al., *ESL* sec. 7.10): the simplest point (smallest w, then K) whose mAP is
  within one standard error of the best's, the error being that of the paired per-query AP
  difference. A gain that the validation queries cannot tell from noise keeps w = 0, so the stored
  ranking never trades a measured feature ranking for a guess.

The choice is stored in the checkpoint as ``payload["ranking"] = {"attention_weight", "topk", "source", "curve"}``, which
:class:`casn_core.checkpoint.CheckpointInfo` reads (no entry: the paper's w = 1).

Never tune on the test split: the chosen w would then be fitted to the numbers it is judged by.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from casn_core.maps import FeatureCache
from casn_core.models.casn import CASN
from casn_core.rankings import topk_to_json

log = logging.getLogger(__name__)

WEIGHT_GRID = (0.0, 0.05, 0.1, 0.2, 0.3, 0.5, 1.0, 2.0)
"""Candidate w; 0 is the feature ranking, 1 the paper's."""
TOPK_GRID = (10, 20, 50)
"""Candidate K (re-ranking depth)."""


@dataclass
class TuneResult:
    """The chosen ``(w, K)``, its validation scores and the whole curve (one row per grid point)."""

    attention_weight: float
    topk: int | None
    mAP: float
    rank1: float
    feature_mAP: float
    feature_rank1: float
    curve: list[dict] = field(default_factory=list)
    rule: str = "one-se"

    def ranking_entry(self, source: str) -> dict:
        """The checkpoint's ``payload["ranking"]`` entry."""
        return {"attention_weight": float(self.attention_weight), "topk": topk_to_json(self.topk), "source": source,
                "rule": self.rule, "validation": {"mAP": self.mAP, "rank1": self.rank1, "feature_mAP": self.feature_mAP,
                               "feature_rank1": self.feature_rank1},
                "curve": self.curve}


RULES = ("one-se", "best")


def _simplicity(row: dict) -> tuple:
    return (row["attention_weight"], row["topk"] if row["topk"] is not None else float("inf"))


def pick_best(curve: Sequence[dict]) -> dict:
    """The grid row with the best validation mAP; ties: higher rank-1, then smaller w, then smaller K."""
    if not curve:
        raise ValueError("the weight search needs at least one grid point")
    return min(curve, key=lambda row: (-row["mAP"], -row["rank1"], *_simplicity(row)))


def pick_one_se(curve: Sequence[dict], per_query_ap: Sequence[np.ndarray]) -> dict:
    """The one-standard-error rule: the simplest row (smallest w, then K) whose per-query APs trail the
    best row's by at most one standard error of the paired difference (``per_query_ap[i]`` belongs to
    ``curve[i]``; valid queries only)."""
    best = pick_best(curve)
    best_ap = per_query_ap[list(curve).index(best)]
    within = []
    for row, ap in zip(curve, per_query_ap):
        diff = best_ap - ap
        se = float(diff.std(ddof=1) / np.sqrt(diff.size)) if diff.size > 1 else 0.0
        if float(diff.mean()) <= se:
            within.append(row)
    return min(within, key=_simplicity)


def tune_ranking(model: CASN, query: FeatureCache, gallery: FeatureCache, threshold: float,
                 weights: Sequence[float] = WEIGHT_GRID, topks: Sequence[int | None] = TOPK_GRID,
                 rule: str = "one-se") -> TuneResult:
    """Score the CASN ranking of every ``(w, K)`` on validation caches and pick one (see the module doc).

    The grid always includes w = 0, whatever ``weights`` says, so the choice is never worse than the
    feature ranking on the validation split. Each curve row holds ``mAP``, ``rank1`` and ``gain`` /
    ``gain_se``: the mean paired per-query AP difference to w = 0 and its standard error. Each row is
    logged (INFO) as it is scored.
    """
    from casn_core.engine.evaluator import RankingEvaluator
    from casn_core.engine.rerank import casn_attention, casn_candidates, combine_block, feature_distance_blocks

    if rule not in RULES:
        raise ValueError(f"unknown rule {rule!r}; choose from {', '.join(RULES)}")
    weights = sorted({0.0, *(float(w) for w in weights)})
    if any(w < 0 for w in weights):
        raise ValueError(f"attention weights must be >= 0, got {weights}")
    feature = RankingEvaluator(query, gallery).process_all(feature_distance_blocks(query.features,
                                                                                    gallery.features)).results()
    valid = feature.valid
    if not valid.any():
        raise ValueError("no validation query has a true match from another camera in the validation gallery")
    base_ap = feature.ap[valid]
    feature_summary = feature.summary(max_rank=1)
    curve, aps = [], []
    for topk in topks:
        candidates = attention = None  # d_a depends on K, not on w: one attention pass per K
        for weight in weights:
            if weight == 0.0:
                result = feature  # w = 0 re-ranks nothing: the feature ranking
            else:
                if attention is None:
                    candidates = casn_candidates(query.features, gallery.features, topk)
                    attention = casn_attention(model, query, gallery, candidates, threshold)
                # iter_casn_distmat's blocks, combined here from the candidates and d_a shared by every w of this K
                blocks = ((start, combine_block(block, candidates[start:start + len(block)],
                                                attention[start:start + len(block)], weight))
                          for start, block in feature_distance_blocks(query.features, gallery.features))
                result = RankingEvaluator(query, gallery).process_all(blocks).results()
            ap = result.ap[valid]
            diff = ap - base_ap
            row = {"attention_weight": weight, "topk": topk, "mAP": float(ap.mean()),
                   "rank1": float((result.first_true_rank[valid] == 1).mean()),
                   "gain": float(diff.mean()),
                   "gain_se": float(diff.std(ddof=1) / np.sqrt(diff.size)) if diff.size > 1 else 0.0}
            curve.append(row)
            aps.append(ap)
            log.info("validation K=%s w=%g: mAP %.2f%% (gain %+.2f +- %.2f)  rank-1 %.2f%%", topk, weight,
                     100 * row["mAP"], 100 * row["gain"], 100 * row["gain_se"], 100 * row["rank1"])
    best = pick_best(curve) if rule == "best" else pick_one_se(curve, aps)
    return TuneResult(best["attention_weight"], best["topk"], best["mAP"], best["rank1"],
                      feature_summary["mAP"], float(feature_summary["cmc"][0]), curve, rule)


def validation_split(records: Sequence, num_ids: int, seed: int = 0) -> tuple[list, list, list]:
    """Hold out ``num_ids`` identities of a training split as a validation query/gallery.

    Returns ``(train, query, gallery)``. Only identities seen by at least two cameras are held out;
    each gives one query image (a random camera) and the rest of its images as gallery, so every
    validation query has a cross-camera true match (Market-1501 protocol). Seeded; the training part
    shares no identity with the validation part.
    """
    records = list(records)
    if num_ids < 1:
        raise ValueError(f"--val-ids must be >= 1, got {num_ids}")
    cameras: dict[int, set] = {}
    for record in records:
        cameras.setdefault(record.pid, set()).add(record.camid)
    eligible = sorted(pid for pid, cams in cameras.items() if len(cams) >= 2)
    if num_ids > len(eligible) or num_ids >= len(cameras) - 1:
        raise ValueError(
            f"--val-ids {num_ids}: the training split has {len(cameras)} identities, {len(eligible)} of them "
            f"seen by two or more cameras; keep at least two identities for training"
        )
    rng = np.random.default_rng([seed, 11])
    held = set(int(p) for p in rng.choice(eligible, size=num_ids, replace=False))
    train = [r for r in records if r.pid not in held]
    query, gallery = [], []
    for pid in sorted(held):
        own = [r for r in records if r.pid == pid]
        camid = sorted(cameras[pid])[int(rng.integers(len(cameras[pid])))]
        from_cam = [r for r in own if r.camid == camid]
        chosen = from_cam[int(rng.integers(len(from_cam)))]
        query.append(chosen)
        gallery.extend(r for r in own if r is not chosen)
    return train, query, gallery


def parse_grid(text: str, cast=float) -> list:
    """``"0,0.1,1"`` -> ``[0.0, 0.1, 1.0]``; ``all`` as a K means the whole gallery (None)."""
    values = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        if cast is int and part.lower() == "all":
            values.append(None)
            continue
        try:
            values.append(cast(part))
        except ValueError:
            raise ValueError(f"bad grid value {part!r} in {text!r}") from None
    if not values:
        raise ValueError(f"empty grid {text!r}")
    return values
