"""No behaviour change: ``eval`` and ``explain`` give the numbers the previous code gave.

``tests/data/behaviour_pins.json`` was computed by the code before the refactor of issue 10 (script:
the lead's ``make_pins.py``, recorded in the closing note) on a tiny BatchNorm-calibrated random
mobilenet_v2 and a tiny generated Market-layout set, both rebuilt here from fixed seeds by
:func:`helpers.make_pinned_checkpoint_and_data`. Distances are compared to 1e-5 and metrics to 1e-6;
the smallest gap between two sorted feature distances of a query is 5.5e-5 and between two combined
CASN distances 9.7e-4, far above float32 rounding (~1e-7), so no ranking flips by rounding.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from casn_core.checkpoint import load_model
from casn_core.data import build_test_transform
from casn_core.images import load_rgb
from helpers import make_pinned_checkpoint_and_data

PINS = json.loads((Path(__file__).parent / "data" / "behaviour_pins.json").read_text())


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """The pins' checkpoint and dataset (same calls and seeds as when the pins were computed)."""
    return make_pinned_checkpoint_and_data(tmp_path_factory.mktemp("pins"))


def test_eval_numbers_are_unchanged(tiny):
    from casn_core.engine.evaluate import evaluate_model

    checkpoint, data = tiny
    model, _ = load_model(checkpoint)
    result = evaluate_model(model, str(data), 128, 64, topk=10, attention_weight=1.0, threshold=0.3, progress=False)
    expected = PINS["eval"]
    assert (result["num_query"], result["num_gallery"]) == (expected["num_query"], expected["num_gallery"])
    for ranking in ("feature", "casn"):
        for key, value in expected[ranking].items():
            assert result[ranking][key] == pytest.approx(value, abs=1e-6), (ranking, key)


def test_explain_numbers_are_unchanged(tiny):
    from casn_core.engine.inference import extract_tensors
    from casn_core.explanation import explain_maps

    checkpoint, data = tiny
    model, _ = load_model(checkpoint)
    name1, name2 = PINS["explain_images"]
    transform = build_test_transform(128, 64)
    images = torch.stack([transform(load_rgb(data / "query" / name1)), transform(load_rgb(data / "bounding_box_test" / name2))])
    maps, _ = extract_tensors(model, images)
    explanation = explain_maps(model, maps[0], maps[1], threshold=0.3).to_json()
    expected = PINS["explain"]
    for key in ("same_probability", "feature_distance", "attention_distance"):
        assert explanation[key] == pytest.approx(expected[key], abs=1e-5), key
    for key in ("rows1", "rows2", "aligned1", "aligned2"):
        np.testing.assert_allclose(explanation[key], expected[key], atol=1e-5, err_msg=key)
    assert explanation["span1"] == expected["span1"] and explanation["span2"] == expected["span2"]
    # the exact decomposition sums to the similarity that ranks: d_f^2 = 2 - 2 s
    assert explanation["feature_distance"] ** 2 == pytest.approx(2 - 2 * explanation["similarity"], abs=1e-5)
    assert float(np.sum(explanation["similarity_map1"])) == pytest.approx(explanation["similarity"], abs=1e-5)
    assert float(np.sum(explanation["similarity_map2"])) == pytest.approx(explanation["similarity"], abs=1e-5)
