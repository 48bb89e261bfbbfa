"""k-reciprocal re-ranking (casn_core.k_reciprocal): the reference code's numbers, and what it does to a ranking."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from helpers import require

from casn_core.k_reciprocal import KReciprocalConfig, k_reciprocal_distance
from casn_core.metrics import evaluate_rank


def _clustered(num_ids: int, per_id: int, dim: int = 16, spread: float = 0.6, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    centres = torch.randn(num_ids, dim, generator=gen)
    pids = np.repeat(np.arange(num_ids), per_id)
    features = centres[pids] + spread * torch.randn(len(pids), dim, generator=gen)
    return features, pids


def _reference(query: torch.Tensor, gallery: torch.Tensor, config: KReciprocalConfig) -> np.ndarray:
    """torchreid's copy of the authors' code, given the distances our module starts from (squared there)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        rerank = require("torchreid.reid.utils.rerank", "the optional extra: pip install -e '.[torchreid]'")
    q, g = F.normalize(query.double(), dim=1), F.normalize(gallery.double(), dim=1)
    dist = lambda a, b: torch.cdist(a, b).numpy()  # noqa: E731  Euclidean; the reference squares it
    return rerank.re_ranking(dist(q, g), dist(q, q), dist(g, g), config.k1, config.k2, config.lambda_value)


@pytest.mark.parametrize("k1, k2, lam", [(20, 6, 0.3), (6, 3, 0.5), (4, 1, 0.0)])
def test_equals_the_reference_implementation(k1, k2, lam):
    features, _ = _clustered(num_ids=12, per_id=6, seed=k1)
    query, gallery = features[::4], torch.cat([features[1::4], features[2::4], features[3::4]])
    config = KReciprocalConfig(k1=k1, k2=k2, lambda_value=lam, block_rows=7)  # several blocks, a ragged last one
    got = k_reciprocal_distance(query, gallery, config)
    expected = _reference(query, gallery, config)
    assert got.shape == (len(query), len(gallery)) and got.dtype == np.float32
    assert np.allclose(got, expected, rtol=1e-4, atol=1e-5)  # values in [0, 1]; float32 against float64 input
    assert (np.argsort(got, axis=1, kind="stable")[:, :5] == np.argsort(expected, axis=1, kind="stable")[:, :5]).all()


def test_block_size_does_not_change_the_result():
    features, _ = _clustered(num_ids=8, per_id=5, seed=3)
    one = k_reciprocal_distance(features[:10], features[10:], KReciprocalConfig(k1=5, k2=2, block_rows=1000))
    many = k_reciprocal_distance(features[:10], features[10:], KReciprocalConfig(k1=5, k2=2, block_rows=3))
    assert np.allclose(one, many, rtol=1e-5, atol=1e-6)


def test_lambda_one_is_the_normalised_feature_distance():
    features, _ = _clustered(num_ids=6, per_id=4, seed=1)
    query, gallery = features[:6], features[6:]
    got = k_reciprocal_distance(query, gallery, KReciprocalConfig(k1=4, k2=1, lambda_value=1.0))
    unit = F.normalize(features, dim=1)
    squared = torch.cdist(unit, unit).pow(2)
    expected = (squared[:6, 6:] / squared[:6].amax(dim=1, keepdim=True)).numpy()
    assert np.allclose(got, expected, rtol=1e-4, atol=1e-5)


def test_it_lifts_map_on_clustered_identities():
    """The gallery's neighbourhood puts the hard positives of a query back among its own: mAP rises."""
    features, pids = _clustered(num_ids=30, per_id=6, spread=1.1, seed=7)
    is_query = np.arange(len(pids)) % 6 == 0
    query, gallery = features[is_query], features[~is_query]
    q_pids, g_pids = pids[is_query], pids[~is_query]
    q_cams, g_cams = np.zeros(len(q_pids), dtype=int), np.ones(len(g_pids), dtype=int)
    plain = torch.cdist(F.normalize(query, dim=1), F.normalize(gallery, dim=1)).numpy()
    reranked = k_reciprocal_distance(query, gallery, KReciprocalConfig(k1=6, k2=3))
    before = evaluate_rank(plain, q_pids, g_pids, q_cams, g_cams)["mAP"]
    after = evaluate_rank(reranked, q_pids, g_pids, q_cams, g_cams)["mAP"]
    assert after > before + 0.02, (before, after)


def test_bad_input_is_refused_by_name():
    features, _ = _clustered(num_ids=3, per_id=3)
    with pytest.raises(ValueError, match="needs \\(Q, D\\) and \\(G, D\\) features"):
        k_reciprocal_distance(features[:2], features[2:, :5])
    with pytest.raises(ValueError, match="with k1=20 needs more than 20 images; got 9"):
        k_reciprocal_distance(features[:2], features[2:])
    with pytest.raises(ValueError, match="k2=9"):
        KReciprocalConfig(k1=4, k2=9)
    with pytest.raises(ValueError, match="lambda must be in \\[0, 1\\]; got 1.5"):
        KReciprocalConfig(lambda_value=1.5)
