"""Smoke test of bench/explainer_faithfulness.py on a tiny generated dataset and a tiny random model."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from casn_core import build_model
from casn_core.data import SynthSpec, generate_dataset

BENCH = Path(__file__).resolve().parents[1] / "bench" / "explainer_faithfulness.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("explainer_faithfulness_bench", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("faithfulness") / "synth"
    generate_dataset(root, SynthSpec(num_ids=4, num_cameras=2, images_per_id=3, seed=3, height=64, width=32))
    return root


def test_bench_runs_and_curves_are_consistent(bench, tiny_data):
    torch.manual_seed(0)
    model = build_model("resnet18", num_classes=2, pretrained="none").eval()  # 2 training identities
    rows = bench.faithfulness(model, tiny_data, 64, 32, pairs=3, steps=2, seed=0, split="train")
    summary = rows[-1]
    assert summary["summary"] and summary["pairs"] == 3 and summary["fractions"] == [0.0, 0.5, 1.0]
    explainers = [row["explainer"] for row in rows[:-1]]
    assert explainers == list(bench.EXPLAINERS)
    for row in rows[:-1]:
        assert 0.0 <= row["mass_in_mask"] <= 1.0
        for name, q in row["quantities"].items():
            # nothing deleted / everything inserted is the intact image, for every explainer
            assert q["deletion_curve"][0] == pytest.approx(summary["intact"][name], abs=1e-5)
            assert q["insertion_curve"][-1] == pytest.approx(summary["intact"][name], abs=1e-5)
            # everything deleted is the same all-mean image for every explainer
            assert q["deletion_curve"][-1] == pytest.approx(rows[0]["quantities"][name]["deletion_curve"][-1], abs=1e-5)
            assert q["deletion_auc"] == pytest.approx(bench.area_under(summary["fractions"], q["deletion_curve"]), abs=1e-6)
            assert q["deletion_gap_se"] >= 0 and q["insertion_gap_se"] >= 0
    by_name = {row["explainer"]: row for row in rows[:-1]}
    assert by_name["uniform"]["mass_in_mask"] == pytest.approx(summary["mask_area"], abs=1e-6)
    assert by_name["random"]["quantities"]["similarity"]["deletion_gap_to_random"] == 0.0
    assert by_name["similarity"]["explains"] == "similarity"


def test_helpers(bench):
    assert bench.area_under([0.0, 0.5, 1.0], [1.0, 0.5, 0.0]) == pytest.approx(0.5)
    order = bench.pixel_order(torch.tensor([[[0.0, 1.0], [3.0, 2.0]]]), (2, 2), seed=0)
    assert order[0].tolist() == [2, 3, 1, 0]
    masks = bench.perturbation_masks(order, [0.0, 0.5], (2, 2))
    assert masks[1, 0].flatten().tolist() == [0.0, 0.0, 1.0, 1.0]
    zero = bench.mass_in_mask(torch.zeros(1, 2, 2), torch.tensor([[[1.0, 0.0], [0.0, 0.0]]]))
    assert float(zero[0]) == pytest.approx(0.25)


def test_bad_split_and_labels(bench, tiny_data):
    model = build_model("resnet18", num_classes=1, pretrained="none").eval()
    with pytest.raises(ValueError, match="split"):
        bench.faithfulness(model, tiny_data, 64, 32, split="val")
    with pytest.raises(ValueError, match="classifier has 1 classes"):
        bench.faithfulness(model, tiny_data, 64, 32, pairs=2, steps=1)
