"""Inference: cached feature maps, feature ranking, CASN re-ranking and one-pair explanations.

The backbone runs once per image (:func:`extract`); everything pair-wise afterwards works on the
cached maps (docs/design.md, sec. 4): ranking by feature distance, the paper's combined distance
(sec. 4, "Evaluation Protocol"; docs/design.md, sec. 3), and explanations of single pairs.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterator, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader
from tqdm import tqdm

from casn_core.attention.siamese import DEFAULT_THRESHOLD, pair_attention_grid
from casn_core.engine.rerank import casn_distmat  # noqa: F401  (public here: the CASN distance matrix)
from casn_core.models.casn import CASN
from casn_core.numeric import unit_range

if TYPE_CHECKING:
    from casn_core.store import StoredMaps


@dataclass
class FeatureCache:
    """Per-image outputs of one backbone pass: ``maps`` = A (N, K, H, W), ``features`` = f (N, D).

    ``maps`` is an in-memory tensor (:func:`extract`) or a :class:`casn_core.store.StoredMaps` that
    reads only the indexed rows from disk (``MapStore.as_cache()``); both index the same way.
    """

    maps: Union[torch.Tensor, "StoredMaps"]
    features: torch.Tensor
    pids: np.ndarray
    camids: np.ndarray
    paths: list[str]

    def __len__(self) -> int:
        return self.features.shape[0]


def resolve_device(device: str = "auto") -> torch.device:
    """``auto`` -> CUDA when available, else CPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"--device {device} asked for, but CUDA is not available on this machine")
    return torch.device(device)


def autocast_context(device: torch.device, amp: str) -> contextlib.AbstractContextManager:
    """Autocast for ``amp`` in {none, bf16, fp16} (fp16 only on CUDA)."""
    if amp == "none":
        return contextlib.nullcontext()
    if amp == "fp16" and device.type != "cuda":
        raise ValueError("--amp fp16 needs CUDA; use bf16 on the CPU")
    dtype = torch.bfloat16 if amp == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


