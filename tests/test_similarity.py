"""Exactness of the similarity decomposition (casn_core.attention.similarity).

Stylianou et al. (WACV 2019), Zhu et al. (2021): with a linear pooling ``f_p = sum_i w_p(i) A(i)`` the
cosine similarity of the retrieval features is ``sum_ij C(i, j)``. Checked against each backbone's
own features (``CASN.features``) and ``feature_distance``, and against a literal per-pair loop with
the pooling weights written out from the definition of adaptive average pooling.
"""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from casn_core import build_model
from casn_core.attention.similarity import (
    SimilarityExplanation, contrastive_map, correspondence, explain_similarity, pooling_weights,
    similarity_decomposition, similarity_grid,
)
from casn_core.engine.inference import feature_distance
from helpers import assert_close_scaled
from reference import reference_similarity

pytestmark = pytest.mark.numeric  # every test compares floats with a definition or another code path

# pcb: 128 x 32 gives 8 x 2 maps, and 8 rows in 6 adaptive stripes overlap
SIZES = {"resnet18": (64, 32), "mobilenet_v2": (64, 32), "resnet50": (64, 32), "pcb": (128, 32)}
TOL = 1e-5


@pytest.fixture(scope="module", params=list(SIZES))
def backbone_maps(request):
    """(model, maps (6, K, H, W), features (6, D)) of a tiny random model in eval mode."""
    torch.manual_seed(0)
    model = build_model(request.param, num_classes=5, pretrained="none").eval()
    height, width = SIZES[request.param]
    gen = torch.Generator().manual_seed(1)
    images = torch.randn(6, 3, height, width, generator=gen)
    with torch.no_grad():
        maps = model.feature_map(images)
        features = model.features(maps)
    return model, maps, features


def literal_weights(backbone: str, height: int, width: int) -> torch.Tensor:
    """W (P, HW) from the definition: GAP, or PyTorch's adaptive stripes [floor(pH/P), ceil((p+1)H/P))."""
    parts = 6 if backbone == "pcb" else 1
    weights = torch.zeros(parts, height * width)
    for p in range(parts):
        start, end = math.floor(p * height / parts), math.ceil((p + 1) * height / parts)
        for y in range(start, end):
            for x in range(width):
                weights[p, y * width + x] = 1.0 / ((end - start) * width)
    return weights


def literal_pair(query: torch.Tensor, gallery: torch.Tensor, weights: torch.Tensor) -> dict:
    """One pair, written out: f_p, norms, and C(i, j) position by position."""
    k, h, w = query.shape
    q, g = query.double().reshape(k, -1), gallery.double().reshape(k, -1)
    wt = weights.double()
    fq = torch.stack([(q * wt[p]).sum(1) for p in range(wt.shape[0])])
    fg = torch.stack([(g * wt[p]).sum(1) for p in range(wt.shape[0])])
    denom = fq.norm() * fg.norm()
    corr = torch.zeros(h * w, h * w, dtype=torch.float64)
    for i in range(h * w):
        for j in range(h * w):
            corr[i, j] = sum(wt[p, i] * wt[p, j] for p in range(wt.shape[0])) * (q[:, i] @ g[:, j]) / denom
    return {"similarity": (fq * fg).sum() / denom, "C": corr}


def cosine(features1: torch.Tensor, features2: torch.Tensor) -> torch.Tensor:
    return F.normalize(features1.float(), dim=1) @ F.normalize(features2.float(), dim=1).t()


def test_pooling_weights_match_the_definition(backbone_maps):
    model, maps, _ = backbone_maps
    h, w = maps.shape[-2:]
    weights = pooling_weights(model.pool, h, w)
    assert torch.allclose(weights, literal_weights(model.config.backbone, h, w), atol=1e-7)
    assert torch.allclose(weights.sum(dim=1), torch.ones(weights.shape[0]), atol=1e-6)
    if model.config.backbone == "pcb":
        assert ((weights > 0).sum(dim=0) > 1).any(), "the pcb test size must give overlapping stripes"


