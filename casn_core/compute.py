"""How the batched re-ranking runs, apart from what it computes (docs/design.md, sec. 4).

The ranking itself (w, K, the alignment threshold) is a :class:`casn_core.rankings.RankingSpec`;
:class:`Compute` holds what only changes where the work runs and how much memory it takes. No field
changes a distance (the batched path's distances are pinned against the per-query path's by the
tests), except that the device's BLAS may sum in another order (docs/design.md, sec. 4).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

DEFAULT_BATCH_BYTES = 128 << 20
"""Map bytes read per batch of the gallery pass (and of query rows in the query pass)."""

DEFAULT_STATE_BYTES = 512 << 20
"""Per-pair state (packed indicators and attention rows) held at once by
:func:`casn_core.engine.rerank.grouped_casn_blocks`."""


@dataclass(frozen=True)
class Compute:
    """Where the pair attention runs and what bounds its memory.

    - ``device``: where the products run (``None``: the model's device). Maps given as tensors on that
      device stay there; others are read on the host and moved batch by batch.
    - ``max_batch_bytes``: bytes of maps read at once, in the query pass and per batch of gallery rows
      (``None``: :data:`DEFAULT_BATCH_BYTES`).
    - ``chunk``: query rows of every (rows x gallery) float32 block, of the feature distances and of the
      CASN distances (``None``: :func:`casn_core.engine.rerank.query_chunk`, ~32 MB blocks).
    - ``state_bytes``: per-pair state (indicator bits, attention rows) held at once; queries are
      re-ranked in groups that fit it (:func:`casn_core.engine.rerank.grouped_casn_blocks`).
    - ``progress``: show a progress bar (off by default, as library calls should be; the commands turn it on).
    """

    device: torch.device | str | None = None
    max_batch_bytes: int | None = None
    chunk: int | None = None
    state_bytes: int = DEFAULT_STATE_BYTES
    progress: bool = False
