"""CMC / mAP / mINP (casn_core.metrics.evaluate_rank) against an independent plain-loop implementation.

The reference (``tests/reference.py``) follows the Market-1501 protocol (docs/design.md, sec. 5) literally,
one query at a time with Python loops: rank the gallery with a stable sort on (distance, gallery index),
drop the entries with the query's id and camera, skip queries without a remaining true match, then
compute the CMC curve, AP and INP by walking the ranking.
"""
from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch

from casn_core import metrics
from casn_core.metrics import evaluate_rank
from reference import reference_evaluate

pytestmark = pytest.mark.numeric  # exactness against a plain loop (the metrics count in multithreaded torch)


def assert_same(result: dict, expected: dict) -> None:
    assert result["num_valid_queries"] == expected["num_valid_queries"]
    assert isinstance(result["num_valid_queries"], int)
    assert isinstance(result["mAP"], float) and isinstance(result["mINP"], float)
    assert isinstance(result["cmc"], np.ndarray) and result["cmc"].dtype == np.float64
    np.testing.assert_allclose(result["cmc"], expected["cmc"], rtol=0, atol=1e-9)
    assert result["mAP"] == pytest.approx(expected["mAP"], rel=0, abs=1e-9)
    assert result["mINP"] == pytest.approx(expected["mINP"], rel=0, abs=1e-9)
    for key in ("mAP", "mINP"):
        assert 0.0 <= result[key] <= 1.0
    assert np.all(np.diff(result["cmc"]) >= 0) and 0.0 <= result["cmc"][0] and result["cmc"][-1] <= 1.0


# Every counting path of the implementation: binned (default, and with very few bins so that many
# entries share a bin with a match), searchsorted, and tiny chunks / blocks.
PATHS = {
    "binned": {},
    "few_bins": {"_BINS": 3},
    "searchsorted": {"_USE_BINS": False},
    "small_chunks": {"_CHUNK_ELEMENTS": 7, "_TIE_BLOCK_ELEMENTS": 5, "_BINS": 2},
    "searchsorted_small_chunks": {"_USE_BINS": False, "_CHUNK_ELEMENTS": 7, "_TIE_BLOCK_ELEMENTS": 5},
}


@pytest.fixture(params=sorted(PATHS))
def path(request, monkeypatch):
    for name, value in PATHS[request.param].items():
        monkeypatch.setattr(metrics, name, value)
    return request.param


def random_problem(rng: np.random.Generator, num_query: int, num_gallery: int, num_ids: int, num_cams: int,
                   levels: int | None = None, dtype=np.float64):
    """Random ids (gallery id 0 = distractor), cameras and distances (``levels`` distinct values -> ties)."""
    q_pids = rng.integers(1, num_ids + 1, num_query)
    g_pids = rng.integers(0, num_ids + 1, num_gallery)
    q_camids = rng.integers(0, num_cams, num_query)
    g_camids = rng.integers(0, num_cams, num_gallery)
    dist = rng.random((num_query, num_gallery))
    if levels is not None:
        dist = np.floor(dist * levels) / levels
    return dist.astype(dtype), q_pids, g_pids, q_camids, g_camids


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("levels", [None, 2, 40])
def test_random_matches_reference(path, seed, levels):
    rng = np.random.default_rng(seed)
    problem = random_problem(rng, num_query=25, num_gallery=120, num_ids=12, num_cams=3, levels=levels)
    expected = reference_evaluate(*problem, max_rank=20)
    # some queries must be skipped and some gallery entries dropped for the case to mean anything
    assert 0 < expected["num_valid_queries"] <= 25
    assert_same(evaluate_rank(*problem, max_rank=20), expected)


