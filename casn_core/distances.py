"""Distances of the retrieval feature ``f`` (paper sec. 4): Euclidean distance of L2-normalised features.

A module of its own, below everything that ranks, so that the ranking code, the app and the search
share one formula without importing each other.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def unit_features(features: torch.Tensor) -> torch.Tensor:
    """L2-normalised float32 features (N, D): what :func:`feature_distance` compares. A caller ranking
    many queries against one gallery keeps the gallery's and uses :func:`unit_distance`."""
    return F.normalize(features.float(), dim=1)


def unit_distance(query_unit: torch.Tensor, gallery_unit: torch.Tensor) -> torch.Tensor:
    """Euclidean distance (Q, G) between features already passed through :func:`unit_features`."""
    return torch.cdist(query_unit, gallery_unit).clamp_min(0)


def feature_distance(query_features: torch.Tensor, gallery_features: torch.Tensor) -> torch.Tensor:
    """Euclidean distance between L2-normalised features (the paper's retrieval feature ``f``)."""
    return unit_distance(unit_features(query_features), unit_features(gallery_features))
