"""Siamese and identification attention: the batched fast path against the literal oracle."""
from __future__ import annotations

import copy

import pytest
import torch

from casn_core.attention import (
    DEFAULT_THRESHOLD, align_rows, consistency_distance, gradcam, mask_images, normalise_unit_range, oracle_pair_attention,
    pair_attention, pair_attention_grid, threshold_span,
)
from casn_core.models import build_model
from casn_core.models.casn import randomise_bce_head
from helpers import indicator_decided

# Unit-range quantities (aligned vectors, their distance, p(same)) to 1e-5 absolute: float32 values of size
# <= 1, about 100 float32 steps. Raw maps and row maxima (3 to 40 on these inputs) relative to their own
# maximum, RELATIVE: float32 accumulation over 2048 channels is good to about 1e-6 of the largest value in
# any summation order (thread count, SIMD width), and the float32 oracle's own error is of the same order.
TOL = 1e-5
RELATIVE = 2e-6
# The indicator is a step function of the features (helpers.indicator_margins): the inputs' seeds are
# chosen so that no pair is within 10x float32 rounding of a switch (pooled features give ``pre`` to
# about 2.7e-6 of its largest entry), asserted by _decided; otherwise a rounding flip on some CPU
# would change a pair's maps by a channel's share and fail the comparison, by luck of the kernels.
PRE_MARGIN = 3e-5


@pytest.fixture(scope="module", params=["resnet50", "pcb"])
def head_model(request):
    model = build_model(request.param, num_classes=10).eval()
    randomise_bce_head(model, 0)
    return model


def _maps(n: int, seed: int, k: int = 2048, h: int = 16, w: int = 8) -> torch.Tensor:
    """Random non-negative maps with a random vertical profile per image (a person occupies some rows).

    Without a profile every row of a random map has nearly the same maximum, and min-max
    normalisation of the row vector then amplifies float32 rounding far beyond what real maps show.
    """
    gen = torch.Generator().manual_seed(seed)
    profile = torch.rand(n, 1, h, 1, generator=gen) * 2
    return torch.relu(torch.randn(n, k, h, w, generator=gen)) * profile


def _decided(model, first: torch.Tensor, second: torch.Tensor, pairs_only: bool = False) -> None:
    """No (first[i], second[j]) pair (or (first[i], second[i]) with ``pairs_only``) has an indicator that
    float32 rounding could switch (PRE_MARGIN); a failure here means: choose other seeds."""
    decided = indicator_decided(model, model.pool(first), model.pool(second), pre_margin=PRE_MARGIN)
    assert (decided.diagonal() if pairs_only else decided).all(), "inputs too close to an indicator switch"


def _assert_matches_oracle(result, oracle) -> None:
    """Against the float64 oracle: the indicator exactly (the inputs are far from its switches, _decided),
    raw maps and row maxima to RELATIVE of their own maximum (PCB's channel weights sum six stripes'
    indicators, so its maps reach about 40, ResNet-50's 3 to 6), unit-range quantities to TOL.
    """
    assert torch.equal(result.indicator, oracle["indicator"])
    for name in ("maps1", "maps2", "rows1", "rows2"):
        expected = oracle[name.replace("maps", "map")]
        diff = float((getattr(result, name) - expected).abs().max())
        tol = RELATIVE * float(expected.abs().max())
        assert diff <= tol, f"{name}: max abs diff {diff} (tolerance {tol})"
    for name in ("aligned1", "aligned2"):
        diff = float((getattr(result, name) - oracle[name]).abs().max())
        assert diff < TOL, f"{name}: max abs diff {diff}"
    assert tuple(result.span1.tolist()) == oracle["span1"]
    assert tuple(result.span2.tolist()) == oracle["span2"]
    assert abs(float(result.distance.detach()) - float(oracle["distance"].detach())) < TOL
    assert abs(float(result.same_probability) - float(oracle["same_probability"])) < TOL


def _oracle64(model, map1, map2, **kwargs) -> dict:
    """The literal oracle run in float64: the reference for the float32 fast path's own error.

    The float32 oracle is checked against it too, so both implementations agree with one truth.
    """
    model64 = copy.deepcopy(model).double()
    reference = oracle_pair_attention(model64, map1.double(), map2.double(), **kwargs)
    threshold = kwargs.get("threshold", DEFAULT_THRESHOLD)
    for rows in (reference["rows1"], reference["rows2"]):  # the span is a step function of the rows too
        gap = float((normalise_unit_range(rows.detach()) - threshold).abs().min())
        assert gap > 1e-4, f"a normalised row is {gap:.2g} from the threshold: choose other seeds"
    oracle32 = oracle_pair_attention(model, map1, map2, **kwargs)
    assert torch.equal(oracle32["indicator"].double(), reference["indicator"])
    assert abs(float(oracle32["distance"].detach()) - float(reference["distance"].detach())) < TOL
    return {k: (v.detach().float() if torch.is_tensor(v) else v) for k, v in reference.items()}


@pytest.mark.numeric
def test_grid_fast_path_equals_oracle(head_model):
    queries, gallery = _maps(3, 13), _maps(4, 14)
    _decided(head_model, queries, gallery)
    grid = pair_attention_grid(head_model, queries, gallery)
    assert grid.distance.shape == (3, 4)
    assert grid.maps1.shape == (3, 4, 16, 8)
    spans = set()
    for i in range(3):
        for j in range(4):
            oracle = _oracle64(head_model, queries[i], gallery[j])
            _assert_matches_oracle(grid[i, j], oracle)
            spans.add(oracle["span1"])
    # the indicator must differ between pairs, or the test would not exercise the pair dependence
    assert len({tuple(grid.indicator[i, j].nonzero().flatten()[:20].tolist()) for i in range(3) for j in range(4)}) > 1


