"""The app says which ranking it shows and why (issue 11: the weight w and where it comes from)."""
from __future__ import annotations

from types import SimpleNamespace

from app.markdown import ranking_choice


def _state(weight: float, stored: float, source: str) -> SimpleNamespace:
    return SimpleNamespace(attention_weight=weight, topk=10,
                           info=SimpleNamespace(attention_weight=stored, attention_weight_source=source))


def test_ranking_choice_names_the_weight_and_its_source():
    tuned = ranking_choice(_state(0.0, 0.0, "casn tune on a validation set"))
    assert "w = 0 (casn tune on a validation set)" in tuned and "the feature ranking" in tuned
    paper = ranking_choice(_state(1.0, 1.0, "the paper's default"))
    assert "w = 1 (the paper's default)" in paper and "top 10" in paper
    assert "set with --attention-weight" in ranking_choice(_state(0.5, 0.0, "casn tune"))
