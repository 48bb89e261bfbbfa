"""The CUDA paths against the CPU. Skipped without a GPU; ``bash bench/gpu.sh`` runs
this file first on a lent one.

Stated tolerances:

- CASN re-ranking of the same float32 maps (from one CPU extraction), on CUDA with the maps resident
  on the device and with rows moved per batch: distances to 1e-4 of the CPU's (float32 products in
  another summation order; TF32 is off for matmuls by PyTorch's default); every query whose CPU
  rank-1 leads its rank-2 by more than 1e-3 has the same rank-1. bfloat16 maps: distances to 0.05
  (the same bf16 products, rounded and summed in another order on each device).
- ``eval`` extracting on CUDA (TF32 convolutions switched off in the test; cuDNN allows them by
  default, which changes the features in their low bits): features to 1e-4 of their largest value
  (this random-init model's features and maps are of size ~1e-8, so an absolute tolerance would accept
  anything, all zeros included), metrics within 0.02.
- Pair explanations of the same maps: every array to 1e-4 of its largest value (the same reason), every
  number (probabilities and distances of size ~1) to 1e-4.

The Siamese-attention indicator is a step function of the features: a pair with a BCE-head unit or a
channel gradient within float32 rounding of its switch may get another indicator on the GPU (another
summation order), and with it other maps and d_a; no tolerance covers that. Such pairs, found in float64
(``helpers.indicator_decided``), are left out: queries with one among their candidates are not compared
row by row, and the explained pair is the first decided one.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from casn_core import explain_maps
from casn_core.compute import Compute
from casn_core.data import ImageDataset, build_test_transform, load_market
from casn_core.engine import rerank
from casn_core.engine.evaluate import evaluate_model
from casn_core.engine.inference import extract, feature_distance, rank_query_casn
from casn_core.engine.rerank import casn_distmat
from casn_core.models import build_model
from casn_core.engine.extraction import ExtractionConfig
from casn_core.engine.store_build import open_or_build_store
from casn_core.rankings import RankingSpec
from helpers import assert_close_scaled, indicator_decided

pytestmark = [pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"), pytest.mark.numeric]

SIZE = (64, 32)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    from casn_core.data.synth import SynthSpec, generate_dataset

    root = tmp_path_factory.mktemp("synth")
    generate_dataset(root, SynthSpec(num_ids=12, num_cameras=3, images_per_id=5, seed=5, height=SIZE[0], width=SIZE[1]))
    return root


@pytest.fixture()
def model():
    torch.manual_seed(0)
    return build_model("mobilenet_v2", num_classes=6, pretrained="none").eval()


def _stores(model, data: Path, folder: Path, map_dtype: str = "float32"):
    dataset = load_market(data, splits=("query", "gallery"))
    config = ExtractionConfig(SIZE, batch_size=8, map_dtype=map_dtype, progress=False)
    return [open_or_build_store(model, list(records), folder / split, config).as_cache()
            for split, records in (("query", dataset.query), ("gallery", dataset.gallery))]


PRE_MARGIN = 3e-5  # 10x the float32 rounding of the BCE head's pre-activations (helpers.indicator_decided)


def _decided(model, query, gallery, k: int = 10) -> np.ndarray:
    """(Q,) bool: queries none of whose ``k`` feature-nearest candidates has an indicator float32 rounding
    could switch (module docstring)."""
    decided = indicator_decided(model, query.features, gallery.features, pre_margin=PRE_MARGIN)
    order = np.argsort(feature_distance(query.features, gallery.features).numpy(), axis=1, kind="stable")[:, :k]
    mask = np.take_along_axis(decided, order, axis=1).all(axis=1)
    assert mask.sum() >= len(mask) // 2, f"only {mask.sum()} of {len(mask)} queries are decided"
    return mask


def _same_clear_rank1(cpu: np.ndarray, gpu: np.ndarray, margin: float = 1e-3, rows=None) -> None:
    if rows is not None:
        cpu, gpu = cpu[rows], gpu[rows]
    order = np.argsort(cpu, axis=1, kind="stable")
    rows = np.arange(cpu.shape[0])
    clear = cpu[rows, order[:, 1]] - cpu[rows, order[:, 0]] > margin
    assert clear.any()
    np.testing.assert_array_equal(np.argmin(gpu, axis=1)[clear], order[clear, 0])


@pytest.mark.parametrize("resident", [True, False], ids=["maps-on-device", "rows-moved-per-batch"])
def test_reranking_on_cuda_equals_the_cpu(data, model, tmp_path, monkeypatch, resident):
    query, gallery = _stores(model, data, tmp_path)
    cpu = casn_distmat(model, query, gallery, RankingSpec.custom(1.0, 10), Compute(device="cpu"))
    if not resident:  # as when the maps do not fit in device memory
        monkeypatch.setattr(rerank, "maps_on_device", lambda maps, device, max_fraction=0.5: maps)
    else:
        on_device = rerank.maps_on_device(gallery.maps, "cuda")
        assert isinstance(on_device, torch.Tensor) and on_device.device.type == "cuda"
        torch.testing.assert_close(on_device.cpu(), gallery.maps[:], rtol=0, atol=0)
    decided = _decided(model, query, gallery)
    gpu = casn_distmat(model.cuda(), query, gallery, RankingSpec.custom(1.0, 10),
                       Compute(device="cuda", max_batch_bytes=3 * gallery.maps.row_bytes))
    np.testing.assert_allclose(gpu[decided], cpu[decided], rtol=0, atol=1e-4)
    _same_clear_rank1(cpu, gpu, rows=decided)


def test_bfloat16_reranking_on_cuda_is_within_the_16_bit_tolerance(data, model, tmp_path):
    query, gallery = _stores(model, data, tmp_path, "bfloat16")
    cpu = casn_distmat(model, query, gallery, RankingSpec.custom(1.0, 10), Compute(device="cpu"))
    gpu = casn_distmat(model.cuda(), query, gallery, RankingSpec.custom(1.0, 10), Compute(device="cuda"))
    np.testing.assert_allclose(gpu, cpu, rtol=0, atol=0.05)


def test_eval_on_cuda_matches_the_cpu(data, model, tmp_path, monkeypatch):
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    rankings = [RankingSpec("casn", 1.0, 10)]

    def evaluate(on_model, folder):  # on the model's device
        config = ExtractionConfig(SIZE, batch_size=8, map_dtype="float32", store_dir=folder, progress=False)
        return evaluate_model(on_model, str(data), config, rankings, signals=True)

    cpu = evaluate(model, tmp_path / "cpu")
    gpu = evaluate(model.cuda(), tmp_path / "gpu")
    for ranking in ("feature", "casn"):
        for name, value in cpu[ranking].items():
            assert abs(gpu[ranking][name] - value) <= 0.02, (ranking, name, gpu[ranking], cpu[ranking])
    for name, value in cpu["pair_signals"].items():  # casn eval --json's pair signals (on by default)
        if isinstance(value, float):
            assert abs(gpu["pair_signals"][name] - value) <= 0.02, (name, gpu["pair_signals"], cpu["pair_signals"])
    records = list(load_market(data, splits=("gallery",)).gallery)
    dataset = ImageDataset(records, build_test_transform(*SIZE))
    config = ExtractionConfig(batch_size=8, progress=False)
    on_cpu = extract(model.cpu(), dataset, records, config)
    on_gpu = extract(model.cuda(), dataset, records, config)
    assert float(on_cpu.features.abs().max()) > 0
    assert_close_scaled(on_gpu.features.cpu().numpy(), on_cpu.features.cpu().numpy(), rtol=1e-4, err_msg="features")


def test_pair_explanation_on_cuda_equals_the_cpu(data, model, tmp_path):
    query, gallery = _stores(model, data, tmp_path)
    decided = indicator_decided(model, query.features, gallery.features, pre_margin=PRE_MARGIN)
    q, g = (int(i) for i in np.argwhere(decided)[0])  # the first pair no rounding can switch (docstring)
    args = (query.maps[q], gallery.maps[g])
    features = {"feature1": query.features[q], "feature2": gallery.features[g]}
    cpu = explain_maps(model, *args, **features)
    gpu = explain_maps(model.cuda(), *(a.cuda() for a in args), **{k: v.cuda() for k, v in features.items()})
    for name, value in vars(cpu).items():
        if isinstance(value, np.ndarray):
            assert_close_scaled(getattr(gpu, name), value, rtol=1e-4, err_msg=name)
        elif isinstance(value, float):
            assert abs(getattr(gpu, name) - value) <= 1e-4, name
        else:
            assert getattr(gpu, name) == value, name


def test_per_query_ranking_with_a_cuda_model_equals_the_cpu(data, model, tmp_path):
    """rank_query_casn (the app's and casn search's path) with the model on CUDA and maps on the host."""
    query, gallery = _stores(model, data, tmp_path)
    dist = feature_distance(query.features, gallery.features)
    q = int(np.flatnonzero(_decided(model, query, gallery))[0])  # no candidate's indicator decided by rounding
    args = (query.maps[q], gallery.maps, dist[q], RankingSpec.custom(1.0, 10))
    kwargs = {"query_feature": query.features[q], "gallery_features": gallery.features}
    cpu = rank_query_casn(model, *args, **kwargs)
    gpu = rank_query_casn(model.cuda(), *args, **kwargs)
    # by gallery image, not by position: two candidates within rounding of each other may swap places
    for name in ("attention_distance", "distance"):
        on_cpu = dict(zip(np.asarray(cpu.order[:10]).tolist(), np.asarray(getattr(cpu, name))[:10]))
        on_gpu = dict(zip(np.asarray(gpu.order[:10]).tolist(), np.asarray(getattr(gpu, name))[:10]))
        assert on_gpu.keys() == on_cpu.keys(), name
        for index, value in on_cpu.items():
            assert abs(on_gpu[index] - value) <= 1e-4, (name, index)



@pytest.mark.parametrize("amp", ["none", "bf16", "fp16"])
def test_training_steps_on_cuda(data, tmp_path, amp):
    """Eq. 6 on CUDA in every precision; fp16 runs under a GradScaler whose state the checkpoint keeps."""
    from casn_core.checkpoint import load_model
    from casn_core.engine.train import TrainConfig, train

    config = TrainConfig(data=str(data), out=str(tmp_path / "run"), backbone="mobilenet_v2", losses="ide,ia,sa",
                         epochs=1, max_steps_per_epoch=3, batch_size=4, pretrained="none", seed=0, device="cuda",
                         amp=amp, height=SIZE[0], width=SIZE[1])
    record = train(config, progress=False).record
    assert record["steps"] == 3 and np.isfinite(record["loss_total"])
    _, payload = load_model(tmp_path / "run" / "last.pt")
    assert ("scale" in payload["scaler"]) == (amp == "fp16")
