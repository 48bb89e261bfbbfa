"""An explained pair as the app holds it: the library's :class:`PairExplanation` and what the app adds.

The library explains two feature maps (:func:`casn_core.explanation.explain_maps`); the app knows which
images they are, whether they show one identity, and where the gallery image ranks. The views read these
objects by attribute; only :meth:`ExplainedPair.to_json` makes a dict, for the JSON endpoints and the
exported files (keys and values as they always were: the library's keys, then ``kind``, ``query``,
``gallery``, ``true_match``, ``ranking_score`` and ``images`` where the pair has them).
"""
from __future__ import annotations

from dataclasses import dataclass

from app.core import PairExplanation

__all__ = ["DATASET_PAIR", "SEARCH_PAIR", "UPLOADED_PAIR", "ExplainedPair", "ImageRef", "PairExplanation", "ScorePart"]

DATASET_PAIR = "dataset pair"
UPLOADED_PAIR = "uploaded pair"
SEARCH_PAIR = "search pair"


@dataclass(frozen=True, kw_only=True)
class ImageRef:
    """One image of a pair: its name relative to the dataset (or gallery) folder and, for a labelled
    dataset image, its index in the query or gallery split, identity and camera (None where unknown)."""

    index: int | None = None
    name: str
    pid: int | None = None
    camid: int | None = None

    def to_json(self) -> dict:
        """``{"index", "name", "pid", "camid"}``, leaving out what the image does not have (a search
        pair's images have a name only)."""
        out = {"index": self.index, "name": self.name, "pid": self.pid, "camid": self.camid}
        return {key: value for key, value in out.items() if value is not None}


@dataclass(frozen=True)
class ScorePart:
    """Where a gallery image ranks for its query and what its ranking score is made of.

    Paper sec. 4 ranks by ``d = norm(d_f) + w norm(d_a)`` on the top K by ``d_f``, each part min-max
    normalised over those K candidates (docs/design.md, sec. 3). ``rank`` is 1-based of ``of`` ranked
    images, None for an image the Market-1501 protocol leaves out (same identity, query's camera).
    ``feature_part``, ``attention_part`` and ``total`` are set when the image was re-ranked with
    attention at w > 0; otherwise ``note`` says how it was ranked.
    """

    rank: int | None
    of: int | None = None
    reranked_with_attention: bool = False
    topk: int | None = None
    attention_weight: float | None = None
    feature_part: float | None = None
    attention_part: float | None = None
    total: float | None = None
    note: str | None = None

    def to_json(self) -> dict:
        """The fields in order; ``rank`` and ``reranked_with_attention`` always, the others when set."""
        out = {"rank": self.rank, "of": self.of, "reranked_with_attention": self.reranked_with_attention,
               "topk": self.topk, "attention_weight": self.attention_weight, "feature_part": self.feature_part,
               "attention_part": self.attention_part, "total": self.total, "note": self.note}
        return {key: value for key, value in out.items() if value is not None or key == "rank"}


@dataclass(frozen=True)
class ExplainedPair:
    """One explained pair: the library's explanation (both explainers) and the app's facts about it.

    ``kind``: :data:`DATASET_PAIR` (a query and a gallery image of the labelled set, with
    ``true_match`` and ``ranking_score``), :data:`UPLOADED_PAIR` (two uploads, named by ``images``) or
    :data:`SEARCH_PAIR` (a query against an image of an unlabelled gallery, both named only).
    """

    explanation: PairExplanation
    kind: str
    query: ImageRef | None = None
    gallery: ImageRef | None = None
    true_match: bool | None = None
    ranking_score: ScorePart | None = None
    images: tuple[str, str] | None = None
    """The uploaded files' names (as the user named them, never server paths)."""

    def to_json(self) -> dict:
        """The JSON of the endpoints and exports: :meth:`PairExplanation.to_json` and the app's keys."""
        out = self.explanation.to_json()
        out["kind"] = self.kind
        if self.query is not None:
            out["query"] = self.query.to_json()
        if self.gallery is not None:
            out["gallery"] = self.gallery.to_json()
        if self.true_match is not None:
            out["true_match"] = self.true_match
        if self.ranking_score is not None:
            out["ranking_score"] = self.ranking_score.to_json()
        if self.images is not None:
            out["images"] = list(self.images)
        return out
