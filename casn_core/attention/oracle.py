"""The literal Siamese attention of sec. 3.2.2, one pair at a time with full autograd.

This is the test oracle for :mod:`casn_core.attention.siamese` (docs/design.md, sec. 4) and the baseline
of ``bench/pair_attention.py``. It makes no use of the closed forms: the indicator is the sign of an
autograd gradient, the Grad-CAM weights are the GAP of an autograd gradient through the pooling,
and the alignment crops with Python slicing and resizes with ``F.interpolate``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from casn_core.attention.gradcam import GradCAM, importance_target
from casn_core.attention.alignment import DEFAULT_THRESHOLD
from casn_core.numeric import unit_range


def _align_one(rows: torch.Tensor, threshold: float, length: int) -> tuple[torch.Tensor, tuple[int, int]]:
    norm = unit_range(rows, dim=None)
    above = torch.nonzero(norm.detach() > threshold).flatten().tolist()
    first, last = (above[0], above[-1]) if above else (0, rows.numel() - 1)
    crop = norm[first : last + 1]
    resized = F.interpolate(crop[None, None], size=length, mode="linear", align_corners=True)[0, 0]
    return resized, (first, last)


def oracle_pair_attention(
    model: nn.Module,
    feature_map1: torch.Tensor,
    feature_map2: torch.Tensor,
    threshold: float = DEFAULT_THRESHOLD,
    length: int | None = None,
) -> dict:
    """Siamese attention of one pair with maps (K, H, W); the model must be in eval mode.

    Returns a dict with ``indicator, same_probability, map1, map2, rows1, rows2, span1, span2,
    aligned1, aligned2, distance`` (maps differentiable with respect to the inputs).
    """
    dtype = torch.promote_types(feature_map1.dtype, torch.float32)  # float64 inputs stay float64
    a1 = feature_map1[None].to(dtype)
    a2 = feature_map2[None].to(dtype)
    if not a1.requires_grad:
        a1 = a1.detach().requires_grad_(True)
    if not a2.requires_grad:
        a2 = a2.detach().requires_grad_(True)
    length = a1.shape[-2] if length is None else length
    with torch.enable_grad():
        f1, f2 = model.pool(a1), model.pool(a2)
        diff = f1 - f2
        logits = model.bce_head(diff)
        (grad_diff,) = torch.autograd.grad(logits[0, 1], diff, retain_graph=True)
        indicator = (grad_diff > 0).to(dtype)  # eq. 4, a constant
        # Grad-CAM of s_j = <a, f_j> by autograd through the pooling (no closed form)
        cam = GradCAM(create_graph=True)
        map1 = cam(a1, importance_target(indicator, f1))[0]
        map2 = cam(a2, importance_target(indicator, f2))[0]
        rows1, rows2 = map1.max(dim=1).values, map2.max(dim=1).values
        aligned1, span1 = _align_one(rows1, threshold, length)
        aligned2, span2 = _align_one(rows2, threshold, length)
        distance = torch.norm(aligned1 - aligned2, p=2)
    return {
        "indicator": indicator[0],
        "same_probability": torch.softmax(logits.detach(), dim=1)[0, 1],
        "map1": map1, "map2": map2, "rows1": rows1, "rows2": rows2,
        "span1": span1, "span2": span2, "aligned1": aligned1, "aligned2": aligned2,
        "distance": distance,
    }
