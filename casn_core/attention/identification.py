"""Identification attention (paper sec. 3.1.2, after GAIN, Li et al. CVPR 2018).

Grad-CAM of the true identity on the feature map ``A``, kept differentiable (``create_graph=True``)
so that ``L_ia`` trains the network through the map; a soft mask ``S = sigmoid(omega (M - sigma))``
removes the attended regions and ``L_ia`` is the true-class score on the masked image (eq. 2).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from casn_core.attention.gradcam import GradCAM
from casn_core.numeric import unit_range


def gradcam(feature_map: torch.Tensor, class_scores: torch.Tensor, create_graph: bool = True) -> torch.Tensor:
    """Grad-CAM ``M = ReLU(sum_k GAP(d y_c / d A_k) A_k)`` for (N, K, H, W) maps -> (N, H, W)
    (:class:`casn_core.attention.gradcam.GradCAM` with the class-score target).

    ``class_scores`` (N,) must have been computed from ``feature_map``; with ``create_graph`` the
    map is differentiable with respect to the parameters that produced both.
    """
    return GradCAM(create_graph)(feature_map, class_scores)


def upsample_unit_range(cam: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Upsample (N, H, W) maps bilinearly to ``size`` and min-max normalise each to [0, 1]."""
    up = F.interpolate(cam[:, None], size=size, mode="bilinear", align_corners=False)
    return unit_range(up, dim=(2, 3))


def soft_mask(cam01: torch.Tensor, omega: float = 10.0, sigma: float = 0.5) -> torch.Tensor:
    """``S = sigmoid(omega (M - sigma))``, GAIN's soft thresholding (the paper's alpha, beta)."""
    return torch.sigmoid(omega * (cam01 - sigma))


def mask_images(images: torch.Tensor, cam: torch.Tensor, omega: float = 10.0, sigma: float = 0.5) -> torch.Tensor:
    """``I_bar = I * (1 - S)``: the images with their most attended regions erased."""
    mask = soft_mask(upsample_unit_range(cam, images.shape[-2:]), omega, sigma)
    return images * (1 - mask.to(images.dtype))