def test_maps_and_correspondence_sum_to_the_models_cosine_similarity(backbone_maps):
    model, maps, features = backbone_maps
    with torch.no_grad():
        result = similarity_grid(model, maps[:2], maps[2:], full=True)
    expected = cosine(features[:2], features[2:])
    assert result.similarity.shape == (2, 4)
    assert torch.allclose(result.similarity, expected, atol=TOL)
    assert torch.allclose(result.map1.sum(dim=(-2, -1)), expected, atol=TOL)
    assert torch.allclose(result.map2.sum(dim=(-2, -1)), expected, atol=TOL)
    assert torch.allclose(result.rows1.sum(dim=-1), expected, atol=TOL)
    assert torch.allclose(result.rows2.sum(dim=-1), expected, atol=TOL)
    assert torch.allclose(result.correspondence.sum(dim=(-2, -1)), expected, atol=TOL)
    # d_f^2 = 2 - 2 s, against the ranking's own distance
    d_f = feature_distance(features[:2], features[2:])
    assert torch.allclose(d_f ** 2, 2 - 2 * result.similarity, atol=TOL)
    assert torch.allclose(result.distance, d_f, atol=1e-4)


def test_correspondence_rows_and_columns_give_the_maps(backbone_maps):
    model, maps, _ = backbone_maps
    with torch.no_grad():
        result = similarity_grid(model, maps[:2], maps[2:], full=True)
    h, w = maps.shape[-2:]
    corr = result.correspondence
    assert torch.allclose(corr.sum(dim=-1).reshape(2, 4, h, w), result.map1, atol=TOL)
    assert torch.allclose(corr.sum(dim=-2).reshape(2, 4, h, w), result.map2, atol=TOL)
    # rows against the definition (float64 einsum over the maps and the literal pooling weights), not
    # against the map they are summed from; relative to their scale: float32 sums in any order are good
    # to ~1e-6 of the largest value
    weights = literal_weights(model.config.backbone, h, w).numpy()
    for n in range(2):
        for m in range(4):
            expected = reference_similarity(maps[n], maps[2 + m], weights)
            for key in ("rows1", "rows2", "map1", "map2"):
                assert_close_scaled(getattr(result, key)[n, m].numpy(), expected[key], rtol=1e-5, err_msg=key)
    # one row / column on request, by flat index or (y, x)
    y, x = h - 1, w - 1
    i = y * w + x
    row = correspondence(maps[1], maps[3], (y, x), model.pool, direction="query")
    assert row.shape == (h, w)
    assert torch.allclose(row.flatten(), corr[1, 1, i], atol=1e-7)
    assert torch.allclose(row.sum(), result.map1[1, 1, y, x], atol=TOL)
    column = correspondence(maps[1], maps[3], 2, model.pool, direction="gallery")
    assert torch.allclose(column.flatten(), corr[1, 1, :, 2], atol=1e-7)
    if model.config.backbone == "pcb":
        # a position only corresponds with positions sharing a stripe: row 0 and the last row share none
        assert torch.all(corr[0, 0, 0].reshape(h, w)[-1] == 0)


def test_batched_grid_equals_a_literal_per_pair_loop(backbone_maps):
    model, maps, _ = backbone_maps
    h, w = maps.shape[-2:]
    weights = literal_weights(model.config.backbone, h, w)
    queries, gallery = maps[:2], maps[2:]
    with torch.no_grad():
        grid = similarity_grid(model, queries, gallery, full=True)
        pairs = explain_similarity(model.pool, queries.repeat_interleave(4, 0), gallery.repeat(2, 1, 1, 1), full=True)
    for n in range(2):
        for m in range(4):
            literal = literal_pair(queries[n], gallery[m], weights)
            corr = literal["C"].float()
            assert abs(float(grid.similarity[n, m]) - float(literal["similarity"])) < TOL
            assert torch.allclose(grid.correspondence[n, m], corr, atol=1e-7)
            assert torch.allclose(grid.map1[n, m].flatten(), corr.sum(dim=1), atol=1e-6)
            assert torch.allclose(grid.map2[n, m].flatten(), corr.sum(dim=0), atol=1e-6)
            single = pairs[n * 4 + m]
            assert torch.allclose(single.map1, grid.map1[n, m], atol=1e-7)
            assert torch.allclose(single.map2, grid.map2[n, m], atol=1e-7)
            assert torch.allclose(single.similarity, grid.similarity[n, m], atol=1e-7)


