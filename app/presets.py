"""Which ranking a request asks for: the named rankings ``casn eval`` reports, or any (w, K).

The named rankings are the library's (:mod:`casn_core.rankings`; paper sec. 4): ``feature`` (``d_f``
alone, w = 0), ``paper`` (w = 1 on every pair, K = all), ``tuned`` (the (w, K) pair validated and
stored in the checkpoint, :attr:`casn_core.checkpoint.CheckpointInfo.tuned`), and ``custom`` (any
other w and K). The app's default is the ranking it was started with (the checkpoint's stored
pair, else the paper's, or what ``--attention-weight`` / ``--topk`` said): requests that set
neither w nor K get it, through the same code path as before the controls existed.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from app.core import RankingSpec, chosen_ranking, paper_ranking, topk_to_json
from app.state import AppState
from app.validation import RequestError, whole_number

MAX_WEIGHT = 100.0
"""Largest w a request may ask for (beyond it the feature part no longer matters at all)."""

FEATURE, PAPER, TUNED, CUSTOM = "feature", "paper", "tuned", "custom"


@dataclass(frozen=True)
class Choice:
    """A ranking as the page offers it: its name, the button label, and the spec it stands for."""

    name: str
    label: str
    spec: RankingSpec


def effective_topk(state: AppState, topk: int | None) -> int:
    """K as a number for this gallery (``None``: all)."""
    return len(state.gallery) if topk is None else min(int(topk), len(state.gallery))


def key(state: AppState, spec: RankingSpec) -> tuple[float, int, float]:
    """What makes two rankings the same on this gallery: ``(w, K as a number, threshold)``."""
    return float(spec.attention_weight), effective_topk(state, spec.topk), float(spec.threshold)


def default_spec(state: AppState) -> RankingSpec:
    """The ranking the app was started with (``state.attention_weight``, ``state.topk``)."""
    topk = None if state.topk >= len(state.gallery) else int(state.topk)
    return named(state, RankingSpec(CUSTOM, float(state.attention_weight), topk, float(state.threshold)))


def is_default(state: AppState, spec: RankingSpec) -> bool:
    return key(state, spec) == key(state, default_spec(state))


def tuned_spec(state: AppState) -> RankingSpec | None:
    tuned = state.info.tuned
    if tuned is None:
        return None
    return RankingSpec(TUNED, float(tuned.attention_weight), tuned.topk, float(state.threshold))


def named(state: AppState, spec: RankingSpec) -> RankingSpec:
    """``spec`` under the name of the named ranking it equals on this gallery (else ``custom``).

    The checkpoint's tuned pair wins over the others (it is what the page opens on); any w = 0
    ranks by ``d_f`` alone whatever K is, so it is the ``feature`` ranking.
    """
    tuned = tuned_spec(state)
    if tuned is not None and key(state, tuned) == key(state, spec):
        name = TUNED
    elif spec.attention_weight == 0:
        name = FEATURE
    elif key(state, paper_ranking(spec.threshold)) == key(state, spec):
        name = PAPER
    else:
        name = CUSTOM
    return RankingSpec(name, float(spec.attention_weight), spec.topk, float(spec.threshold))


def choices(state: AppState) -> list[Choice]:
    """The named rankings of this checkpoint, in the order the page lists them (custom last)."""
    out = [Choice(FEATURE, "feature (d_f only)", RankingSpec(FEATURE, 0.0, None, state.threshold)),
           Choice(PAPER, "paper (w = 1, K = all)", paper_ranking(state.threshold))]
    tuned = tuned_spec(state)
    if tuned is not None:
        out.append(Choice(TUNED, f"tuned (w = {tuned.attention_weight:g}, K = {topk_to_json(tuned.topk)})", tuned))
    out.append(Choice(CUSTOM, "custom", default_spec(state)))
    return out


def preset(state: AppState, name: str) -> RankingSpec:
    """The spec of a named ranking (``custom``: the app's default, to be edited)."""
    for option in choices(state):
        if option.name == name:
            return option.spec
    raise RequestError(f"ranking must be one of {', '.join(c.name for c in choices(state))}; got {name!r}")


def parse_weight(value) -> float | None:
    """w from a request: None (not set) or a finite number in [0, MAX_WEIGHT]."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if isinstance(value, bool):
        raise RequestError(f"attention_weight must be a number, got {value!r}")
    try:
        weight = float(value)
    except (TypeError, ValueError):
        raise RequestError(f"attention_weight must be a number, got {value!r}") from None
    if not math.isfinite(weight) or not 0 <= weight <= MAX_WEIGHT:
        raise RequestError(f"attention_weight must be between 0 and {MAX_WEIGHT:g}, got {value!r}")
    return weight


def parse_k(value) -> int | str | None:
    """K from a request: None (not set), ``"all"``, or a whole number >= 1."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if isinstance(value, str) and value.strip().lower() == "all":
        return "all"
    k = whole_number(value, "topk")
    if k < 1:
        raise RequestError(f"topk (K, the re-ranking depth) must be >= 1 or 'all', got {value!r}")
    return k


def resolve(state: AppState, attention_weight=None, topk=None) -> RankingSpec:
    """The ranking a request asks for: the app's default when it sets neither w nor K; otherwise the
    library's rule (:func:`casn_core.rankings.chosen_ranking`: what is not set is the paper's)."""
    weight, k = parse_weight(attention_weight), parse_k(topk)
    if weight is None and k is None:
        return default_spec(state)
    return named(state, chosen_ranking(default_spec(state), weight, k, state.threshold))


def describe(state: AppState, spec: RankingSpec) -> str:
    """``"tuned (w = 0, K = 10)"``: how the page names a ranking."""
    return f"{spec.name} (w = {spec.attention_weight:g}, K = {topk_to_json(spec.topk)})"


def settings(state: AppState, spec: RankingSpec) -> dict:
    """The JSON that says which ranking an answer is: name, w, K (an integer or ``"all"``), threshold."""
    return {"name": spec.name, **spec.settings(), "topk_effective": effective_topk(state, spec.topk)}