def test_skipped_queries_distractors_and_same_camera(path):
    rng = np.random.default_rng(11)
    dist, q_pids, g_pids, q_camids, g_camids = random_problem(rng, 30, 80, 10, 2, levels=6)
    q_pids[:5] = 99  # identity absent from the gallery
    q_pids[5:10] = 3
    g_camids[g_pids == 3] = 0
    q_camids[5:8] = 0  # identity 3 only seen by the query's own camera: skipped
    q_camids[8:10] = 1  # ... but matchable from another camera
    g_pids[:10] = 0  # many distractors
    expected = reference_evaluate(dist, q_pids, g_pids, q_camids, g_camids, max_rank=10)
    assert expected["num_valid_queries"] < 25
    assert_same(evaluate_rank(dist, q_pids, g_pids, q_camids, g_camids, max_rank=10), expected)


def test_query_of_distractor_id_follows_torchreid(path):
    # ids are compared as plain integers (torchreid): a query of id 0 matches gallery id 0
    dist = np.array([[0.3, 0.1, 0.2]])
    result = evaluate_rank(dist, [0], [5, 0, 0], [0], [1, 1, 0], max_rank=3)
    expected = reference_evaluate(dist, [0], [5, 0, 0], [0], [1, 1, 0], max_rank=3)
    assert_same(result, expected)
    assert result["mAP"] == pytest.approx(1.0)


def test_many_matches_per_query_and_heavy_ties(path):
    rng = np.random.default_rng(5)
    problem = random_problem(rng, num_query=24, num_gallery=400, num_ids=3, num_cams=4, levels=4)
    expected = reference_evaluate(*problem, max_rank=50)
    assert_same(evaluate_rank(*problem, max_rank=50), expected)


def test_infinite_and_signed_zero_distances(path):
    rng = np.random.default_rng(3)
    dist, q_pids, g_pids, q_camids, g_camids = random_problem(rng, 20, 60, 6, 3, levels=3)
    dist[rng.random(dist.shape) < 0.2] = np.inf
    dist[rng.random(dist.shape) < 0.1] = -np.inf
    dist[rng.random(dist.shape) < 0.1] = -0.0
    dist[rng.random(dist.shape) < 0.1] = 0.0
    expected = reference_evaluate(dist, q_pids, g_pids, q_camids, g_camids, max_rank=15)
    assert_same(evaluate_rank(dist, q_pids, g_pids, q_camids, g_camids, max_rank=15), expected)


def test_negative_and_large_distances(path):
    rng = np.random.default_rng(8)
    dist, *ids = random_problem(rng, 20, 70, 7, 3)
    dist = (dist - 0.5) * 1e30
    dist[:, ::7] = 1e-30
    expected = reference_evaluate(dist, *ids, max_rank=10)
    assert_same(evaluate_rank(dist, *ids, max_rank=10), expected)


@pytest.mark.parametrize("dtype", [np.float32, np.float16, np.int64])
def test_dtypes_and_torch_inputs(dtype):
    rng = np.random.default_rng(4)
    dist, q_pids, g_pids, q_camids, g_camids = random_problem(rng, 15, 50, 5, 3)
    dist = (dist * 20).astype(dtype)  # integer / half distances: many ties
    expected = reference_evaluate(dist.astype(np.float64), q_pids, g_pids, q_camids, g_camids, max_rank=8)
    assert_same(evaluate_rank(dist, q_pids, g_pids, q_camids, g_camids, max_rank=8), expected)
    tensors = [torch.from_numpy(np.ascontiguousarray(a)) for a in (dist, q_pids, g_pids, q_camids, g_camids)]
    assert_same(evaluate_rank(*tensors, max_rank=8), expected)
    as_lists = [a.tolist() for a in (q_pids, g_pids, q_camids, g_camids)]
    assert_same(evaluate_rank(torch.from_numpy(dist), *as_lists, max_rank=8), expected)


