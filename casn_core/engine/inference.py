"""Inference on cached maps: feature ranking, the paper's CASN ranking of one query, explanations.

The backbone runs once per image (:mod:`casn_core.engine.extraction`); everything pair-wise afterwards
works on the cached maps (docs/design.md, sec. 4): ranking by feature distance, the paper's combined
distance (sec. 4, "Evaluation Protocol"; docs/design.md, sec. 3), and explanations of single pairs.
The names of extraction, the distances and the cache are re-exported here, where earlier code found them.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from casn_core.attention.siamese import pair_attention_grid
from casn_core.distances import feature_distance, unit_distance, unit_features  # noqa: F401  (re-exported)
from casn_core.engine.extraction import (  # noqa: F401  (re-exported)
    autocast_context, extract, extract_batches, extract_tensors, resolve_device,
)
from casn_core.engine.rerank import casn_distmat  # noqa: F401  (public here: the CASN distance matrix)
from casn_core.maps import FeatureCache  # noqa: F401  (re-exported)
from casn_core.models.casn import CASN
from casn_core.numeric import unit_range
from casn_core.rankings import RankingSpec


@dataclass
class RankedQuery:
    """One query's ranking: gallery ``order``, and the parts of the combined distance per position."""

    order: np.ndarray
    distance: np.ndarray
    feature_part: np.ndarray
    attention_part: np.ndarray
    attention_distance: np.ndarray


@torch.no_grad()
def rank_query_casn(
    model: CASN,
    query_map: torch.Tensor,
    gallery_maps: torch.Tensor,
    feature_distances: torch.Tensor,
    ranking: RankingSpec,
    query_feature: torch.Tensor | None = None,
    gallery_features: torch.Tensor | None = None,
) -> RankedQuery:
    """The paper's ranking for one query (sec. 4; docs/design.md, sec. 3), with ``ranking``'s w, K and threshold.

    The top K gallery images by feature distance (``ranking.topk``, ``None`` = all) are re-scored by
    ``d = norm(d_f) + w * norm(d_a)``, each min-max normalised over those candidates, with ``d_a`` the
    consistency distance of the pair's Siamese attention at ``ranking.threshold``. Candidates beyond
    K follow in their feature order. ``query_feature`` / ``gallery_features``: the cached features
    (else recomputed from the maps).
    """
    device = next(model.parameters()).device  # the pair attention runs there; the ranking on the CPU
    feature_distances = feature_distances.cpu()
    num_gallery = feature_distances.shape[0]
    k = ranking.effective_topk(num_gallery)
    by_feature = torch.argsort(feature_distances, stable=True)
    candidates = by_feature[:k]
    attention = pair_attention_grid(
        model,
        query_map[None].to(device),
        gallery_maps[candidates].to(device),
        threshold=ranking.threshold,
        query_features=None if query_feature is None else query_feature[None].to(device),
        gallery_features=None if gallery_features is None else gallery_features[candidates].to(device),
        keep_maps=False,
    )
    att = attention.distance[0].cpu()
    feat_part = unit_range(feature_distances[candidates], dim=None)
    att_part = ranking.attention_weight * unit_range(att, dim=None)
    combined = feat_part + att_part
    reorder = torch.argsort(combined, stable=True)
    rest = by_feature[k:]
    order = torch.cat([candidates[reorder], rest])
    tail = combined.max() + 1 + unit_range(feature_distances[rest], dim=None) if len(rest) else combined.new_zeros(0)
    nan_tail = torch.full((len(rest),), float("nan"))
    return RankedQuery(
        order=order.numpy(),
        distance=torch.cat([combined[reorder], tail]).numpy(),
        feature_part=torch.cat([feat_part[reorder], nan_tail]).numpy(),
        attention_part=torch.cat([att_part[reorder], nan_tail]).numpy(),
        attention_distance=torch.cat([att[reorder], nan_tail]).numpy(),
    )
