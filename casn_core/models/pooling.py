"""Pooling of the feature map ``A`` into the feature vector ``f``, and its Grad-CAM channel weights.

- :class:`GlobalAvgPool`: ``f = GAP(A)`` (IDE, paper sec. 3.1.1, "feature after conv5").
- :class:`StripePool`: PCB (Sun et al. 2018), ``f`` = concatenation of ``P`` horizontal-stripe averages.

Both are *linear* average poolings whose weights sum to one per output. That is what makes the
Siamese attention cheap (docs/design.md, sec. 4): for the importance score ``s = <a, f>`` the Grad-CAM
channel weight ``GAP(ds/dA_k)`` does not depend on ``A``:

- GAP:    ``ds/dA_k = a_k / (HW)`` everywhere, so the weight is ``a_k / (HW)``;
- stripes: ``ds/dA_k(h, w) = a_{p(h),k} / (|p| W)`` on stripe ``p``; averaged over all HW positions
  the stripe sizes cancel, so the weight is ``sum_p a_{p,k} / (HW)``, also with the overlapping
  stripes of adaptive pooling.

Our first design notes asked for a head-only autograd path for PCB "where the shortcut does not hold exactly". The
per-position shortcut indeed fails for PCB, but the GAP'ed weight above is exact for any average
pooling, so PCB uses the same closed form; ``tests/test_attention.py`` checks it against the full
autograd oracle.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class GlobalAvgPool(nn.Module):
    """``f = GAP(A)``: (N, K, H, W) -> (N, K)."""

    num_parts = 1

    def forward(self, feature_map: torch.Tensor) -> torch.Tensor:
        return feature_map.mean(dim=(2, 3))

    def channel_weights(self, indicator: torch.Tensor, height: int, width: int) -> torch.Tensor:
        """Grad-CAM weights ``GAP(d<a, f>/dA)`` for indicators ``a`` (..., K) -> (..., K)."""
        return indicator / float(height * width)


class StripePool(nn.Module):
    """PCB pooling: ``P`` horizontal stripes averaged separately and concatenated stripe-major.

    (N, K, H, W) -> (N, P*K) with ``f[:, p*K:(p+1)*K]`` the mean of stripe ``p``.
    """

    def __init__(self, num_parts: int = 6) -> None:
        super().__init__()
        if num_parts < 1:
            raise ValueError(f"num_parts must be >= 1, got {num_parts}")
        self.num_parts = num_parts

    def forward(self, feature_map: torch.Tensor) -> torch.Tensor:
        parts = F.adaptive_avg_pool2d(feature_map, (self.num_parts, 1))  # (N, K, P, 1)
        return parts.squeeze(-1).transpose(1, 2).flatten(1)

    def channel_weights(self, indicator: torch.Tensor, height: int, width: int) -> torch.Tensor:
        """Grad-CAM weights ``GAP(d<a, f>/dA)``: (..., P*K) -> (..., K) = sum over stripes / (HW)."""
        parts = indicator.unflatten(-1, (self.num_parts, -1))
        return parts.sum(dim=-2) / float(height * width)


def build_pool(backbone_name: str, num_parts: int = 6) -> nn.Module:
    """Stripe pooling for ``pcb``, global average pooling otherwise."""
    return StripePool(num_parts) if backbone_name == "pcb" else GlobalAvgPool()
