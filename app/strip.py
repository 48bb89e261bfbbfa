"""The ranked strip: one page of a query's ranking as captioned thumbnails, with one score for the whole list.

The score shown is the one that orders the list (paper sec. 4; docs/design.md, sec. 3): ``d_f`` when
w = 0 (the feature ranking), else the combined distance ``d`` that ``casn eval`` scores, whose top
K are ``norm(d_f) + w norm(d_a)`` (0 to 1 + w) and whose tail, beyond the top K by ``d_f``, follows
in feature order above all of them (``max + 1 + norm(d_f)``). The tail is drawn faded so the
re-ranked head stands apart; the first true match wears a gold ring.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np

from app import figures
from app.ranking import QueryRanking

PAGE = 10
"""Thumbnails per page of the strip."""


@dataclass(frozen=True)
class StripPage:
    """One page of the strip: thumbnails with captions, which ranks they are, and the note above them."""

    tiles: list
    page: int
    pages: int
    start: int
    stop: int
    label: str
    note: str
    total: int = 0

    @property
    def range_text(self) -> str:
        return f"ranks {self.start + 1}–{self.stop} of {self.total}" if self.stop > self.start else "nothing ranked"


def score_label(ranking: QueryRanking) -> str:
    """The name of the one score the strip shows: ``d_f`` for the feature ranking, else ``d``."""
    return "d_f" if ranking.attention_weight == 0 else "d"


def shown_score(ranking: QueryRanking, position: int) -> float:
    return float(ranking.feature_distance[position] if ranking.attention_weight == 0 else ranking.score[position])


def page_count(ranking: QueryRanking, size: int = PAGE) -> int:
    return max(1, math.ceil(len(ranking.order) / size))


def clamp_page(ranking: QueryRanking, page, size: int = PAGE) -> int:
    try:
        number = int(page)
    except (TypeError, ValueError):
        number = 0
    return min(max(number, 0), page_count(ranking, size) - 1)


def page_of_rank(rank: int | None, size: int = PAGE) -> int:
    """The page holding 1-based ``rank`` (page 0 when there is none)."""
    return 0 if rank is None else (int(rank) - 1) // size


def caption(ranking: QueryRanking, position: int) -> str:
    """``"#3 ✗ d 0.71"``: rank, true (✓) or wrong (✗) identity, and the score; a star on the first true match."""
    match = bool(ranking.matches[position])
    star = "★" if ranking.first_true_rank == position + 1 else ""
    return f"{star}#{position + 1} {'✓' if match else '✗'} {score_label(ranking)} {shown_score(ranking, position):.2f}"


def note(ranking: QueryRanking) -> str:
    """What the strip's score is and where the re-ranked head ends (two lines at most)."""
    if ranking.attention_weight == 0:
        return "Score **d_f**, the feature distance (w = 0: the feature ranking; nothing is re-ranked). ★ first true match."
    reranked = ranking.reranked_count
    junk = (f"; {ranking.junk_in_topk} of those K are same-camera images the protocol drops, so {reranked} shown "
            f"are re-ranked" if ranking.junk_in_topk else "")
    tail = (f" Ranks {reranked + 1}+ (faded) follow in d_f order, d = max + 1 + norm(d_f)."
            if reranked < len(ranking.order) else "")
    return (f"Score **d** = norm(d_f) + {ranking.attention_weight:g}·norm(d_a), each part min-max normalised over the "
            f"top K = {ranking.topk} by d_f, as `casn eval` re-ranks them{junk}.{tail} ★ first true match.")


def strip_page(ranking: QueryRanking, page, image: Callable[[int], np.ndarray], size: int = PAGE) -> StripPage:
    """Page ``page`` (0-based, clamped) of ``ranking``; ``image(gallery_index)`` gives a thumbnail's picture."""
    number = clamp_page(ranking, page, size)
    start = number * size
    stop = min(start + size, len(ranking.order))
    tiles = []
    for position in range(start, stop):
        g = int(ranking.order[position])
        colour = figures.GREEN if ranking.matches[position] else figures.RED
        thumb = figures.bordered(image(g), colour, height=128)
        if ranking.attention_weight > 0 and not ranking.reranked(position):
            thumb = figures.faded(thumb)
        if ranking.first_true_rank == position + 1:
            thumb = figures.ringed(thumb)
        tiles.append((thumb, caption(ranking, position)))
    return StripPage(tiles, number, page_count(ranking, size), start, stop, score_label(ranking), note(ranking),
                     total=len(ranking.order))
