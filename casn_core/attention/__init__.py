"""Identification attention (sec. 3.1.2) and Siamese attention (sec. 3.2.2)."""
from casn_core.attention.alignment import (
    align_rows, consistency_distance, normalise_unit_range, resample_span, row_importance, threshold_span,
)
from casn_core.attention.identification import gradcam, mask_images, soft_mask, upsample_unit_range
from casn_core.attention.oracle import oracle_pair_attention
from casn_core.attention.siamese import (
    DEFAULT_THRESHOLD, PairAttention, attention_from_indicator, indicator_autograd, indicator_closed_form, pair_attention,
    pair_attention_grid, siamese_maps,
)

__all__ = [
    "DEFAULT_THRESHOLD", "PairAttention", "align_rows", "attention_from_indicator", "consistency_distance", "gradcam",
    "indicator_autograd", "indicator_closed_form", "mask_images", "normalise_unit_range",
    "oracle_pair_attention", "pair_attention", "pair_attention_grid", "resample_span",
    "row_importance", "siamese_maps", "soft_mask", "threshold_span", "upsample_unit_range",
]
