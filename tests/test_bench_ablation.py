"""Smoke test of bench/ablation.py and bench/attention_quality.py on tiny settings (no real data needed)."""
from __future__ import annotations

import json
import math

import pytest
import torch

from casn_core.attention import quality as aq
from helpers import load_bench, torch_threads

ablation = load_bench("ablation")


def test_helpers():
    stat = ablation.mean_std([0.5, 0.7, 0.6])
    assert stat["n"] == 3 and math.isclose(stat["mean"], 0.6) and math.isclose(stat["std"], 0.1)
    assert ablation.mean_std([0.3])["std"] == 0.0
    assert aq.area_under([0.0, 0.5], [1.0, 0.0]) == pytest.approx(0.5)
    assert aq.area_under([0.0, 0.25, 0.5], [1.0, 1.0, 1.0]) == pytest.approx(1.0)
    # mass inside: all mass on the masked half
    maps = torch.zeros(1, 4, 2)
    maps[0, :2] = 1.0
    masks = torch.zeros(1, 4, 2)
    masks[0, :2] = 1.0
    assert float(aq.mass_inside(maps, masks)[0]) == pytest.approx(1.0)
    # an all-zero map (a random-init model can give one) has no preference: it counts as uniform,
    # so its share is the mask's area fraction, never 0/0
    assert float(aq.mass_inside(torch.zeros(1, 4, 2), masks)[0]) == pytest.approx(0.5)
    # deletion masks are nested and have the asked-for size
    dm = aq.deletion_masks(torch.rand(3, 4, 2), (8, 4), [0.0, 0.25, 0.5])
    assert dm.shape == (3, 3, 8, 4)
    assert dm[0].sum() == 0 and float(dm[1].sum()) == 3 * 8 and float(dm[2].sum()) == 3 * 16
    assert bool((dm[2] >= dm[1]).all())


@pytest.fixture
def one_thread():
    """Tiny models run faster on one thread; the caller's count is restored afterwards."""
    with torch_threads(1):
        yield


@pytest.mark.slow
def test_ablation_tiny(tmp_path, capsys, one_thread):
    argv = ["--datasets", "synth,mars", "--rows", "ide;ide,ia,sa", "--seeds", "0,1", "--backbone", "mobilenet_v2",
            "--pretrained", "none", "--height", "64", "--width", "32", "--batch-size", "4", "--epochs", "1",
            "--pairs-per-epoch", "8", "--amp", "none", "--synth-ids", "12", "--synth-cameras", "2",
            "--synth-images-per-id", "4", "--quality-pairs", "6", "--deletion-pairs", "3", "--deletion-steps", "2",
            "--mars-train", str(tmp_path / "absent"), "--cache", str(tmp_path / "cache"),
            "--out", str(tmp_path / "results")]
    payload = ablation.main(argv)
    out = capsys.readouterr()
    assert "skipping dataset 'mars'" in out.err
    lines = [json.loads(line) for line in out.out.splitlines() if line.startswith("{")]
    assert len(lines) == 4 and {line["losses"] for line in lines} == {"ide", "ide,ia,sa"}
    assert len(payload["runs"]) == 4 and payload["skipped"]
    summary = payload["summary"]["synth"]
    assert set(summary) == {"ide", "ide,ia,sa"}
    assert summary["ide,ia,sa"]["delta_vs_ide"]["feature_mAP"]["n"] == 2
    for run in payload["runs"]:
        assert 0 <= run["feature"]["mAP"] <= 1 and 0 <= run["casn"]["rank1"] <= 1
        q = run["quality"]
        assert 0 <= q["ia_mass_in_mask"] <= 1 and 0 <= q["sa_mass_in_mask"] <= 1
        assert 0 < q["uniform_mass_in_mask"] < 1
        assert len(q["deletion_curve"]) == len(q["deletion_fractions"]) == 3
        assert q["deletion_fractions"][-1] == pytest.approx(0.5)
        assert all(0 <= p <= 1 for p in q["deletion_curve"] + q["deletion_curve_random"])
        assert run["elapsed_s"] >= run["train_s"] > 0
    results = tmp_path / "results"
    table = (results / "ablation.md").read_text()
    assert "| IDE |" in table and "CASN (IDE + IA + SA)" in table and "Attention quality" in table
    assert "Skipped" in table
    # the table is regenerated from the JSON alone
    (results / "ablation.md").unlink()
    ablation.main(argv + ["--table-only"])
    assert (results / "ablation.md").read_text() == table
    # --reuse keeps finished runs (no training)
    again = ablation.main(argv + ["--reuse"])
    assert all(run.get("reused") for run in again["runs"])
