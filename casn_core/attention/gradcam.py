"""One Grad-CAM pipeline (Selvaraju et al., ICCV 2017) for both of CASN's attentions.

As pytorch-grad-cam's ``BaseCAM`` + ``GradCAM``: a map is ``M = ReLU(sum_k w_k A_k)`` over the
channels of the feature map ``A``, and :class:`GradCAM`'s channel weights are the spatial mean of
``d score / d A_k`` for a score computed from ``A``. The score is the attention's target:

- identification attention (paper sec. 3.1.2, eq. 2): the true identity's logit,
  :func:`class_score_target`;
- Siamese attention (sec. 3.2.2): the importance score ``s_j = <a, f_j>`` of the pair's indicator
  ``a`` (eq. 4), :func:`importance_target`.

:class:`SiameseCAM` overrides only the weights: with ``f = pool(A)`` an average pooling, the Grad-CAM
weights of ``<a, f>`` do not depend on ``A`` and have a closed form (docs/design.md, sec. 4), so no
autograd pass is needed; :mod:`casn_core.attention.oracle` computes the same maps through
:class:`GradCAM` and autograd, and the tests hold the two together.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def class_score_target(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Identification attention's target: the logit of each image's class ``labels`` (N,) -> (N,)."""
    return logits.float().gather(1, labels[:, None]).squeeze(1)


def importance_target(indicator: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
    """Siamese attention's target: ``s = <a, f>`` for indicators and features (..., D) -> (...)."""
    return (indicator * features).sum(dim=-1)


def cam_from_weights(weights: torch.Tensor, feature_map: torch.Tensor) -> torch.Tensor:
    """``ReLU(sum_k w_k A_k)``: weights (..., K), maps (..., K, H, W) -> (..., H, W), in float32 or wider."""
    dtype = torch.promote_types(feature_map.dtype, torch.float32)
    return F.relu(torch.einsum("...k,...khw->...hw", weights.to(dtype), feature_map.to(dtype)))


class GradCAM:
    """Grad-CAM of a score computed from ``feature_map``; ``create_graph=True`` keeps the map
    differentiable with respect to the parameters that produced both (what ``L_ia`` trains through)."""

    def __init__(self, create_graph: bool = False) -> None:
        self.create_graph = create_graph

    def channel_weights(self, feature_map: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        """``GAP(d scores / d A)`` (N, K); ``scores`` (N,) must depend on ``feature_map`` (N, K, H, W)."""
        (grads,) = torch.autograd.grad(scores.sum(), feature_map, create_graph=self.create_graph,
                                       retain_graph=True)
        return grads.float().mean(dim=(-2, -1))

    def __call__(self, feature_map: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        """The maps ``M`` (N, H, W)."""
        return cam_from_weights(self.channel_weights(feature_map, scores), feature_map)


class SiameseCAM(GradCAM):
    """The Siamese attention maps of pairs with known indicators, weights in closed form.

    For ``s = <a, pool(A)>`` with an average pooling, ``GAP(ds/dA_k)`` is ``pool.channel_weights(a)``
    (:mod:`casn_core.models.pooling`), a constant: the maps stay differentiable in ``A`` through the
    product with it, which is what ``L_sa`` trains through.
    """

    def __init__(self, pool: nn.Module) -> None:
        super().__init__(create_graph=False)
        self.pool = pool

    def channel_weights(self, feature_map: torch.Tensor, indicator: torch.Tensor) -> torch.Tensor:
        """Weights (..., K) of indicators (..., D) for maps (..., K, H, W)."""
        height, width = feature_map.shape[-2:]
        return self.pool.channel_weights(indicator, height, width)
