"""``casn explain``: JSON with both explainers (Siamese attention and the exact similarity maps) and a figure."""
from __future__ import annotations

import json

import numpy as np
import pytest

from casn_core.cli import main as cli_main
from helpers import assert_close_scaled, make_pinned_checkpoint_and_data
from reference import gap_weights, reference_similarity


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_pinned_checkpoint_and_data(tmp_path_factory.mktemp("explain"))


@pytest.mark.numeric
def test_explain_json_has_both_explainers_and_exact_similarity(tiny, tmp_path):
    checkpoint, data = tiny
    query = sorted((data / "query").glob("*.jpg"))[0]
    gallery = sorted((data / "bounding_box_test").glob("*.jpg"))[3]
    out, figure = tmp_path / "pair.json", tmp_path / "pair.png"
    assert cli_main(["explain", "--checkpoint", str(checkpoint), "--image1", str(query), "--image2", str(gallery),
                     "--json", str(out), "--figure", str(figure), "--device", "cpu"]) == 0
    result = json.loads(out.read_text())
    for key in ("same_probability", "feature_distance", "attention_distance", "map1", "map2", "rows1", "rows2",
                "span1", "span2", "aligned1", "aligned2", "similarity", "similarity_map1", "similarity_map2",
                "similarity_rows1", "similarity_rows2"):
        assert key in result, key
    s = result["similarity"]
    map1, map2 = np.asarray(result["similarity_map1"]), np.asarray(result["similarity_map2"])
    assert map1.shape == np.asarray(result["map1"]).shape and map2.ndim == 2
    assert map1.sum() == pytest.approx(s, abs=1e-5) and map2.sum() == pytest.approx(s, abs=1e-5)
    assert result["feature_distance"] ** 2 == pytest.approx(2 - 2 * s, abs=1e-5)
    # against the decomposition's definition, in float64 from the two images' feature maps (mobilenet_v2
    # pools by GAP): s, the maps and the rows. Raw values relative to their scale: the float32 maps of
    # this run and of the CLI's differ by ~1e-6 relative (batch shapes, thread count), the float32
    # decomposition adds as much; 2e-5 leaves several times that, and a wrong weight or norm is off by 1e-2+
    import torch

    from casn_core.checkpoint import load_model
    from casn_core.data import build_test_transform
    from casn_core.engine.inference import extract_tensors
    from casn_core.images import load_rgb

    model, _ = load_model(checkpoint)
    assert model.config.backbone == "mobilenet_v2"
    transform = build_test_transform(128, 64)
    maps, _ = extract_tensors(model, torch.stack([transform(load_rgb(query)), transform(load_rgb(gallery))]))
    expected = reference_similarity(maps[0], maps[1], gap_weights(*maps.shape[-2:]))
    assert s == pytest.approx(expected["similarity"], abs=2e-5)
    for key in ("map1", "map2", "rows1", "rows2"):
        assert_close_scaled(result[f"similarity_{key}"], expected[key], rtol=2e-5, err_msg=key)
    assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(tmp_path.glob(".*.tmp"))  # written atomically, nothing left behind


def test_explain_names_a_bad_image(tiny, tmp_path, capsys):
    checkpoint, data = tiny
    bad = tmp_path / "not_an_image.jpg"
    bad.write_text("hello")
    query = sorted((data / "query").glob("*.jpg"))[0]
    assert cli_main(["explain", "--checkpoint", str(checkpoint), "--image1", str(query), "--image2", str(bad),
                     "--device", "cpu"]) == 1
    assert "not_an_image.jpg" in capsys.readouterr().err


def test_extract_leaves_the_callers_model_in_its_memory_format(tiny):
    """extract(channels_last=True) switches the model only while it runs (no silent change)."""
    import torch

    from casn_core.checkpoint import load_model
    from casn_core.data import ImageDataset, build_test_transform, load_market
    from casn_core.engine.extraction import ExtractionConfig, extract

    checkpoint, data = tiny
    model, _ = load_model(checkpoint)
    records = list(load_market(str(data), splits=("query",)).query)[:4]
    dataset = ImageDataset(records, build_test_transform(128, 64))
    fast = extract(model, dataset, records, ExtractionConfig(channels_last=True, progress=False))
    weight = next(p for p in model.parameters() if p.dim() == 4)
    assert weight.is_contiguous() and not weight.is_contiguous(memory_format=torch.channels_last)
    plain = extract(model, dataset, records, ExtractionConfig(progress=False))
    torch.testing.assert_close(fast.features, plain.features, rtol=1e-4, atol=1e-6)