def test_contrastive_map_sums_to_the_similarity_gap(backbone_maps):
    model, maps, features = backbone_maps
    gap_map = contrastive_map(maps[0], maps[4], maps[5], model.pool)
    s = cosine(features[:1], features[4:6])[0]
    assert gap_map.shape == maps.shape[-2:]
    assert abs(float(gap_map.sum()) - float(s[0] - s[1])) < TOL
    grid = similarity_grid(model, maps[:1], maps[4:6])
    assert torch.allclose(gap_map, grid.map1[0, 0] - grid.map1[0, 1], atol=1e-7)


def test_bfloat16_half_and_channels_last_maps(backbone_maps):
    model, maps, _ = backbone_maps
    for dtype in (torch.bfloat16, torch.float16):
        low = maps.to(dtype)
        result = similarity_grid(model, low[:2], low[2:], full=True)
        assert result.map1.dtype == torch.float32
        expected = cosine(model.features(low[:2].float()), model.features(low[2:].float()))
        assert torch.allclose(result.similarity, expected, atol=TOL)
        assert torch.allclose(result.map1.sum(dim=(-2, -1)), expected, atol=TOL)
        assert torch.allclose(result.correspondence.sum(dim=(-2, -1)), expected, atol=TOL)
    dense = similarity_grid(model, maps[:2], maps[2:])
    last = maps.contiguous(memory_format=torch.channels_last)
    layout = similarity_grid(model, last[:2], last[2:])
    assert torch.allclose(layout.map1, dense.map1, atol=1e-7)
    assert torch.allclose(layout.map2, dense.map2, atol=1e-7)


def test_pure_function_with_weight_tensor_and_cached_features(backbone_maps):
    model, maps, features = backbone_maps
    h, w = maps.shape[-2:]
    weights = pooling_weights(model.pool, h, w)
    by_module = similarity_grid(model, maps[:2], maps[2:])
    by_tensor = similarity_decomposition(maps[:2], maps[2:], weights)
    cached = similarity_decomposition(maps[:2], maps[2:], weights, features[:2], features[2:])
    for other in (by_tensor, cached):
        assert isinstance(other, SimilarityExplanation) and other.correspondence is None
        assert torch.allclose(other.map1, by_module.map1, atol=1e-7)
        assert torch.allclose(other.map2, by_module.map2, atol=1e-7)


def test_zero_maps_and_bad_input():
    model = build_model("resnet18", num_classes=3, pretrained="none").eval()
    maps = torch.rand(2, 512, 4, 2)
    zero = torch.zeros(1, 512, 4, 2)
    result = similarity_grid(model, zero, maps, full=True)
    assert torch.all(result.similarity == 0) and torch.all(result.map1 == 0) and torch.isfinite(result.map2).all()
    with pytest.raises(ValueError, match="outside the 4x2 map"):
        correspondence(maps[0], maps[1], (4, 0), model.pool)
    with pytest.raises(ValueError, match="outside"):
        correspondence(maps[0], maps[1], 8, model.pool)
    with pytest.raises(ValueError, match="direction"):
        correspondence(maps[0], maps[1], 0, model.pool, direction="up")
    with pytest.raises(ValueError, match="channels"):
        similarity_grid(model, maps, torch.rand(2, 256, 4, 2))
    with pytest.raises(ValueError, match="do not fit a 4x2 map"):
        similarity_decomposition(maps, maps, torch.ones(1, 6))
    with pytest.raises(ValueError, match="4 dims"):
        similarity_grid(model, maps[0], maps)
    with pytest.raises(ValueError, match="features"):
        similarity_decomposition(maps, maps, model.pool, query_features=torch.rand(2, 7))