@torch.no_grad()
def extract_tensors(
    model: CASN, images: torch.Tensor, amp: str = "none", map_dtype: torch.dtype = torch.float32
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(maps, features)`` for a batch of preprocessed images (N, 3, H, W), in eval mode."""
    device = next(model.parameters()).device
    with autocast_context(device, amp):
        maps = model.feature_map(images.to(device))
    maps = maps.float()
    return maps.to(map_dtype), model.features(maps)


@torch.no_grad()
def extract_batches(
    model: CASN,
    dataset: torch.utils.data.Dataset,
    batch_size: int = 64,
    workers: int = 0,
    amp: str = "none",
    channels_last: bool = False,
    map_dtype: torch.dtype = torch.float32,
    progress: bool = True,
    desc: str = "extract",
) -> Iterator[tuple[int, torch.Tensor, torch.Tensor]]:
    """Yield ``(first row, maps, features)`` per batch: maps (n, K, H, W) channels-last on the CPU in
    ``map_dtype``, features (n, D) float32. One backbone pass per image; nothing is kept here, so a
    consumer can stream the maps to disk (:mod:`casn_core.store`) or into a preallocated tensor.

    ``channels_last`` runs the backbone in the channels-last memory format (faster convolutions on
    CPUs with bf16 and on GPUs); the caller's model is switched for the extraction and switched back
    afterwards, so the call leaves no trace on it.
    """
    model.eval()
    device = next(model.parameters()).device
    if channels_last:
        model.to(memory_format=torch.channels_last)  # in place; undone in ``finally``
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=workers,
                        pin_memory=device.type == "cuda")
    start = 0
    try:
        for images, *_ in tqdm(loader, desc=desc, disable=not progress, unit="batch"):
            images = images.to(device, non_blocking=True)
            if channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            batch_maps, batch_feats = extract_tensors(model, images, amp, map_dtype)
            # channels-last storage: the per-pair map products of the ranking read each gallery map as a
            # contiguous (HW, K) matrix, measured 2.2x faster than the default layout (bench/pair_attention.py)
            yield start, batch_maps.contiguous(memory_format=torch.channels_last).cpu(), batch_feats.float().cpu()
            start += images.shape[0]
    finally:
        if channels_last:
            model.to(memory_format=torch.contiguous_format)


@torch.no_grad()
def extract(
    model: CASN,
    dataset: torch.utils.data.Dataset,
    records: Sequence,
    batch_size: int = 64,
    workers: int = 0,
    amp: str = "none",
    channels_last: bool = False,
    map_dtype: torch.dtype = torch.float32,
    progress: bool = True,
    desc: str = "extract",
) -> FeatureCache:
    """Run the backbone once over ``dataset`` (items ``(image, label, camid, index)``), maps in RAM.

    ``records`` (with ``pid``, ``camid``, ``path``) supplies the labels kept in the cache. Maps are
    stored on the CPU in ``map_dtype`` (bfloat16 halves their memory and the ranking's traffic),
    written batch by batch into one preallocated tensor (no second copy). For sets whose maps do not
    fit in memory use :func:`casn_core.store.open_or_build_store` instead.
    """
    maps = feats = None
    total = len(dataset)
    for start, batch_maps, batch_feats in extract_batches(model, dataset, batch_size, workers, amp, channels_last,
                                                          map_dtype, progress, desc):
        if maps is None:
            k, h, w = batch_maps.shape[1:]
            maps = torch.empty((total, h, w, k), dtype=batch_maps.dtype).permute(0, 3, 1, 2)
            feats = torch.empty((total, batch_feats.shape[1]), dtype=torch.float32)
        maps[start:start + batch_maps.shape[0]] = batch_maps
        feats[start:start + batch_feats.shape[0]] = batch_feats
    if maps is None:
        raise ValueError("extract: the dataset is empty")
    return FeatureCache(
        maps=maps,
        features=feats,
        pids=np.asarray([r.pid for r in records]),
        camids=np.asarray([r.camid for r in records]),
        paths=[str(r.path) for r in records],
    )


def unit_features(features: torch.Tensor) -> torch.Tensor:
    """L2-normalised float32 features (N, D): what :func:`feature_distance` compares. A caller ranking
    many queries against one gallery keeps the gallery's and uses :func:`unit_distance`."""
    return F.normalize(features.float(), dim=1)


def unit_distance(query_unit: torch.Tensor, gallery_unit: torch.Tensor) -> torch.Tensor:
    """Euclidean distance (Q, G) between features already passed through :func:`unit_features`."""
    return torch.cdist(query_unit, gallery_unit).clamp_min(0)


def feature_distance(query_features: torch.Tensor, gallery_features: torch.Tensor) -> torch.Tensor:
    """Euclidean distance between L2-normalised features (the paper's retrieval feature ``f``)."""
    return unit_distance(unit_features(query_features), unit_features(gallery_features))


@dataclass
class RankedQuery:
    """One query's ranking: gallery ``order``, and the parts of the combined distance per position."""

    order: np.ndarray
    distance: np.ndarray
    feature_part: np.ndarray
    attention_part: np.ndarray
    attention_distance: np.ndarray


@torch.no_grad()
def rank_query_casn(
    model: CASN,
    query_map: torch.Tensor,
    gallery_maps: torch.Tensor,
    feature_distances: torch.Tensor,
    topk: int | None = 100,
    weight: float = 1.0,
    threshold: float = DEFAULT_THRESHOLD,
    query_feature: torch.Tensor | None = None,
    gallery_features: torch.Tensor | None = None,
) -> RankedQuery:
    """The paper's ranking for one query (sec. 4; docs/design.md, sec. 3).

    The top ``topk`` gallery images by feature distance (``None`` = all) are re-scored by
    ``d = norm(d_f) + weight * norm(d_a)``, each min-max normalised over those candidates, with
    ``d_a`` the consistency distance of the pair's Siamese attention. Candidates beyond ``topk``
    follow in their feature order.
    """
    device = next(model.parameters()).device  # the pair attention runs there; the ranking on the CPU
    feature_distances = feature_distances.cpu()
    num_gallery = feature_distances.shape[0]
    k = num_gallery if topk is None else min(topk, num_gallery)
    by_feature = torch.argsort(feature_distances, stable=True)
    candidates = by_feature[:k]
    attention = pair_attention_grid(
        model,
        query_map[None].to(device),
        gallery_maps[candidates].to(device),
        threshold=threshold,
        query_features=None if query_feature is None else query_feature[None].to(device),
        gallery_features=None if gallery_features is None else gallery_features[candidates].to(device),
        keep_maps=False,
    )
    att = attention.distance[0].cpu()
    feat_part = unit_range(feature_distances[candidates], dim=None)
    att_part = weight * unit_range(att, dim=None)
    combined = feat_part + att_part
    reorder = torch.argsort(combined, stable=True)
    rest = by_feature[k:]
    order = torch.cat([candidates[reorder], rest])
    tail = combined.max() + 1 + unit_range(feature_distances[rest], dim=None) if len(rest) else combined.new_zeros(0)
    nan_tail = torch.full((len(rest),), float("nan"))
    return RankedQuery(
        order=order.numpy(),
        distance=torch.cat([combined[reorder], tail]).numpy(),
        feature_part=torch.cat([feat_part[reorder], nan_tail]).numpy(),
        attention_part=torch.cat([att_part[reorder], nan_tail]).numpy(),
        attention_distance=torch.cat([att[reorder], nan_tail]).numpy(),
    )
