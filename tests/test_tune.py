"""The validated ranking weight: validation split, weight search, stored choice."""
from __future__ import annotations

import argparse

import numpy as np
import pytest
import torch

from casn_core.checkpoint import checkpoint_info, load_checkpoint, save_checkpoint
from casn_core.data import ImageRecord
from casn_core.engine.inference import FeatureCache
from casn_core.commands.tune import add_arguments as add_tune_arguments
from casn_core.engine.tune import (
    TuneResult, parse_grid, pick_best, pick_one_se, tune_ranking, validation_split,
)
from casn_core.models import build_model


def _records(num_ids: int = 12, cameras: int = 3, per_camera: int = 2) -> list[ImageRecord]:
    out = []
    for pid in range(1, num_ids + 1):
        cams = 1 if pid % 5 == 0 else cameras  # every fifth identity is seen by one camera only
        for cam in range(1, cams + 1):
            for k in range(per_camera):
                out.append(ImageRecord(f"{pid:04d}_c{cam}s1_{len(out):06d}_00.jpg", pid, cam, pid - 1))
    return out


def test_validation_split_shares_no_identity_with_training_and_is_seeded():
    records = _records()
    train, query, gallery = validation_split(records, 4, seed=0)
    held = {r.pid for r in query}
    assert len(held) == 4 and {r.pid for r in gallery} == held
    assert held.isdisjoint({r.pid for r in train})
    assert len(train) + len(query) + len(gallery) == len(records)
    for q in query:  # every query has a true match from another camera
        assert any(g.pid == q.pid and g.camid != q.camid for g in gallery)
        assert q not in gallery
    assert all(len({r.camid for r in records if r.pid == pid}) >= 2 for pid in held)
    assert validation_split(records, 4, seed=0) == (train, query, gallery)
    with pytest.raises(ValueError, match="--val-ids"):
        validation_split(records, 11, seed=0)
    with pytest.raises(ValueError, match="--val-ids"):
        validation_split(records, 0, seed=0)


def test_pick_best_takes_the_highest_validation_map_then_rank1_then_smaller_w():
    curve = [
        {"attention_weight": 0.0, "topk": 10, "mAP": 0.70, "rank1": 0.80},
        {"attention_weight": 0.3, "topk": 10, "mAP": 0.74, "rank1": 0.80},
        {"attention_weight": 1.0, "topk": 10, "mAP": 0.74, "rank1": 0.80},
        {"attention_weight": 0.5, "topk": 20, "mAP": 0.74, "rank1": 0.82},
    ]
    assert pick_best(curve) is curve[3]
    assert pick_best(curve[:3]) is curve[1]
    with pytest.raises(ValueError):
        pick_best([])


def _caches(num_ids: int = 6, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    pids = np.repeat(np.arange(num_ids), 3)
    camids = np.tile(np.arange(3), num_ids)
    maps = torch.relu(torch.randn(len(pids), 8, 6, 3, generator=gen))
    maps += 0.5 * torch.relu(torch.randn(num_ids, 8, 6, 3, generator=gen))[pids]
    feats = maps.mean(dim=(2, 3))
    cache = FeatureCache(maps, feats, pids, camids, [f"{i}.jpg" for i in range(len(pids))])
    first = camids == 0
    take = lambda m: FeatureCache(cache.maps[m], cache.features[m], pids[m], camids[m], [])  # noqa: E731
    return take(first), take(~first)


def test_weight_search_includes_zero_and_picks_the_best_validation_map():
    torch.manual_seed(0)
    model = build_model("resnet18", num_classes=4).eval()
    model.bce_head = type(model.bce_head)(8, 2).eval()  # the head of 8-channel maps
    query, gallery = _caches()
    result = tune_ranking(model, query, gallery, threshold=0.3, weights=(0.5, 2.0), topks=(3, None), rule="best")
    weights = {row["attention_weight"] for row in result.curve}
    assert weights == {0.0, 0.5, 2.0}
    assert len(result.curve) == 6
    best = max(row["mAP"] for row in result.curve)
    assert result.mAP == best
    zero = [row for row in result.curve if row["attention_weight"] == 0.0]
    assert all(abs(row["mAP"] - result.feature_mAP) < 1e-12 for row in zero)  # w = 0 is the feature ranking
    assert result.mAP >= result.feature_mAP
    assert all(abs(row["gain"] - (row["mAP"] - result.feature_mAP)) < 1e-9 for row in result.curve)
    safe = tune_ranking(model, query, gallery, threshold=0.3, weights=(0.5, 2.0), topks=(3, None))
    assert safe.rule == "one-se" and safe.mAP >= safe.feature_mAP - 1e-12
    with pytest.raises(ValueError, match="rule"):
        tune_ranking(model, query, gallery, threshold=0.3, rule="worst")


def test_one_se_rule_keeps_w_0_unless_the_gain_is_beyond_noise():
    rows = [{"attention_weight": w, "topk": 10, "mAP": 0.0, "rank1": 0.0} for w in (0.0, 0.1, 1.0)]
    base = np.linspace(0.2, 0.9, 40)
    noisy = base + np.where(np.arange(40) % 2 == 0, 0.05, -0.04)  # +0.005 mean, std 0.045: noise
    clear = base + 0.05  # every query gains
    for row, ap in zip(rows, (base, noisy, clear)):
        row["mAP"] = float(ap.mean())
    assert pick_one_se(rows, [base, noisy, clear]) is rows[2]  # w = 1 beats both beyond noise
    rows[2]["mAP"], clear_below = float((base - 0.05).mean()), base - 0.05
    assert pick_best(rows) is rows[1]
    assert pick_one_se(rows, [base, noisy, clear_below]) is rows[0]  # best is w = 0.1, within noise of w = 0


def test_checkpoint_without_a_stored_weight_loads_with_w_1_and_tune_stores_it(tmp_path):
    model = build_model("resnet18", num_classes=4)
    payload = {"model": model.state_dict(), "model_config": model.config.to_dict(), "input_size": [64, 32]}
    path = save_checkpoint(tmp_path / "m.pt", payload)
    info = checkpoint_info(load_checkpoint(path))
    assert info.attention_weight == 1.0 and info.topk is None and "paper" in info.attention_weight_source
    result = TuneResult(0.3, 20, 0.5, 0.6, 0.4, 0.5, [{"attention_weight": 0.3, "topk": 20, "mAP": 0.5, "rank1": 0.6}])
    stored = dict(payload, ranking=result.ranking_entry("test"))
    save_checkpoint(path, stored)
    info = checkpoint_info(load_checkpoint(path))
    assert (info.attention_weight, info.topk, info.attention_weight_source) == (0.3, 20, "test")


def test_tune_command_help_names_validation_and_grids_parse():
    parser = argparse.ArgumentParser()
    add_tune_arguments(parser)
    assert "never the test split" in " ".join(parser.format_help().split()).lower()
    assert parse_grid("0, 0.5,1") == [0.0, 0.5, 1.0]
    assert parse_grid("10,all", int) == [10, None]
    with pytest.raises(ValueError, match="bad grid value"):
        parse_grid("1,x")
