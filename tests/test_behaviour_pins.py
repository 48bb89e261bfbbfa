"""No behaviour change: ``eval`` and ``explain`` give the numbers the previous code gave.

``tests/data/behaviour_pins.json`` was computed by the code before the first structural refactor (script:
the lead's ``make_pins.py``, recorded in the closing note) on a tiny BatchNorm-calibrated random
mobilenet_v2 and a tiny generated Market-layout set, both rebuilt here from fixed seeds by
:func:`helpers.make_pinned_checkpoint_and_data`.

Tolerances. The numbers come out of a float32 CNN forward pass whose reductions are split by the number
of threads and vectorised by the CPU's instruction set, so the low bits differ between machines: against
the pins, measured on this set at 1 to 5 threads and with AVX-512, AVX2 and scalar (ATEN_CPU_CAPABILITY=
default) kernels, the raw Siamese-attention rows (values 6 to 10) moved by up to 3.6e-6 of their largest
value, the unit-range aligned vectors by up to 1.4e-5, d_f by 1.6e-6 and d_a by 2.4e-6. So raw rows are
compared relative to their scale (2e-5 of the largest row), unit-range values and distances absolutely
(1e-4 and 2e-5: each several times the largest drift seen, and far below what a change of behaviour, e.g.
another threshold or span, moves them: 1e-2 and more). Metrics are compared to 1e-6: they are ratios of
ranks, exact unless a ranking flips, and the smallest gap between two sorted feature distances of a query
is 5.5e-5 and between two combined CASN distances 9.7e-4, far above that drift. (Two pairs of this set
have a BCE-head unit within rounding of its switch, so their indicator can flip with the kernels, see
``test_app_pins.py``; neither moves a true match, so eval's metrics hold on all the kernels above.)
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
from helpers import assert_close_scaled, make_pinned_checkpoint_and_data

pytestmark = pytest.mark.numeric

PINS = json.loads((Path(__file__).parent / "data" / "behaviour_pins.json").read_text())


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """The pins' checkpoint and dataset (same calls and seeds as when the pins were computed)."""
    return make_pinned_checkpoint_and_data(tmp_path_factory.mktemp("pins"))


def test_eval_numbers_are_unchanged(tiny):
    from casn_core.engine.evaluate import evaluate_model

    checkpoint, data = tiny
    model, _ = load_model(checkpoint)
    from casn_core.engine.extraction import ExtractionConfig
    from casn_core.rankings import RankingSpec

    result = evaluate_model(model, str(data), ExtractionConfig((128, 64), progress=False),
                            [RankingSpec("casn", 1.0, 10, 0.3)])
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
    for key, tolerance in (("same_probability", 1e-5), ("feature_distance", 2e-5), ("attention_distance", 1e-4)):
        assert explanation[key] == pytest.approx(expected[key], abs=tolerance), key
    for key in ("rows1", "rows2"):  # raw values: relative to their scale (module docstring)
        assert_close_scaled(explanation[key], expected[key], rtol=2e-5, err_msg=key)
    for key in ("aligned1", "aligned2"):  # unit range
        np.testing.assert_allclose(explanation[key], expected[key], rtol=0, atol=1e-4, err_msg=key)
    assert explanation["span1"] == expected["span1"] and explanation["span2"] == expected["span2"]
    # the exact decomposition sums to the similarity that ranks: d_f^2 = 2 - 2 s (one run's own float32
    # numbers of size ~1, so 1e-5 is ~100 float32 steps of rounding between two summation orders)
    assert explanation["feature_distance"] ** 2 == pytest.approx(2 - 2 * explanation["similarity"], abs=1e-5)
    assert float(np.sum(explanation["similarity_map1"])) == pytest.approx(explanation["similarity"], abs=1e-5)
    assert float(np.sum(explanation["similarity_map2"])) == pytest.approx(explanation["similarity"], abs=1e-5)