@pytest.mark.numeric
def test_pair_list_fast_path_equals_oracle(head_model):
    first, second = _maps(5, 16), _maps(5, 17)
    _decided(head_model, first, second, pairs_only=True)
    batch = pair_attention(head_model, first, second)
    for p in range(5):
        _assert_matches_oracle(batch[p], _oracle64(head_model, first[p], second[p]))


def test_grid_in_bfloat16_storage_is_close(head_model):
    queries, gallery = _maps(2, 5), _maps(3, 6)
    full = pair_attention_grid(head_model, queries, gallery)
    half = pair_attention_grid(head_model, queries.bfloat16(), gallery.bfloat16(),
                               query_features=head_model.pool(queries), gallery_features=head_model.pool(gallery))
    assert torch.equal(full.indicator, half.indicator)
    assert (full.maps1 - half.maps1).abs().max() < 2e-2 * full.maps1.abs().max()


@pytest.mark.numeric
def test_grid_with_aligned_length_and_without_maps(head_model):
    """Another threshold and a resampling length: spans, aligned vectors and d_a as the oracle's."""
    queries, gallery = _maps(2, 5), _maps(2, 6)
    _decided(head_model, queries, gallery)
    grid = pair_attention_grid(head_model, queries, gallery, threshold=0.5, length=32, keep_maps=False)
    assert grid.aligned1.shape == (2, 2, 32)
    assert grid.maps1.numel() == 0
    default = pair_attention_grid(head_model, queries, gallery, keep_maps=False)
    spans = set()
    for i in range(2):
        for j in range(2):
            oracle = _oracle64(head_model, queries[i], gallery[j], threshold=0.5, length=32)
            assert tuple(grid.span1[i, j].tolist()) == oracle["span1"]
            assert tuple(grid.span2[i, j].tolist()) == oracle["span2"]
            for name in ("aligned1", "aligned2"):
                diff = float((getattr(grid, name)[i, j] - oracle[name]).abs().max())
                assert diff < TOL, f"{name}: max abs diff {diff}"
            assert abs(float(grid.distance[i, j]) - float(oracle["distance"])) < TOL
            spans.add((oracle["span1"], oracle["span2"]))
    # the settings matter on these inputs: not the default threshold's spans, not its distances
    assert {(tuple(default.span1[i, j].tolist()), tuple(default.span2[i, j].tolist()))
            for i in range(2) for j in range(2)} != spans
    assert not torch.allclose(default.distance, grid.distance, atol=1e-3)


# --- alignment edge cases (sec. 3.2.2) ---------------------------------------------------------

def test_nothing_above_threshold_keeps_the_whole_vector():
    rows = torch.full((1, 8), 0.7)  # flat: normalised to zeros, nothing exceeds t
    aligned, _, span, _ = align_rows(rows, rows, threshold=0.3)
    assert span.tolist() == [[0, 7]]
    assert torch.allclose(aligned, normalise_unit_range(rows))


def test_single_row_above_threshold():
    rows = torch.zeros(1, 10)
    rows[0, 4] = 1.0
    aligned, _, span, _ = align_rows(rows, rows, threshold=0.3, length=6)
    assert span.tolist() == [[4, 4]]
    assert torch.allclose(aligned, torch.ones(1, 6), atol=1e-6)


def test_vector_of_length_one():
    rows = torch.tensor([[2.5]])
    aligned1, aligned2, span1, _ = align_rows(rows, rows * 3)
    assert span1.tolist() == [[0, 0]]
    assert aligned1.shape == (1, 1)
    assert float(consistency_distance(aligned1, aligned2)) == 0.0


def test_identical_vectors_have_zero_distance_and_finite_gradient():
    rows = torch.rand(3, 16, requires_grad=True)
    a1, a2, _, _ = align_rows(rows, rows.clone())
    distance = consistency_distance(a1, a2)
    assert torch.all(distance == 0)
    distance.sum().backward()
    assert torch.isfinite(rows.grad).all()


def test_vertical_shift_is_reduced_by_alignment():
    base = torch.zeros(16)
    base[3:8] = torch.tensor([0.4, 0.9, 1.0, 0.8, 0.5])
    shifted = torch.roll(base, 5)  # same person, box placed lower
    before = consistency_distance(normalise_unit_range(base), normalise_unit_range(shifted))
    a1, a2, span1, span2 = align_rows(base[None], shifted[None], threshold=0.3)
    after = consistency_distance(a1, a2)
    assert span2[0, 0] - span1[0, 0] == 5
    assert float(after) < 0.1 * float(before)


def test_threshold_span_is_vectorised_over_batches():
    norm = torch.tensor([[0.0, 0.5, 0.1, 0.9, 0.0], [0.1, 0.1, 0.1, 0.1, 0.1]])
    assert threshold_span(norm, 0.3).tolist() == [[1, 3], [0, 4]]


# --- gradients -----------------------------------------------------------------------------

def test_gradcam_mask_carries_gradient_into_the_classifier():
    torch.manual_seed(0)
    model = build_model("resnet18", num_classes=5).train()
    images = torch.randn(4, 3, 64, 32)
    out = model(images)
    labels = torch.tensor([0, 1, 2, 3])
    cam = gradcam(out.feature_map, out.logits.gather(1, labels[:, None]).squeeze(1), create_graph=True)
    masked = mask_images(images, cam)
    # the masked image depends on the IDE head only through the Grad-CAM map
    (grad,) = torch.autograd.grad(masked.pow(2).sum(), model.ide_head.fc2.weight)
    assert grad.abs().sum() > 0
