"""One explained pair: the paper's Siamese attention and the exact similarity decomposition together.

:class:`PairExplanation` is what ``casn explain --json`` writes, what the app shows and exports, and
what the benches read, so the three agree by construction. It holds

* the paper's Siamese attention (sec. 3.2.2; eq. 4 and 5): the BCE head's same-person probability,
  both attention maps, the row max-pooled importance vectors, the kept spans, the aligned vectors
  and their consistency distance;
* the feature distance ``d_f`` that ranks (sec. 4);
* beyond the paper, the exact decomposition of the cosine similarity ``s`` of the retrieval
  features (:mod:`casn_core.attention.similarity`; Stylianou et al., WACV 2019): a map per image,
  each summing to ``s`` (``d_f^2 = 2 - 2 s``), and its row sums.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch

from casn_core.attention.alignment import DEFAULT_THRESHOLD
from casn_core.attention.siamese import PairAttention, pair_attention
from casn_core.attention.similarity import SimilarityExplanation, similarity_decomposition
from casn_core.models.casn import CASN

__all__ = ["PairExplanation", "explain_maps"]


@dataclass
class PairExplanation:
    """Everything shown for one pair; arrays are numpy (H x W maps, length-H row vectors)."""

    same_probability: float
    feature_distance: float
    attention_distance: float
    threshold: float
    map1: np.ndarray
    map2: np.ndarray
    rows1: np.ndarray
    rows2: np.ndarray
    span1: tuple[int, int]
    span2: tuple[int, int]
    aligned1: np.ndarray
    aligned2: np.ndarray
    similarity: float
    similarity_map1: np.ndarray
    similarity_map2: np.ndarray
    similarity_rows1: np.ndarray
    similarity_rows2: np.ndarray

    @classmethod
    def from_parts(cls, attention: PairAttention, similarity: SimilarityExplanation, feature_distance: float,
                   threshold: float) -> "PairExplanation":
        """One pair's explanation from a single-pair :class:`PairAttention` and :class:`SimilarityExplanation`.

        ``feature_distance`` is the ranking's ``d_f`` (:func:`casn_core.distances.feature_distance`),
        passed in so that the number shown is the one that ranked (``d_f^2 = 2 - 2 s`` up to rounding).
        """
        def arr(t: torch.Tensor) -> np.ndarray:
            return t.detach().float().cpu().numpy()

        s = float(similarity.similarity)
        return cls(
            same_probability=float(attention.same_probability),
            feature_distance=float(feature_distance),
            attention_distance=float(attention.distance),
            threshold=float(threshold),
            map1=arr(attention.maps1), map2=arr(attention.maps2),
            rows1=arr(attention.rows1), rows2=arr(attention.rows2),
            span1=tuple(int(v) for v in attention.span1.tolist()),
            span2=tuple(int(v) for v in attention.span2.tolist()),
            aligned1=arr(attention.aligned1), aligned2=arr(attention.aligned2),
            similarity=s,
            similarity_map1=arr(similarity.map1), similarity_map2=arr(similarity.map2),
            similarity_rows1=arr(similarity.rows1), similarity_rows2=arr(similarity.rows2),
        )

    def to_json(self) -> dict:
        """The JSON form (keys of ``casn explain --json``): plain floats, ints and nested lists."""
        out = {}
        for key, value in asdict(self).items():
            if isinstance(value, np.ndarray):
                out[key] = value.tolist()
            elif isinstance(value, tuple):
                out[key] = [int(v) for v in value]
            else:
                out[key] = value
        return out


@torch.no_grad()
def explain_maps(model: CASN, map1: torch.Tensor, map2: torch.Tensor, threshold: float = DEFAULT_THRESHOLD,
                 feature1: torch.Tensor | None = None, feature2: torch.Tensor | None = None) -> PairExplanation:
    """Explain one pair from its two cached feature maps ``A`` (K, H, W) (docs/design.md, sec. 4: no backbone pass).

    ``feature1``/``feature2`` are the retrieval features the ranking used (e.g. a store's float32
    features); ``d_f`` is computed from them so the number shown is the one that ranked. The
    similarity maps use them too when the maps are float32 (the features are the pool of exactly
    those maps); with 16-bit maps the features are re-pooled from the maps, so the maps still sum
    to ``similarity`` exactly (which then differs from the float32 features' by the maps' rounding).
    """
    from casn_core.distances import feature_distance

    attention = pair_attention(model, map1[None].float(), map2[None].float(), threshold).detach()[0]
    similarity, f1, f2 = _similarity(model, map1, map2, feature1, feature2)
    distance = float(feature_distance(f1, f2)[0, 0])
    return PairExplanation.from_parts(attention, similarity, distance, threshold)


@torch.no_grad()
def explain_similarity(model: CASN, map1: torch.Tensor, map2: torch.Tensor, feature1: torch.Tensor | None = None,
                       feature2: torch.Tensor | None = None) -> SimilarityExplanation:
    """The similarity half of :func:`explain_maps` alone (no Siamese attention): the pair's
    :class:`SimilarityExplanation`, from the same features by the same rule."""
    return _similarity(model, map1, map2, feature1, feature2)[0]


def _similarity(model: CASN, map1: torch.Tensor, map2: torch.Tensor, feature1: torch.Tensor | None,
                feature2: torch.Tensor | None) -> tuple[SimilarityExplanation, torch.Tensor, torch.Tensor]:
    """``(decomposition, f1, f2)``: the ranking's features when given, else the maps' pool."""
    maps1, maps2 = map1[None].float(), map2[None].float()
    pooled1, pooled2 = model.features(maps1), model.features(maps2)
    f1 = pooled1 if feature1 is None else feature1[None].float()
    f2 = pooled2 if feature2 is None else feature2[None].float()
    exact = map1.dtype == torch.float32 and map2.dtype == torch.float32
    similarity = similarity_decomposition(maps1, maps2, model.pool, f1 if exact else pooled1,
                                          f2 if exact else pooled2)[0, 0]
    return similarity, f1, f2
