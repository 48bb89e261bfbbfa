"""``casn eval``: the checkpoint's validated weight is the default, and ``--json`` carries the pair signals."""
from __future__ import annotations

import json

import pytest
import torch

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
    assert (result["tuned"]["attention_weight"], result["tuned"]["topk"]) == (0.0, 10)
    assert result["casn"]["ranking"] == "tuned" and result["casn"]["topk"] == 10
    assert (result["paper"]["attention_weight"], result["paper"]["topk"]) == (1.0, "all")
    printed = capsys.readouterr().out
    assert "paper (w = 1, K = all)" in printed and "tuned (w = 0, K = 10)" in printed
    # w = 0: the combined distance is the normalised feature distance, so both rankings score the same
    for key in ("rank1", "mAP", "mINP"):
        assert result["casn"][key] == pytest.approx(result["feature"][key], abs=1e-12)
    signals = result["pair_signals"]
    for key in ("auc_feature_distance", "auc_attention_distance", "auc_same_probability"):
        assert 0.0 <= signals[key] <= 1.0
    assert 0.0 <= signals["p_same_pos_mean"] <= 1.0 and 0.0 <= signals["p_same_neg_mean"] <= 1.0
    assert signals["sampled"] is False and signals["num_pairs_positive"] > 0

    # w given alone: a custom ranking with the paper's K (all), not the K tuned for another w
    overridden = _eval(tuned, data, tmp_path, "--attention-weight", "1", "--no-pair-signals")
    assert overridden["casn"]["ranking"] == "custom" and "pair_signals" not in overridden
    assert (overridden["custom"]["attention_weight"], overridden["custom"]["topk"]) == (1.0, "all")
    for key in ("rank1", "mAP", "mINP"):  # the same ranking as the paper's, scored once
        assert overridden["custom"][key] == overridden["paper"][key]


def test_eval_without_a_stored_weight_uses_the_papers(tiny, tmp_path, capsys):
    checkpoint, data = tiny
    result = _eval(checkpoint, data, tmp_path, "--no-pair-signals")
    assert "tuned" not in result and result["casn"]["ranking"] == "paper"
    assert (result["casn"]["attention_weight"], result["casn"]["topk"]) == (1.0, "all")
    for name in ("feature", "paper", "casn"):
        assert set(result[name]) >= {"rank1", "rank5", "rank10", "mAP", "mINP"}
    bounded = _eval(checkpoint, data, tmp_path, "--no-pair-signals", "--paper-topk", "5")
    assert bounded["paper"]["topk"] == 5 and "paper (w = 1, K = 5)" in capsys.readouterr().out


def test_paper_ranking_with_k_all_in_query_groups_equals_one_pass(tiny):
    """K = all is scored in query groups of bounded memory; the blocks equal the single pass's."""
    from casn_core.checkpoint import checkpoint_info, load_model
    from casn_core.engine.pair_signals import dataset_caches
    from casn_core.compute import Compute
    from casn_core.engine.rerank import grouped_casn_blocks, iter_casn_distmat
    from casn_core.rankings import paper_ranking

    checkpoint, data = tiny
    model, _ = load_model(checkpoint)
    query, gallery = dataset_caches(model, str(data), (128, 64))
    whole = torch.cat([b for _, b in iter_casn_distmat(model, query, gallery, paper_ranking())])
    # a state budget of a few queries' pairs: several groups, each reading the gallery maps again
    grouped = list(grouped_casn_blocks(model, query, gallery, paper_ranking(), Compute(state_bytes=20_000)))
    starts = [start for start, _ in grouped]
    assert len(starts) > 2 and starts == sorted(starts)
    assert torch.equal(torch.cat([b for _, b in grouped]), whole)


def test_tuned_k_all_survives_the_checkpoint_round_trip(tiny, tmp_path):
    from casn_core.checkpoint import checkpoint_info
    from casn_core.engine.tune import TuneResult

    checkpoint, _ = tiny
    payload = load_checkpoint(checkpoint)
    payload["ranking"] = TuneResult(0.5, None, 0.6, 0.7, 0.5, 0.6).ranking_entry("test")
    path = save_checkpoint(tmp_path / "all.pt", payload)
    info = checkpoint_info(load_checkpoint(path))
    assert info.tuned is not None and (info.tuned.attention_weight, info.tuned.topk) == (0.5, None)
    assert info.default_ranking().label() == "tuned (w = 0.5, K = all)"
    assert load_checkpoint(path)["ranking"]["topk"] == "all"


def test_pair_signals_sample_a_large_set_with_every_true_match_of_the_sampled_queries(tiny):
    from casn_core.checkpoint import checkpoint_info, load_model
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


def test_k_reciprocal_adds_its_own_row_scored_from_the_features(tiny, tmp_path, capsys):
    from casn_core.checkpoint import checkpoint_info, load_model
    from casn_core.data import load_market
    from casn_core.engine.evaluator import summarise
    from casn_core.engine.extraction import ExtractionConfig, extract_split
    from casn_core.k_reciprocal import KReciprocalConfig, k_reciprocal_distance
    from casn_core.metrics import evaluate_rank

    checkpoint, data = tiny
    result = _eval(checkpoint, data, tmp_path, "--no-pair-signals", "--in-memory",
                   "--k-reciprocal", "--kr-k1", "6", "--kr-k2", "3")
    row = result["feature_k_reciprocal"]
    assert (row["k1"], row["k2"], row["lambda_value"]) == (6, 3, 0.3)
    assert "feature + k-reciprocal (k1 6, k2 3, lambda 0.3)" in capsys.readouterr().out
    # the same numbers as re-ranking the extracted features by hand and scoring the whole matrix
    model, payload = load_model(checkpoint, torch.device("cpu"))
    splits = load_market(data, splits=("query", "gallery"))
    config = ExtractionConfig(checkpoint_info(payload).input_size, progress=False)
    query = extract_split(model, list(splits.query), config)
    gallery = extract_split(model, list(splits.gallery), config)
    reranked = k_reciprocal_distance(query.features, gallery.features, KReciprocalConfig(k1=6, k2=3))
    expected = summarise(evaluate_rank(reranked, query.pids, gallery.pids, query.camids, gallery.camids,
                                       max_rank=min(50, len(gallery.pids))))
    for key in ("rank1", "mAP", "mINP"):
        assert row[key] == pytest.approx(expected[key], abs=1e-9)
    assert "feature_k_reciprocal" not in _eval(checkpoint, data, tmp_path, "--no-pair-signals", "--in-memory")
