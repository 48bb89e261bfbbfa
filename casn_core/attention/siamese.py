"""Siamese attention (paper sec. 3.2.2): batched, from cached feature maps.

For a pair with feature maps ``A1, A2`` and pooled features ``f1, f2``:

1. indicator ``a_i = 1[d z1 / d f-_i > 0]`` (eq. 4), ``z = BCE(f1 - f2)``; a constant (no gradient);
2. ``s_j = <a, f_j>``, channel weights ``GAP(d s_j / d A_j)``, ``M_j = ReLU(sum_k w_k A_jk)``;
3. row max-pooling ``M_mj``, threshold alignment, resizing, distance ``||M*_m1 - M*_m2||_2`` (eq. 5).

docs/design.md, sec. 4: the channel weights of step 2 do not depend on ``A`` (see
:mod:`casn_core.models.pooling`), and the indicator depends on the pair only through the small BCE
head. So the backbone runs once per image and any number of pairs costs one head evaluation and
two batched matrix products per pair. :mod:`casn_core.attention.oracle` is the literal,
one-pair-at-a-time autograd version these functions are tested against.
"""
from __future__ import annotations

from dataclasses import dataclass, fields

import torch
from torch import nn

from casn_core.attention.gradcam import SiameseCAM, cam_from_weights
from casn_core.attention.alignment import DEFAULT_THRESHOLD, align_rows, consistency_distance, row_importance
from casn_core.models.heads import ClassifierHead


@dataclass
class PairAttention:
    """Siamese attention of a batch of pairs; every field has the same leading pair dimensions.

    ``maps*`` (..., H, W), ``rows*`` (..., H) raw row maxima, ``span*`` (..., 2) inclusive
    ``[first, last]`` rows kept by the alignment, ``aligned*`` (..., L) aligned normalised vectors,
    ``distance`` (...) the consistency distance, ``same_probability`` (...) ``softmax(z)[1]``,
    ``indicator`` (..., D) the 0/1 vector of eq. 4.
    """

    indicator: torch.Tensor
    same_probability: torch.Tensor
    maps1: torch.Tensor
    maps2: torch.Tensor
    rows1: torch.Tensor
    rows2: torch.Tensor
    span1: torch.Tensor
    span2: torch.Tensor
    aligned1: torch.Tensor
    aligned2: torch.Tensor
    distance: torch.Tensor

    def detach(self) -> "PairAttention":
        return PairAttention(**{f.name: getattr(self, f.name).detach() for f in fields(self)})

    def to(self, device: torch.device | str) -> "PairAttention":
        return PairAttention(**{f.name: getattr(self, f.name).to(device) for f in fields(self)})

    def __getitem__(self, index) -> "PairAttention":
        return PairAttention(**{f.name: getattr(self, f.name)[index] for f in fields(self)})


