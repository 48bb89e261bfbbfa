"""No behaviour change in the app (issue 10): its rankings and dataset numbers equal the pinned ones.

``tests/data/behaviour_pins.json`` was computed by the code before the metrics and app refactor
(``app_rankings``: ``ranking_dict`` of every query, first 5 entries; ``app_summary``) on a tiny
MobileNetV2 checkpoint (random init, BatchNorm statistics estimated on the set) and a tiny generated
set, both regenerated here by the same helper (``tests/helpers.py``) with the same seeds. The new service must give the same order, first true rank and AP of every query
and the same dataset numbers (distances to 1e-5, metrics to 1e-6).
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from helpers import make_pinned_checkpoint_and_data

PINS = Path(__file__).resolve().parent / "data" / "behaviour_pins.json"
DISTANCE_KEYS = ("score", "feature_distance", "attention_distance", "feature_part", "attention_part")


@pytest.fixture(scope="module")
def pinned_service(tmp_path_factory):
    import torch

    from app.server import build_service

    root = tmp_path_factory.mktemp("pins")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the pins were made
    try:
        checkpoint, data = make_pinned_checkpoint_and_data(root)
        # float32 maps, as the old code kept them for a set this small
        service = build_service(checkpoint, data, root / "cache", topk=10, progress=False, log=lambda *_: None,
                                map_dtype="float32", background_summary=False)
    finally:
        torch.set_num_threads(threads)
    return service, json.loads(PINS.read_text())


def test_rankings_are_the_pinned_ones(pinned_service):
    from app.ranking import ranking_dict

    service, pins = pinned_service
    assert len(pins["app_rankings"]) == len(service.state.query)
    for pinned in pins["app_rankings"]:
        q = pinned["query"]["index"]
        got = ranking_dict(service.state, service.ranking(q), limit=5)
        assert got["query"] == pinned["query"]
        assert got["first_true_rank"] == pinned["first_true_rank"], q
        if pinned["ap"] is None:
            assert got["ap"] is None, q
        else:
            assert got["ap"] == pytest.approx(pinned["ap"], abs=1e-6), q
        for key in ("failed", "excluded_same_camera", "topk_attention"):
            assert got[key] == pinned[key], (q, key)
        assert [e["gallery_index"] for e in got["ranking"]] == [e["gallery_index"] for e in pinned["ranking"]], q
        for mine, old in zip(got["ranking"], pinned["ranking"]):
            assert (mine["match"], mine["name"], mine["reranked_with_attention"]) == \
                (old["match"], old["name"], old["reranked_with_attention"])
            for key in DISTANCE_KEYS:
                if old[key] is None:
                    assert mine[key] is None, (q, key)
                else:
                    assert mine[key] == pytest.approx(old[key], abs=1e-5), (q, key)


def test_dataset_numbers_are_the_pinned_ones(pinned_service):
    service, pins = pinned_service
    pinned, summary = pins["app_summary"], service.summary
    assert summary.num_valid == pinned["num_valid"]
    for key in ("casn", "feature"):
        mine, old = getattr(summary, key), pinned[key]
        for metric in ("rank1", "rank5", "rank10", "mAP"):
            assert mine[metric] == pytest.approx(old[metric], abs=1e-6), (key, metric)
        assert mine["cmc"] == pytest.approx(old["cmc"], abs=1e-6), key
    for stats, (first, ap) in zip(summary.per_query, pinned["per_query"]):
        assert stats.first_true_rank == first
        assert (stats.ap is None and ap is None) or stats.ap == pytest.approx(ap, abs=1e-6)
