"""The app says which ranking it shows and why (the weight w and where it comes from), and what its model lacks."""
from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

from app.markdown import NO_HEAD_NOTE, model_info, model_line, ranking_choice


def _state(weight: float, stored: float, source: str) -> SimpleNamespace:
    return SimpleNamespace(attention_weight=weight, topk=10,
                           info=SimpleNamespace(attention_weight=stored, attention_weight_source=source))


def test_ranking_choice_names_the_weight_and_its_source():
    tuned = ranking_choice(_state(0.0, 0.0, "casn tune on a validation set"))
    assert "w = 0 (casn tune on a validation set)" in tuned and "the feature ranking" in tuned
    paper = ranking_choice(_state(1.0, 1.0, "the paper's default"))
    assert "w = 1 (the paper's default)" in paper and "top 10" in paper
    assert "set with --attention-weight" in ranking_choice(_state(0.5, 0.0, "casn tune"))


def _model_state(trained: bool) -> SimpleNamespace:
    info = SimpleNamespace(attention_weight=1.0, attention_weight_source="the paper's default", bce_head_trained=trained)
    return SimpleNamespace(checkpoint_path=Path("osnet.pth"), backbone="torchreid:osnet_x0_25", attention_weight=1.0,
                           topk=10, data_root=Path("/data/Market-1501"), info=info, cache_hit=True,
                           input_size=(256, 128), threshold=0.3, cache_file=None, map_dtype="float32")


def test_a_model_without_a_trained_bce_head_says_so_and_how_to_train_one():
    bare, trained = _model_state(False), _model_state(True)
    assert NO_HEAD_NOTE in model_line(bare, None) and "casn fit-head" in NO_HEAD_NOTE
    assert NO_HEAD_NOTE in model_info(bare)
    assert NO_HEAD_NOTE not in model_line(trained, None) and NO_HEAD_NOTE not in model_info(trained)
