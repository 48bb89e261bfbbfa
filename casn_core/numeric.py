"""The project's one definition of every ratio that can be 0/0.

Normalisations, shares of mass and AUCs all divide by a quantity that can be zero (a flat
attention map, an all-zero map, a class with no samples). Each of them goes through
:func:`safe_divide`, which states what the ratio is when the denominator is zero instead of
leaving a NaN to chance: a random-init model can produce an all-zero map on one machine and not on
another, and a NaN that depends on floating-point luck makes a test flaky.

Conventions (one each):

* :func:`unit_range` -- min-max normalisation to [0, 1]; a flat input (max == min) maps to all
  zeros (there is no "most important" part of a flat vector).
* :func:`share` -- ``part / total`` for non-negative masses; a zero total returns ``empty``
  (callers pass the value a uniform distribution would give, e.g. a mask's area fraction).
* :func:`roc_auc` -- the Mann-Whitney AUC; ties count one half; it raises when a class is empty
  (an AUC of nothing against something is not a number we can report).
"""
from __future__ import annotations

from typing import Sequence, TypeVar

import numpy as np
import torch

Array = TypeVar("Array", torch.Tensor, np.ndarray)

__all__ = ["roc_auc", "safe_divide", "share", "unit_range"]


def safe_divide(numerator: Array, denominator: Array | float, empty: float | Array = 0.0) -> Array:
    """``numerator / denominator`` where the denominator is non-zero, ``empty`` where it is zero.

    Works on torch tensors (differentiable: no NaN reaches the backward pass, since the division is
    done by a denominator with its zeros replaced by one) and on numpy arrays or floats.
    """
    if isinstance(numerator, torch.Tensor):
        den = torch.as_tensor(denominator, dtype=numerator.dtype, device=numerator.device)
        nonzero = den != 0
        quotient = numerator / torch.where(nonzero, den, torch.ones_like(den))
        fill = torch.as_tensor(empty, dtype=quotient.dtype, device=quotient.device)
        return torch.where(nonzero, quotient, fill)
    num = np.asarray(numerator, dtype=np.float64)
    den = np.asarray(denominator, dtype=np.float64)
    nonzero = den != 0
    quotient = num / np.where(nonzero, den, 1.0)
    out = np.where(nonzero, quotient, np.asarray(empty, dtype=np.float64))
    return out if out.ndim else float(out)


def unit_range(values: Array, dim: int | Sequence[int] | None = -1) -> Array:
    """Min-max normalise ``values`` to [0, 1] over ``dim`` (``None``: over everything).

    A flat input (max == min) gives zeros. Used by the alignment of row vectors (paper sec. 3.2.2;
    docs/design.md, sec. 2, step 4), Grad-CAM's mask (sec. 3.1.2), the ranking's distance normalisation
    (sec. 4) and every picture of a map.
    """
    if isinstance(values, torch.Tensor):
        if dim is None:
            low, high = values.min(), values.max()
        else:
            dims = (dim,) if isinstance(dim, int) else tuple(dim)
            low = values.amin(dim=dims, keepdim=True)
            high = values.amax(dim=dims, keepdim=True)
        return safe_divide(values - low, high - low)
    array = np.asarray(values, dtype=np.float64)
    if array.size == 0:
        return array
    axis = None if dim is None else (dim if isinstance(dim, int) else tuple(dim))
    low = array.min(axis=axis, keepdims=True)
    high = array.max(axis=axis, keepdims=True)
    return np.asarray(safe_divide(array - low, high - low))


def share(part: Array, total: Array, empty: float | Array = 0.0) -> Array:
    """``part / total`` of non-negative masses; ``empty`` where the total is zero."""
    return safe_divide(part, total, empty)


def roc_auc(positive_scores: Sequence[float] | np.ndarray, negative_scores: Sequence[float] | np.ndarray) -> float:
    """Probability that a positive scores higher than a negative (ties: one half); Mann-Whitney U / (n_pos n_neg).

    Higher scores should mean "positive": pass ``-distance`` for distances. Computed from ranks
    (O(n log n)), exact with ties.
    """
    pos = np.asarray(positive_scores, dtype=np.float64).ravel()
    neg = np.asarray(negative_scores, dtype=np.float64).ravel()
    if pos.size == 0 or neg.size == 0:
        raise ValueError(f"an AUC needs both classes: got {pos.size} positive and {neg.size} negative scores")
    if not (np.isfinite(pos).all() and np.isfinite(neg).all()):
        raise ValueError("AUC scores must be finite (got NaN or inf)")
    scores = np.concatenate([pos, neg])
    order = np.argsort(scores, kind="stable")
    sorted_scores = scores[order]
    ranks = np.empty(scores.size, dtype=np.float64)
    # average rank within each run of ties (1-based)
    starts = np.flatnonzero(np.r_[True, sorted_scores[1:] != sorted_scores[:-1]])
    ends = np.r_[starts[1:], scores.size]
    mean_rank = (starts + ends + 1) / 2.0
    ranks[order] = np.repeat(mean_rank, ends - starts)
    u = ranks[: pos.size].sum() - pos.size * (pos.size + 1) / 2.0
    return float(u / (pos.size * neg.size))
