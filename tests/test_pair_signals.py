"""Pair signals: AUCs of d_f, d_a and p(same) over cross-camera pairs."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from casn_core.engine.inference import FeatureCache
from casn_core.engine.pair_signals import (
    PairScores, SampledMaps, pair_scores, pair_signals, sampled_pair_signals, signal_summary,
)
from casn_core.models import build_model
from casn_core.models.heads import ClassifierHead


def _model():
    torch.manual_seed(0)
    model = build_model("resnet18", num_classes=4).eval()
    model.bce_head = ClassifierHead(8, 2).eval()  # a head for the 8-channel maps below
    return model


def _cache(pids, camids, seed):
    gen = torch.Generator().manual_seed(seed)
    identity = torch.relu(torch.randn(10, 8, 6, 3, generator=torch.Generator().manual_seed(99)))
    maps = identity[torch.as_tensor(pids)] + 0.05 * torch.rand(len(pids), 8, 6, 3, generator=gen)
    return FeatureCache(maps, maps.mean(dim=(2, 3)), np.asarray(pids), np.asarray(camids),
                        [f"{seed}_{i}.jpg" for i in range(len(pids))])


def test_pair_scores_keep_cross_camera_pairs_with_known_identities_only():
    query = _cache([0, 1, 2], [1, 1, 2], 0)
    gallery = _cache([0, 0, 1, 2, 3, -1], [1, 2, 2, 1, 2, 2], 1)
    scores = pair_scores(_model(), query, gallery, chunk=2)
    # q0 (cam 1): g1, g2, g4 (cam 2, known) -> positives: g1; q1 (cam 1): g1, g2, g4 -> positive g2;
    # q2 (cam 2): g0, g3 -> positive g3
    assert scores.num_positive == 3 and scores.num_negative == 5
    assert np.all(np.isfinite(scores.attention_distance)) and np.all((scores.same_probability >= 0) & (scores.same_probability <= 1))


@pytest.mark.numeric
def test_gallery_blocks_and_the_lazy_sample_give_the_same_scores():
    """The gallery is scored ``max_batch_bytes`` of maps at a time and a sample reads its maps only
    when scored (eval's peak memory): the numbers equal one block over an eagerly indexed copy."""
    query = _cache([0, 1, 2, 3, 1], [1, 1, 2, 2, 2], 0)
    gallery = _cache([0, 0, 1, 2, 3, 3, 2, 1, 0], [1, 2, 2, 1, 1, 2, 2, 1, 2], 1)
    model = _model()
    whole = pair_scores(model, query, gallery, chunk=2)
    row = 8 * 6 * 3 * 4
    blocks = pair_scores(model, query, gallery, chunk=2, max_batch_bytes=2 * row)  # 2 gallery maps a block
    for name in ("feature_distance", "same"):
        np.testing.assert_array_equal(getattr(blocks, name), getattr(whole, name), err_msg=name)
    for name in ("attention_distance", "same_probability"):  # other matmul shapes: float32 rounding only
        np.testing.assert_allclose(getattr(blocks, name), getattr(whole, name), rtol=0, atol=1e-6, err_msg=name)
    index = np.array([7, 2, 4])
    lazy = SampledMaps(gallery.maps, index)
    assert len(lazy) == 3 and lazy.shape == (3, 8, 6, 3) and lazy.dtype == torch.float32
    torch.testing.assert_close(lazy[1:], gallery.maps[torch.as_tensor(index[1:])], rtol=0, atol=0)
    sampled = sampled_pair_signals(model, query, gallery, max_queries=3, max_gallery=6, seed=1)
    assert sampled["sampled"] and sampled["num_queries"] == 3
    assert 0 <= sampled["auc_attention_distance"] <= 1


def test_signal_summary_aucs_and_means():
    scores = PairScores(
        feature_distance=np.array([0.1, 0.2, 0.9, 0.8, 0.15]),
        attention_distance=np.array([0.5, 0.5, 0.5, 0.5, 0.5]),
        same_probability=np.array([0.9, 0.8, 0.1, 0.3, 0.2]),
        same=np.array([1, 1, 0, 0, 0]),
    )
    summary = signal_summary(scores)
    assert summary["auc_feature_distance"] == pytest.approx(5 / 6)  # 0.15 beats positive 0.2 once
    assert summary["auc_attention_distance"] == 0.5  # all ties: chance
    assert summary["auc_same_probability"] == 1.0
    assert summary["p_same_pos_mean"] == pytest.approx(0.85) and summary["p_same_neg_mean"] == pytest.approx(0.2)
    with pytest.raises(ValueError, match="true and other"):
        signal_summary(PairScores(scores.feature_distance, scores.attention_distance, scores.same_probability,
                                  np.zeros(5, dtype=np.int64)))


def test_pair_signals_reports_rankings_with_the_given_weight():
    pids = [0, 1, 2, 3, 4]
    query = _cache(pids, [1] * 5, 0)
    gallery = _cache(pids + pids, [2] * 5 + [3] * 5, 1)
    result = pair_signals(_model(), query, gallery, attention_weight=0.0, topk=4)
    assert result["auc_feature_distance"] == 1.0  # identity maps dominate the noise
    assert result["feature_rank1"] == 1.0 and result["casn_mAP"] == result["feature_mAP"]  # w = 0
    assert result["attention_weight"] == 0.0 and result["topk"] == 4
