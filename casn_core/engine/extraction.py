"""Extraction: the backbone's one pass per image (docs/design.md, sec. 4), into RAM or the map store.

- :func:`extract_tensors` (a batch), :func:`extract_batches` (a dataset, streamed), :func:`extract`
  (a dataset into one tensor), :func:`extract_split` (a list of image records at an input size);
- :func:`split_stores`: the query and gallery map stores of a dataset, opened or built
  (:mod:`casn_core.engine.store_build`);
- :func:`resolve_device` and :func:`autocast_context`, the device and precision settings every
  command shares.
"""
from __future__ import annotations

import contextlib
import functools
import logging
import os
from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from casn_core.data import ImageDataset, build_test_transform
from casn_core.maps import FeatureCache
from casn_core.models.casn import CASN

log = logging.getLogger(__name__)

AMP_CHOICES = ("none", "bf16", "fp16")
"""``--amp`` values of every command: float32, bf16 autocast, fp16 autocast (CUDA only)."""


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
    if amp == "bf16" and device.type == "cpu" and not cpu_has_fast_bf16():
        _warn_slow_cpu_bf16()
    dtype = torch.bfloat16 if amp == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


@functools.cache
def cpu_has_fast_bf16() -> bool:
    """Whether oneDNN has native bf16 kernels on this CPU (AVX-512 BF16 / AMX class). Without them
    bf16 autocast is emulated: a MobileNetV2 CASN training step on an AVX2-only EPYC took 7x
    (``bench/train_step.py``) to 15x (``casn train --channels-last``) as long as in float32
    (BENCHMARKS.md, "Train step")."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # a build without oneDNN: assume nothing, warn nothing
        return True


@functools.cache
def _warn_slow_cpu_bf16() -> None:
    log.warning("--amp bf16 on a CPU without native bf16 kernels (oneDNN reports none; torch sees %s): "
                "autocast emulates bf16 and is much slower than float32 here; use --amp none on this machine",
                torch.backends.cpu.get_cpu_capability())


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


@dataclass(frozen=True)
class ExtractionConfig:
    """How the backbone's one pass per image runs and where its maps go.

    ``input_size`` (H, W) of the test transform; ``batch_size`` and ``workers`` of the loader; ``amp``
    (none, bf16, fp16) and ``channels_last`` for the backbone; ``map_dtype`` of stored maps (``auto``:
    the store's rule, float32 while the larger split's float32 maps take <= 4 GiB, else bfloat16);
    ``store_dir``: map stores on disk (:mod:`casn_core.store`), or ``None`` for maps in RAM (float32);
    ``progress``: a progress bar.
    """

    input_size: tuple[int, int] | None = None
    batch_size: int = 64
    workers: int = 0
    amp: str = "none"
    channels_last: bool = False
    map_dtype: str = "auto"
    store_dir: str | os.PathLike | None = None
    progress: bool = True


@torch.no_grad()
def extract_batches(model: CASN, dataset: torch.utils.data.Dataset, config: ExtractionConfig = ExtractionConfig(),
                    map_dtype: torch.dtype = torch.float32,
                    desc: str = "extract") -> Iterator[tuple[int, torch.Tensor, torch.Tensor]]:
    """Yield ``(first row, maps, features)`` per batch: maps (n, K, H, W) channels-last on the CPU in
    ``map_dtype``, features (n, D) float32. One backbone pass per image; nothing is kept here, so a
    consumer can stream the maps to disk (:mod:`casn_core.store`) or into a preallocated tensor.

    ``config.channels_last`` runs the backbone in the channels-last memory format (faster convolutions
    on CPUs with bf16 and on GPUs); the caller's model is switched for the extraction and switched back
    afterwards, so the call leaves no trace on it.
    """
    model.eval()
    device = next(model.parameters()).device
    if config.channels_last:
        model.to(memory_format=torch.channels_last)  # in place; undone in ``finally``
    loader = DataLoader(dataset, batch_size=config.batch_size, shuffle=False, num_workers=config.workers,
                        pin_memory=device.type == "cuda")
    start = 0
    try:
        for images, *_ in tqdm(loader, desc=desc, disable=not config.progress, unit="batch"):
            images = images.to(device, non_blocking=True)
            if config.channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            batch_maps, batch_feats = extract_tensors(model, images, config.amp, map_dtype)
            # channels-last storage: the per-pair map products of the ranking read each gallery map as a
            # contiguous (HW, K) matrix, measured 2.2x faster than the default layout (bench/pair_attention.py)
            yield start, batch_maps.contiguous(memory_format=torch.channels_last).cpu(), batch_feats.float().cpu()
            start += images.shape[0]
    finally:
        if config.channels_last:
            model.to(memory_format=torch.contiguous_format)


@torch.no_grad()
def extract(model: CASN, dataset: torch.utils.data.Dataset, records: Sequence,
            config: ExtractionConfig = ExtractionConfig(), map_dtype: torch.dtype = torch.float32,
            desc: str = "extract") -> FeatureCache:
    """Run the backbone once over ``dataset`` (items ``(image, label, camid, index)``), maps in RAM.

    ``records`` (with ``pid``, ``camid``, ``path``) supplies the labels kept in the cache. Maps are
    stored on the CPU in ``map_dtype`` (bfloat16 halves their memory and the ranking's traffic),
    written batch by batch into one preallocated tensor (no second copy). For sets whose maps do not
    fit in memory use :func:`casn_core.engine.store_build.open_or_build_store` instead.
    """
    maps = feats = None
    total = len(dataset)
    for start, batch_maps, batch_feats in extract_batches(model, dataset, config, map_dtype, desc):
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


def extract_split(model: CASN, records: list, config: ExtractionConfig, desc: str = "extract") -> FeatureCache:
    """The cached maps and features of a list of image records at ``config.input_size``, in RAM."""
    if config.input_size is None:
        raise ValueError("extract_split needs ExtractionConfig.input_size")
    dataset = ImageDataset(records, build_test_transform(*config.input_size))
    return extract(model, dataset, records, config, desc=desc)