def test_read_only_and_non_native_arrays_need_no_copy_warning():
    rng = np.random.default_rng(2)
    dist, *ids = random_problem(rng, 10, 40, 4, 3)
    expected = reference_evaluate(dist, *ids, max_rank=5)
    frozen = np.broadcast_to(dist, dist.shape)  # read-only view
    swapped = dist.astype(dist.dtype.newbyteorder(">"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert_same(evaluate_rank(frozen, *ids, max_rank=5), expected)
        assert_same(evaluate_rank(swapped, *ids, max_rank=5), expected)


def test_hand_computed_average_precision():
    # ranking: g0 (hit), g1 (miss), g2 (hit), g3 (miss) -> AP = (1/1 + 2/3) / 2, INP = 2/3
    dist = np.array([[0.1, 0.2, 0.3, 0.4]])
    result = evaluate_rank(dist, [1], [1, 2, 1, 3], [0], [1, 1, 1, 1], max_rank=4)
    assert result["mAP"] == pytest.approx((1.0 + 2.0 / 3.0) / 2.0, abs=1e-12)
    assert result["mINP"] == pytest.approx(2.0 / 3.0, abs=1e-12)
    assert result["cmc"].tolist() == [1.0, 1.0, 1.0, 1.0]
    assert result["num_valid_queries"] == 1


def test_hand_computed_same_camera_drop_and_ties():
    # g0: same id, same camera (dropped); g1: other id; g2: true match, tied with g1 but later index
    dist = np.array([[0.0, 0.5, 0.5, 0.9]])
    result = evaluate_rank(dist, [7], [7, 2, 7, 4], [3], [3, 1, 2, 0], max_rank=3)
    assert result["cmc"].tolist() == [0.0, 1.0, 1.0]
    assert result["mAP"] == pytest.approx(0.5, abs=1e-12)
    assert result["mINP"] == pytest.approx(0.5, abs=1e-12)
    # the same tie with the match first in gallery order ranks the match first
    result = evaluate_rank(dist, [7], [7, 7, 2, 4], [3], [3, 1, 2, 0], max_rank=3)
    assert result["cmc"].tolist() == [1.0, 1.0, 1.0]
    assert result["mAP"] == pytest.approx(1.0) and result["mINP"] == pytest.approx(1.0)


def test_two_queries_cmc_and_mean():
    dist = np.array([[0.2, 0.1, 0.3], [0.1, 0.2, 0.3]])
    # query 0 (id 1): ranking g1 (id 2), g0 (id 1), g2 (id 3) -> first hit at rank 2, AP 1/2
    # query 1 (id 3): ranking g0, g1, g2 (id 3) -> rank 3, AP 1/3; query 2 would be skipped
    result = evaluate_rank(dist, [1, 3], [1, 2, 3], [0, 0], [1, 1, 1], max_rank=3)
    np.testing.assert_allclose(result["cmc"], [0.0, 0.5, 1.0])
    assert result["mAP"] == pytest.approx((1 / 2 + 1 / 3) / 2, abs=1e-12)
    assert result["mINP"] == pytest.approx((1 / 2 + 1 / 3) / 2, abs=1e-12)


def test_max_rank_beyond_gallery_warns_and_pads():
    dist = np.array([[0.3, 0.1, 0.2]])
    with pytest.warns(UserWarning, match="max_rank"):
        result = evaluate_rank(dist, [1], [2, 3, 1], [0], [1, 1, 1], max_rank=5)
    assert result["cmc"].tolist() == [0.0, 1.0, 1.0, 1.0, 1.0]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert len(evaluate_rank(dist, [1], [2, 3, 1], [0], [1, 1, 1], max_rank=3)["cmc"]) == 3


def test_default_max_rank_is_50():
    rng = np.random.default_rng(1)
    problem = random_problem(rng, 10, 80, 4, 3)
    result = evaluate_rank(*problem)
    assert result["cmc"].shape == (50,)
    assert_same(result, reference_evaluate(*problem, max_rank=50))


@pytest.mark.parametrize(
    "args, message",
    [
        ((np.zeros(4), [1], [1, 2, 3, 4], [0], [1, 1, 1, 1]), "distmat"),
        ((np.zeros((0, 4)), [], [1, 2, 3, 4], [], [1, 1, 1, 1]), "empty query"),
        ((np.zeros((1, 0)), [1], [], [0], []), "empty gallery"),
        ((np.zeros((2, 3)), [1], [1, 2, 3], [0, 0], [1, 1, 1]), "q_pids"),
        ((np.zeros((2, 3)), [1, 2], [1, 2], [0, 0], [1, 1, 1]), "g_pids"),
        ((np.zeros((2, 3)), [1, 2], [1, 2, 3], [0, 0, 0], [1, 1, 1]), "q_camids"),
        ((np.zeros((2, 3)), [1, 2], [1, 2, 3], [0, 0], [1, 1]), "g_camids"),
        ((np.zeros((2, 3)), [[1, 2]], [1, 2, 3], [0, 0], [1, 1, 1]), "q_pids"),
        ((np.full((1, 2), math.nan), [1], [1, 2], [0], [1, 1]), "NaN"),
        ((np.zeros((1, 2)), ["a"], [1, 2], [0], [1, 1]), "q_pids"),
        ((np.zeros((1, 2)), [1.5], [1, 2], [0], [1, 1]), "q_pids"),
    ],
)
def test_invalid_inputs_raise(args, message):
    with pytest.raises(ValueError, match=message):
        evaluate_rank(*args, max_rank=1)


@pytest.mark.parametrize("max_rank", [0, -3, 2.5, True])
def test_invalid_max_rank_raises(max_rank):
    with pytest.raises(ValueError, match="max_rank"):
        evaluate_rank(np.zeros((1, 2)), [1], [1, 2], [0], [1, 1], max_rank=max_rank)


def test_no_valid_query_raises():
    # the only gallery image of the query's id comes from the query's camera
    with pytest.raises(ValueError, match="no query"):
        evaluate_rank(np.zeros((1, 3)), [1], [1, 2, 3], [0], [0, 1, 1], max_rank=2)


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("levels", [None, 3])
def test_per_query_results_match_plain_loop(path, seed, levels):
    """evaluate_rank_per_query: each query's first true rank, AP, INP and validity equal a plain loop's."""
    rng = np.random.default_rng(100 + seed)
    problem = random_problem(rng, num_query=20, num_gallery=80, num_ids=10, num_cams=3, levels=levels)
    result = metrics.evaluate_rank_per_query(*problem)
    assert len(result) == 20
    for q in range(20):
        single = [row[q:q + 1] for row in problem[:1]] + [problem[1][q:q + 1], problem[2], problem[3][q:q + 1],
                                                        problem[4]]
        has_match = bool(((problem[2] == problem[1][q]) & (problem[4] != problem[3][q])).any())
        assert bool(result.valid[q]) == has_match
        if not has_match:
            assert result.first_true_rank[q] == 0 and math.isnan(result.ap[q]) and math.isnan(result.inp[q])
            continue
        expected = reference_evaluate(*single, max_rank=80)
        assert result.ap[q] == pytest.approx(expected["mAP"], abs=1e-12)
        assert result.inp[q] == pytest.approx(expected["mINP"], abs=1e-12)
        first = next(k for k, v in enumerate(expected["cmc"]) if v > 0) + 1
        assert result.first_true_rank[q] == first
    summary = result.summary(max_rank=20)
    assert_same(summary, reference_evaluate(*problem, max_rank=20))


def test_junk_mask_is_the_rule_evaluate_rank_applies():
    """Removing junk_mask's entries and ranking the rest with no same-camera entries gives the same numbers."""
    rng = np.random.default_rng(7)
    dist, q_pids, g_pids, q_camids, g_camids = random_problem(rng, num_query=15, num_gallery=60, num_ids=6, num_cams=3)
    full = metrics.evaluate_rank_per_query(dist, q_pids, g_pids, q_camids, g_camids)
    for q in range(15):
        keep = ~metrics.junk_mask(q_pids[q], q_camids[q], g_pids, g_camids)
        # after dropping the junk, no entry shares id and camera: relabel the cameras so none would be dropped
        single = metrics.evaluate_rank_per_query(dist[q:q + 1, keep], q_pids[q:q + 1], g_pids[keep],
                                                 np.full(1, -1), g_camids[keep])
        assert single.valid[0] == full.valid[q]
        if full.valid[q]:
            assert single.first_true_rank[0] == full.first_true_rank[q]
            assert single.ap[0] == pytest.approx(full.ap[q], abs=1e-12)
