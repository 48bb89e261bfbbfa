"""Identification attention (sec. 3.1.2), Siamese attention (sec. 3.2.2), and the exact similarity
decomposition of the retrieval feature (beyond the paper; :mod:`casn_core.attention.similarity`)."""
from casn_core.attention.alignment import (
    DEFAULT_THRESHOLD, align_rows, consistency_distance, normalise_unit_range, resample_span, row_importance,
    threshold_span,
)
from casn_core.attention.identification import gradcam, mask_images, soft_mask, upsample_unit_range
from casn_core.attention.oracle import oracle_pair_attention
from casn_core.attention.siamese import (
    PairAttention, attention_from_indicator, indicator_autograd, indicator_closed_form, indicator_per_pair, pair_attention,
    pair_attention_grid, siamese_maps,
)
from casn_core.attention.similarity import (
    SimilarityExplanation, contrastive_map, correspondence, explain_similarity, pooling_weights,
    similarity_decomposition, similarity_grid,
)

__all__ = [
    "DEFAULT_THRESHOLD", "PairAttention", "SimilarityExplanation", "align_rows", "attention_from_indicator",
    "consistency_distance", "contrastive_map", "correspondence", "explain_similarity", "gradcam",
    "indicator_autograd", "indicator_closed_form", "indicator_per_pair", "mask_images", "normalise_unit_range",
    "oracle_pair_attention", "pair_attention", "pair_attention_grid", "pooling_weights", "resample_span",
    "row_importance", "siamese_maps", "similarity_decomposition", "similarity_grid", "soft_mask",
    "threshold_span", "upsample_unit_range",
]
