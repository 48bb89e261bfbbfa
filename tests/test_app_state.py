"""The app's start-up state: what it says about the cost of its default ranking."""
from __future__ import annotations

import logging

from app.state import SLOW_PAIRS_PER_QUERY, warn_if_slow
from casn_core.rankings import RankingSpec, paper_ranking


def test_the_paper_ranking_on_a_large_gallery_says_how_to_bound_k(caplog):
    caplog.set_level(logging.INFO, logger="app")
    warn_if_slow(paper_ranking(), 3368, 15913)  # Market-1501's test split
    assert len(caplog.records) == 1 and caplog.records[0].levelno == logging.WARNING
    assert "15913 pair attentions per query and 53.6 M" in caplog.messages[0] and "--topk" in caplog.messages[0]


def test_bounded_or_feature_rankings_and_small_galleries_say_nothing(caplog):
    caplog.set_level(logging.INFO, logger="app")
    warn_if_slow(RankingSpec("tuned", 0.5, 50), 3368, 15913)
    warn_if_slow(RankingSpec("feature", 0.0, None), 3368, 15913)
    warn_if_slow(paper_ranking(), 96, SLOW_PAIRS_PER_QUERY)  # the demo set's scale
    assert caplog.records == []