def indicator_autograd(bce_head: nn.Module, feature_diff: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Eq. 4 by autograd through the BCE head only: ``(indicator, z)`` for ``f- `` (P, D).

    The gradient is that of ``sum_p z1_p``; in eval mode the pairs are independent, so this is each
    pair's own ``d z1 / d f-``. In train mode BatchNorm's batch statistics couple the pairs of the
    batch, exactly as a literal ``z[:, 1].sum().backward()`` in a training loop would. ``z`` carries
    no graph into the backbone (``f-`` is detached here); the training loss builds its own.
    """
    diff = feature_diff.detach().float().requires_grad_(True)
    with torch.enable_grad():
        logits = bce_head(diff)
        (grad,) = torch.autograd.grad(logits[:, 1].sum(), diff)
    return (grad > 0).to(diff.dtype), logits.detach()


def indicator_per_pair(bce_head: nn.Module, feature_diff: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Eq. 4 of each pair on its own, as at test time: ``(indicator, z)`` for ``f-`` (P, D).

    The head runs with its inference behaviour (BatchNorm's running statistics, no dropout) and in
    float32 outside any autocast region, so a pair's indicator depends on that pair's features alone:
    not on the other pairs of a training batch (train-mode BatchNorm would make the gradients of the
    batch sum to zero in every unit) and not on dropout's draw. It equals the indicator
    :func:`pair_attention` and :func:`indicator_closed_form` give the same features at test time.
    The head's mode is restored afterwards; nothing of the head is updated.
    """
    was_training = bce_head.training
    bce_head.eval()
    try:
        with torch.autocast(feature_diff.device.type, enabled=False):
            return indicator_autograd(bce_head, feature_diff)
    finally:
        bce_head.train(was_training)


def indicator_closed_form(
    bce_head: ClassifierHead, query_features: torch.Tensor, gallery_features: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Eq. 4 for every (query, gallery) pair in closed form, with the head's inference behaviour.

    ``z1 = w2_1 . ReLU(s * (W1 f-) + c) + b`` (BN folded into ``s, c``) gives
    ``d z1 / d f- = W1^T (s * 1[pre > 0] * w2_1)``; and since ``W1 f- = W1 f_q - W1 f_g`` the first
    layer is applied once per image, not once per pair. Returns ``(indicator (N, M, D),
    same_probability (N, M))``.
    """
    scale, shift = bce_head.eval_affine()
    weight = bce_head.fc1.weight.t() * scale  # (D, h)
    bias = bce_head.fc1.bias * scale + shift
    proj_q = query_features.float() @ weight
    proj_g = gallery_features.float() @ weight
    pre = proj_q[:, None, :] - proj_g[None, :, :] + bias  # (N, M, h)
    active = pre > 0
    hidden = pre.clamp_min(0)
    w2 = bce_head.fc2.weight  # (2, h)
    logit_gap = hidden @ (w2[1] - w2[0]) + (bce_head.fc2.bias[1] - bce_head.fc2.bias[0])
    grad = (active * (scale * w2[1])) @ bce_head.fc1.weight  # (N, M, D)
    return (grad > 0).to(pre.dtype), torch.sigmoid(logit_gap)


def siamese_maps(
    pool: nn.Module, indicator: torch.Tensor, feature_map1: torch.Tensor, feature_map2: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """``M_j = ReLU(sum_k GAP(d<a, f_j>/dA_j)_k A_jk)`` for pairs ``(P, D)``, maps ``(P, K, H, W)``.

    Differentiable with respect to the feature maps; the weights are constants (docs/design.md, sec. 4).
    """
    cam = SiameseCAM(pool)
    weights = cam.channel_weights(feature_map1, indicator)  # (P, K), the same for both images
    return cam_from_weights(weights, feature_map1), cam_from_weights(weights, feature_map2)


def attention_from_indicator(
    pool: nn.Module,
    indicator: torch.Tensor,
    feature_map1: torch.Tensor,
    feature_map2: torch.Tensor,
    same_probability: torch.Tensor,
    threshold: float = DEFAULT_THRESHOLD,
    length: int | None = None,
) -> PairAttention:
    """Steps 2 and 3 for pairs whose indicators (P, D) are known: maps, rows, alignment, distance."""
    map1, map2 = siamese_maps(pool, indicator, feature_map1.float(), feature_map2.float())
    return _finish(indicator, same_probability, map1, map2, threshold, length)


def _finish(
    indicator: torch.Tensor,
    same_probability: torch.Tensor,
    map1: torch.Tensor,
    map2: torch.Tensor,
    threshold: float,
    length: int | None,
) -> PairAttention:
    rows1, rows2 = row_importance(map1), row_importance(map2)
    aligned1, aligned2, span1, span2 = align_rows(rows1, rows2, threshold, length)
    return PairAttention(
        indicator, same_probability, map1, map2, rows1, rows2, span1, span2, aligned1, aligned2,
        consistency_distance(aligned1, aligned2),
    )


def pair_attention(
    model: nn.Module,
    feature_map1: torch.Tensor,
    feature_map2: torch.Tensor,
    threshold: float = DEFAULT_THRESHOLD,
    length: int | None = None,
) -> PairAttention:
    """Siamese attention for a list of pairs: ``feature_map1[p]`` with ``feature_map2[p]`` (P, K, H, W).

    The indicator comes from head-only autograd (:func:`indicator_autograd`), so any head and either
    mode works; maps and distances stay differentiable with respect to the feature maps, which is
    what ``L_sa`` trains through.
    """
    map1_f, map2_f = feature_map1.float(), feature_map2.float()
    feats1, feats2 = model.pool(map1_f), model.pool(map2_f)
    indicator, logits = indicator_autograd(model.bce_head, feats1 - feats2)
    same = torch.softmax(logits, dim=1)[:, 1]
    return attention_from_indicator(model.pool, indicator, map1_f, map2_f, same, threshold, length)


@torch.no_grad()
def pair_attention_grid(
    model: nn.Module,
    query_maps: torch.Tensor,
    gallery_maps: torch.Tensor,
    threshold: float = DEFAULT_THRESHOLD,
    length: int | None = None,
    query_features: torch.Tensor | None = None,
    gallery_features: torch.Tensor | None = None,
    keep_maps: bool = True,
) -> PairAttention:
    """Siamese attention of every (query, gallery) pair from cached maps, without the backbone.

    ``query_maps`` (N, K, H, W) and ``gallery_maps`` (M, K, H, W), float32 or bfloat16 (bf16 halves
    the memory traffic; products are accumulated by the matmul in that dtype). Maps stored
    channels-last (as :func:`casn_core.engine.extraction.extract` stores them) are read as
    contiguous (HW, K) matrices, about 2x faster for one query against many gallery images. Features default to
    ``model.pool`` of the maps. Fields have leading dims (N, M). Uses the head's inference behaviour
    (BN running statistics, no dropout), as ranking does. With ``keep_maps=False`` the 2-D maps are
    dropped (empty tensors) to save memory when only vectors and distances are needed.
    """
    n, k, h, w = query_maps.shape
    m = gallery_maps.shape[0]
    if gallery_maps.shape[1:] != query_maps.shape[1:]:
        raise ValueError(f"query maps {tuple(query_maps.shape)} and gallery maps {tuple(gallery_maps.shape)} differ")
    fq = model.pool(query_maps.float()) if query_features is None else query_features
    fg = model.pool(gallery_maps.float()) if gallery_features is None else gallery_features
    indicator, same = indicator_closed_form(model.bce_head, fq, fg)  # (N, M, D), (N, M)
    weights = SiameseCAM(model.pool).channel_weights(query_maps, indicator).to(query_maps.dtype)  # (N, M, K)
    map_q = torch.bmm(weights, query_maps.reshape(n, k, h * w)).float().clamp_min(0)  # (N, M, HW)
    map_g = torch.bmm(weights.transpose(0, 1), gallery_maps.reshape(m, k, h * w))  # (M, N, HW)
    map_g = map_g.transpose(0, 1).float().clamp_min(0)
    map_q, map_g = map_q.reshape(n, m, h, w), map_g.reshape(n, m, h, w)
    result = _finish(indicator, same, map_q, map_g, threshold, length)
    if not keep_maps:
        empty = map_q.new_empty(0)
        result.maps1 = result.maps2 = empty
        result.indicator = empty
    return result
