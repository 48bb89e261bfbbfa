"""Cached per-image outputs of the backbone: :class:`FeatureCache` and the :class:`FeatureMaps` protocol.

The backbone runs once per image (docs/design.md, sec. 4); everything pair-wise afterwards reads the
cached maps ``A`` and features ``f``. Maps are held in RAM (a tensor) or read row by row from the map
store on disk (:class:`casn_core.store.StoredMaps`); both satisfy :class:`FeatureMaps`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, Sequence, Union, runtime_checkable

import numpy as np
import torch


@runtime_checkable
class FeatureMaps(Protocol):
    """Maps ``A`` of N images, (N, K, H, W), read by row: what the ranking and explanation code needs."""

    shape: torch.Size
    dtype: torch.dtype

    def __len__(self) -> int: ...

    def read(self, indices: Sequence[int] | np.ndarray | torch.Tensor) -> torch.Tensor:
        """Rows ``indices`` as a tensor (n, K, H, W) on the CPU."""
        ...


def read_maps(maps: Union[torch.Tensor, FeatureMaps], indices: Sequence[int] | np.ndarray,
              device: torch.device | str = "cpu") -> torch.Tensor:
    """Rows ``indices`` of an in-memory map tensor or of :class:`FeatureMaps`, on ``device``."""
    if isinstance(maps, torch.Tensor):
        index = torch.as_tensor(indices, dtype=torch.long, device=maps.device)
        rows = maps[index]  # advanced indexing keeps the channels-last layout (index_select does not)
    else:
        rows = maps.read(indices)
    return rows.to(device, non_blocking=True)


@dataclass
class FeatureCache:
    """Per-image outputs of one backbone pass: ``maps`` = A (N, K, H, W), ``features`` = f (N, D).

    ``maps`` is an in-memory tensor (:func:`casn_core.engine.extraction.extract`) or :class:`FeatureMaps`
    that reads only the indexed rows from disk (``MapStore.as_cache()``); :func:`read_maps` reads either.
    """

    maps: Union[torch.Tensor, FeatureMaps]
    features: torch.Tensor
    pids: np.ndarray
    camids: np.ndarray
    paths: list[str]

    def __len__(self) -> int:
        return self.features.shape[0]
