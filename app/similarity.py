"""The distance that ranks, explained exactly: similarity maps, row contributions, point correspondences.

The ranking's feature distance is ``d_f^2 = 2 - 2 s`` with ``s`` the cosine similarity of the pooled
features, and ``s = sum_ij C(i, j)`` exactly (Stylianou et al., WACV 2019; Zhu et al., 2021;
:mod:`casn_core.attention.similarity`). This module turns that decomposition into what the app
shows: the two maps (each sums to ``s``), their row sums, one row or column of ``C`` for a clicked
pixel, and the contrastive map of "why did a wrong match rank above the true one".

Pixel positions are in the coordinates of the image the page shows for correspondences: the
model's input image scaled by :func:`shown_scale` (so the user clicks on a picture large enough to
aim at); a pixel belongs to the feature-map cell it falls in.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from app.core import contrastive_map, correspondence, explain_similarity
from app.state import AppState
from app.validation import choice, pixel

DIRECTIONS = ("query", "gallery")
SHOWN_HEIGHT = 256
"""Correspondence images are shown about this tall (an integer multiple of the model input)."""


def scale_for(input_size: tuple[int, int]) -> int:
    """Integer magnification of a model input of ``input_size`` (H, W) for the correspondence images."""
    return max(1, round(SHOWN_HEIGHT / input_size[0]))


def size_for(input_size: tuple[int, int]) -> tuple[int, int]:
    """``(height, width)`` of the correspondence images of a model input of ``input_size`` (H, W)."""
    scale = scale_for(input_size)
    return input_size[0] * scale, input_size[1] * scale


def shown_scale(state: AppState) -> int:
    """Integer magnification of the model input for the correspondence images."""
    return scale_for(state.input_size)


def shown_size(state: AppState) -> tuple[int, int]:
    """``(height, width)`` of the correspondence images in pixels."""
    return size_for(state.input_size)


@dataclass
class Correspondence:
    """Where one clicked location's features match in the other image: one row (or column) of ``C``."""

    direction: str
    x: int
    y: int
    cell: tuple[int, int]
    source_map_size: tuple[int, int]
    values: np.ndarray
    similarity: float
    location_share: float

    def to_json(self, query_index: int, gallery_index: int, shown: tuple[int, int]) -> dict:
        return {"query_index": query_index, "gallery_index": gallery_index, "direction": self.direction,
                "x": self.x, "y": self.y, "shown_size": list(shown), "cell": list(self.cell),
                "source_map_size": list(self.source_map_size), "correspondence": self.values.tolist(),
                "sum": float(self.values.sum()), "location_share": self.location_share,
                "similarity": self.similarity}


def correspondence_of_maps(model, maps: tuple[torch.Tensor, torch.Tensor], features: tuple[torch.Tensor, torch.Tensor],
                           input_size: tuple[int, int], x, y, direction: str) -> Correspondence:
    """Row ``C(i, :)`` (``direction="query"``: clicked on the query image) or column ``C(:, j)`` of the pair
    whose maps (K, H, W) and features are ``maps`` and ``features`` (query first).

    ``x, y`` are pixels of the shown image (:func:`size_for` of ``input_size``). ``values`` is the
    other image's map (it sums to ``location_share``, the clicked cell's entry of its similarity map).
    """
    direction = choice(direction, DIRECTIONS, "direction")
    height, width = size_for(input_size)
    px, py = pixel(x, y, width, height)
    maps_q, maps_g = maps
    source = maps_q if direction == "query" else maps_g
    h, w = source.shape[-2:]
    cell = (min(py * h // height, h - 1), min(px * w // width, w - 1))
    with torch.no_grad():
        values = correspondence(maps_q, maps_g, cell, model.pool, direction).numpy()
    pair = explain_similarity(model, maps_q, maps_g, *features)
    own_map = (pair.map1 if direction == "query" else pair.map2).float().cpu().numpy()
    return Correspondence(direction, px, py, cell, (int(h), int(w)), values, float(pair.similarity),
                          float(own_map[cell]))


def point_correspondence(state: AppState, query_index: int, gallery_index: int, x, y, direction: str) -> Correspondence:
    """:func:`correspondence_of_maps` of a dataset pair (its stored maps and features)."""
    return correspondence_of_maps(state.model, (state.query.maps[query_index], state.gallery.maps[gallery_index]),
                                  (state.query.features[query_index], state.gallery.features[gallery_index]),
                                  state.input_size, x, y, direction)


def contrastive(state: AppState, query_index: int, wrong_index: int, true_index: int) -> dict:
    """The query map of ``s(q, wrong) - s(q, true)``: where the query is closer to the wrong match (sums to the gap)."""
    with torch.no_grad():
        gap_map = contrastive_map(state.query.maps[query_index], state.gallery.maps[wrong_index],
                                  state.gallery.maps[true_index], state.model.pool)
    return {"wrong_index": wrong_index, "true_index": true_index, "map": gap_map.tolist(),
            "similarity_gap": float(gap_map.sum())}
