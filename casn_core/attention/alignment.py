"""Row importance vectors, threshold alignment and the consistency distance (paper sec. 3.2.2, eq. 5).

Vectorised over any leading batch dimensions; the one-pair-at-a-time version in
:mod:`casn_core.attention.oracle` is the reference these functions are tested against.
"""
from __future__ import annotations

import torch

from casn_core.numeric import unit_range

DEFAULT_THRESHOLD = 0.3
"""The alignment threshold t of sec. 3.2.2 (docs/design.md, sec. 2, step 4; the paper leaves it open)."""


def row_importance(attention_map: torch.Tensor) -> torch.Tensor:
    """``M_m``: the highest response across each horizontal row, (..., H, W) -> (..., H)."""
    return attention_map.amax(dim=-1)


def normalise_unit_range(rows: torch.Tensor) -> torch.Tensor:
    """Min-max normalise each vector (last dim) to [0, 1] (docs/design.md, sec. 2, step 4); flat -> zeros.

    The 0/0 of a flat vector is defined once, in :func:`casn_core.numeric.unit_range`.
    """
    return unit_range(rows, dim=-1)


def threshold_span(normalised: torch.Tensor, threshold: float) -> torch.Tensor:
    """``[first, last]`` indices whose value exceeds ``threshold``; the whole vector when none does.

    Returns a long tensor (..., 2). Discrete, so no gradient flows through it.
    """
    length = normalised.shape[-1]
    above = normalised > threshold
    index = torch.arange(length, device=normalised.device).expand_as(above)
    first = torch.where(above, index, torch.full_like(index, length)).amin(dim=-1)
    last = torch.where(above, index, torch.full_like(index, -1)).amax(dim=-1)
    found = above.any(dim=-1)
    first = torch.where(found, first, torch.zeros_like(first))
    last = torch.where(found, last, torch.full_like(last, length - 1))
    return torch.stack([first, last], dim=-1)


def resample_span(vectors: torch.Tensor, span: torch.Tensor, length: int) -> torch.Tensor:
    """Crop each vector to ``span`` (inclusive) and resize it to ``length`` by linear interpolation.

    Same sampling positions as ``F.interpolate(mode="linear", align_corners=True)`` on the crop,
    differentiable with respect to the vector values.
    """
    if length < 1:
        raise ValueError(f"aligned length must be >= 1, got {length}")
    size = vectors.shape[-1]
    first = span[..., :1].to(vectors.dtype)
    extent = (span[..., 1:] - span[..., :1]).to(vectors.dtype)
    steps = torch.arange(length, device=vectors.device, dtype=vectors.dtype)
    fraction = steps / (length - 1) if length > 1 else steps
    position = first + extent * fraction  # (..., length)
    low = position.floor().clamp(0, size - 1)
    weight = position - low
    low = low.long()
    high = (low + 1).clamp(max=size - 1)
    return vectors.gather(-1, low) * (1 - weight) + vectors.gather(-1, high) * weight


def align_rows(
    rows1: torch.Tensor, rows2: torch.Tensor, threshold: float = DEFAULT_THRESHOLD, length: int | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Alignment of sec. 3.2.2: normalise, find the span above ``threshold``, crop, resize both.

    Returns ``(aligned1, aligned2, span1, span2)``; ``length`` defaults to H.
    """
    length = rows1.shape[-1] if length is None else length
    norm1, norm2 = normalise_unit_range(rows1), normalise_unit_range(rows2)
    span1, span2 = threshold_span(norm1.detach(), threshold), threshold_span(norm2.detach(), threshold)
    return resample_span(norm1, span1, length), resample_span(norm2, span2, length), span1, span2


def consistency_distance(aligned1: torch.Tensor, aligned2: torch.Tensor) -> torch.Tensor:
    """``||M*_m1 - M*_m2||_2`` (eq. 5) over the last dimension (gradient 0 at identical vectors)."""
    return torch.linalg.vector_norm(aligned1 - aligned2, ord=2, dim=-1)
