"""What the page shows of each request, as plain data (numpy pictures, Markdown): no Gradio here."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from app.core import RankingSpec
from app.explain import PairView
from app.ranking import QueryRanking
from app.strip import StripPage
from app.verdict import Verdict


@dataclass
class QueryView:
    """What the Rankings tab shows of one query: its picture and numbers, one page of the strip, the table."""

    ranking: QueryRanking
    thumbnail: np.ndarray
    markdown: str
    strip: list[tuple[np.ndarray, str]]
    table: str
    page: StripPage | None = None
    moved: str = ""


@dataclass
class WhyView:
    """The failure tab (paper fig. 8a): the rank-1 wrong match and the best-ranked true match, and the verdict."""

    message: str
    wrong: PairView | None
    true: PairView | None
    contrastive: np.ndarray | None = None
    contrastive_text: str = ""
    verdict: Verdict | None = None


@dataclass
class CorrespondenceView:
    """A clicked location and where its features match: both shown images and the JSON."""

    query_image: np.ndarray
    gallery_image: np.ndarray
    markdown: str
    result: dict


@dataclass(frozen=True)
class PairRef:
    """Which pair is on screen, so that an export can re-create it: a dataset pair (under a ranking) or two uploads."""

    kind: str  # "dataset" or "upload"
    query_index: int = -1
    gallery_index: int = -1
    files: tuple[str, str] = ("", "")
    ranking: RankingSpec | None = None


@dataclass(frozen=True)
class UploadView:
    """An explained upload: the status line (with warnings), the pair view, previews of both inputs."""

    status: str
    pair: PairView
    ref: PairRef
    previews: tuple[np.ndarray, np.ndarray]
    shown: tuple[np.ndarray, np.ndarray]
    """Both images at the model input, magnified: where the point correspondence is clicked."""
