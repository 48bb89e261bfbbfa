"""``casn eval``: the checkpoint's validated weight is the default, and ``--json`` carries the pair signals."""
from __future__ import annotations

import json

import pytest

from casn_core.checkpoint import load_checkpoint, save_checkpoint
from casn_core.cli import main as cli_main
from helpers import make_pinned_checkpoint_and_data


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_pinned_checkpoint_and_data(tmp_path_factory.mktemp("evalcli"))


def _eval(checkpoint, data, tmp_path, *extra) -> dict:
    out = tmp_path / "eval.json"
    assert cli_main(["eval", "--checkpoint", str(checkpoint), "--data", str(data), "--device", "cpu",
                     "--store-dir", str(tmp_path / "store"), "--json", str(out), *extra]) == 0
    return json.loads(out.read_text())


def test_eval_uses_the_stored_weight_and_reports_pair_signals(tiny, tmp_path, capsys):
    checkpoint, data = tiny
    payload = load_checkpoint(checkpoint)
    payload["ranking"] = {"attention_weight": 0.0, "topk": 10, "source": "test"}
    tuned = save_checkpoint(tmp_path / "tuned.pt", payload)

    result = _eval(tuned, data, tmp_path)
    assert result["casn_settings"]["attention_weight"] == 0.0 and result["casn_settings"]["topk"] == 10
    assert "w = 0 (test)" in capsys.readouterr().err
    # w = 0: the combined distance is the normalised feature distance, so both rankings score the same
    for key in ("rank1", "mAP", "mINP"):
        assert result["casn"][key] == pytest.approx(result["feature"][key], abs=1e-12)
    signals = result["pair_signals"]
    for key in ("auc_feature_distance", "auc_attention_distance", "auc_same_probability"):
        assert 0.0 <= signals[key] <= 1.0
    assert 0.0 <= signals["p_same_pos_mean"] <= 1.0 and 0.0 <= signals["p_same_neg_mean"] <= 1.0
    assert signals["sampled"] is False and signals["num_pairs_positive"] > 0

    overridden = _eval(tuned, data, tmp_path, "--attention-weight", "1", "--no-pair-signals")
    assert overridden["casn_settings"]["attention_weight"] == 1.0 and "pair_signals" not in overridden


def test_eval_without_a_stored_weight_uses_the_papers(tiny, tmp_path):
    checkpoint, data = tiny
    result = _eval(checkpoint, data, tmp_path, "--no-pair-signals")
    assert result["casn_settings"]["attention_weight"] == 1.0 and result["casn_settings"]["topk"] == 100


def test_pair_signals_sample_a_large_set_with_every_true_match_of_the_sampled_queries(tiny):
    from casn_core.checkpoint import load_model
    from casn_core.engine.pair_signals import dataset_caches, sampled_pair_signals

    checkpoint, data = tiny
    model, _ = load_model(checkpoint)
    query, gallery = dataset_caches(model, str(data), (128, 64))
    full = sampled_pair_signals(model, query, gallery)
    assert full["sampled"] is False and full["num_queries"] == len(query)
    small = sampled_pair_signals(model, query, gallery, max_queries=4, max_gallery=10, seed=3)
    again = sampled_pair_signals(model, query, gallery, max_queries=4, max_gallery=10, seed=3)
    assert small == again  # seeded
    assert small["sampled"] is True and small["num_queries"] == 4 and small["num_gallery"] >= 1
    assert small["num_pairs_positive"] > 0 and small["num_pairs_negative"] > 0
