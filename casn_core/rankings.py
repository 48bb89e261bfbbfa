"""The rankings CASN reports, each named by what it is (paper sec. 4, "Evaluation Protocol").

- ``feature``: the gallery ordered by the feature distance ``d_f`` alone.
- ``paper``: ``d = norm(d_f) + w norm(d_a)`` with the paper's w = 1 over every query-gallery pair
  (K = all; the paper names no K). On a CPU the user may bound K; the bound is printed with the row.
- ``tuned``: the (w, K) pair validated on held-out training identities and stored in the checkpoint
  (``casn tune``, ``train --val-ids``). Ours, not the paper's.
- ``custom``: what the user asked for on the command line.

``K`` re-ranks the top K gallery images by ``d_f`` with the combined distance and leaves the rest in
feature order behind them (docs/design.md, sec. 3). ``topk=None`` means all.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from casn_core.attention.alignment import DEFAULT_THRESHOLD

PAPER_WEIGHT = 1.0
"""The paper's w (sec. 4)."""


def parse_topk(value: Any) -> int | None:
    """``"all"`` (any case) or ``None`` -> None (every gallery image); otherwise a positive int."""
    if value is None or str(value).strip().lower() == "all":
        return None
    topk = int(value)
    if topk < 1:
        raise ValueError(f"K (the re-ranking depth) must be >= 1 or 'all', got {value!r}")
    return topk


def topk_to_json(topk: int | None) -> int | str:
    """The JSON spelling of K: an integer, or ``"all"``."""
    return "all" if topk is None else int(topk)


@dataclass(frozen=True)
class RankingSpec:
    """One ranking: its name, w, K (``None`` = all) and the alignment threshold of ``d_a``."""

    name: str
    attention_weight: float
    topk: int | None
    threshold: float = DEFAULT_THRESHOLD

    def __post_init__(self) -> None:
        if self.attention_weight < 0:
            raise ValueError(f"the attention weight w must be >= 0, got {self.attention_weight}")
        parse_topk(self.topk)

    @classmethod
    def custom(cls, attention_weight: float, topk: int | None,
               threshold: float = DEFAULT_THRESHOLD) -> "RankingSpec":
        """The ``custom`` ranking of a caller's own (w, K): a grid point, a slider, a benchmark's flags."""
        return cls("custom", float(attention_weight), topk, float(threshold))

    def effective_topk(self, num_gallery: int) -> int:
        """K as a number for a gallery of ``num_gallery`` images."""
        return num_gallery if self.topk is None else min(self.topk, num_gallery)

    def label(self) -> str:
        """``"paper (w = 1, K = all)"``: the row name of a results table."""
        return f"{self.name} (w = {self.attention_weight:g}, K = {topk_to_json(self.topk)})"

    def settings(self) -> dict[str, Any]:
        """The JSON fields that say how the ranking was made."""
        return {"attention_weight": float(self.attention_weight), "topk": topk_to_json(self.topk),
                "threshold": float(self.threshold)}


def paper_ranking(threshold: float = DEFAULT_THRESHOLD, topk: int | None = None) -> RankingSpec:
    """The paper's ranking: w = 1 on every pair (``topk`` bounds it where the user asks)."""
    return RankingSpec("paper", PAPER_WEIGHT, topk, threshold)


def stored_ranking(entry: dict | None, threshold: float = DEFAULT_THRESHOLD) -> RankingSpec | None:
    """The ``tuned`` ranking of a checkpoint's ``payload["ranking"]`` entry, or None when it has none.

    The tuner writes K as an int or ``"all"``; an entry with a weight and a null K (written before K =
    all had its own spelling) also means all.
    """
    if not entry or entry.get("attention_weight") is None:
        return None
    return RankingSpec("tuned", float(entry["attention_weight"]), parse_topk(entry.get("topk")), threshold)


def chosen_ranking(default: RankingSpec, attention_weight: float | None = None, topk: Any = None,
                   threshold: float | None = None) -> RankingSpec:
    """The ranking a command runs: ``default`` (the checkpoint's stored pair, else the paper's) when the
    user sets neither w nor K; otherwise ``custom``, whatever is not set taken from the paper's
    (w = 1, K = all), never from a pair tuned for another w."""
    threshold = default.threshold if threshold is None else float(threshold)
    if attention_weight is None and topk is None:
        return RankingSpec(default.name, default.attention_weight, default.topk, threshold)
    weight = PAPER_WEIGHT if attention_weight is None else float(attention_weight)
    return RankingSpec("custom", weight, parse_topk(topk), threshold)
