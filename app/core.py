"""Every name the app takes from the library, in one place (public names only: none starts with ``_``).

The app talks to ``casn_core`` through this module, so what it depends on is one list: the names
``casn_core`` exports at its top level are taken from there; the others come from the public
module that defines them (and are listed in the app's report as candidates for export).
"""
from __future__ import annotations

from casn_core import (
    CASN, CheckpointError, PairExplanation, explain_maps, load_model, pair_attention, pair_attention_grid,
)
from casn_core.atomic import write_bytes_atomic, write_json_atomic
from casn_core.attention import DEFAULT_THRESHOLD
from casn_core.attention.similarity import contrastive_map, correspondence, similarity_decomposition
from casn_core.checkpoint import CheckpointInfo, checkpoint_info
from casn_core.compute import Compute
from casn_core.explanation import explain_similarity
from casn_core.data import ImageDataset, SynthSpec, build_test_transform, generate_dataset, load_market
from casn_core.engine.extraction import ExtractionConfig
from casn_core.engine.store_build import split_stores
from casn_core.engine.evaluator import RankingEvaluator
from casn_core.engine.rerank import casn_attention, casn_candidates, combine_block, iter_casn_distmat
from casn_core.engine.inference import (
    FeatureCache, casn_distmat, extract_tensors, feature_distance,
    rank_query_casn, unit_distance, unit_features,
)
from casn_core.images import MAX_PIXELS, ImageInputError, load_rgb
from casn_core.metrics import QueryResults, evaluate_rank_per_query
from casn_core.metrics import junk_mask as metrics_junk_mask
from casn_core.numeric import unit_range
from casn_core.rankings import PAPER_WEIGHT, RankingSpec, chosen_ranking, paper_ranking, parse_topk, topk_to_json
from casn_core.data.market import parse_market_name
from casn_core.search import (
    GalleryFeatures, GalleryImage, GalleryReport, RankingChoice, SearchError, SearchIndex, SearchResult,
    build_search_index, scan_gallery,
)
from casn_core.visualize import overlay_heatmap, plot_aligned, plot_rows

__all__ = [
    "CASN", "CheckpointError", "PairExplanation", "RankingChoice", "SynthSpec", "CheckpointInfo", "DEFAULT_THRESHOLD", "FeatureCache", "ImageDataset",
    "ImageInputError", "MAX_PIXELS", "QueryResults", "build_test_transform", "checkpoint_info", "contrastive_map",
    "correspondence", "evaluate_rank_per_query", "metrics_junk_mask", "explain_maps", "generate_dataset", "casn_distmat",
    "extract_tensors", "feature_distance", "load_market", "load_model", "load_rgb", "overlay_heatmap",
    "pair_attention", "plot_aligned", "plot_rows", "rank_query_casn", "similarity_decomposition", "split_stores", "ExtractionConfig",
    "unit_range", "GalleryFeatures", "GalleryImage", "GalleryReport", "SearchError", "SearchIndex", "SearchResult",
    "build_search_index", "parse_market_name", "scan_gallery", "casn_candidates", "iter_casn_distmat",
    "explain_similarity", "unit_distance", "unit_features", "write_bytes_atomic", "write_json_atomic",
    "RankingSpec", "chosen_ranking", "parse_topk", "topk_to_json", "PAPER_WEIGHT", "paper_ranking",
    "pair_attention_grid", "casn_attention", "combine_block", "Compute", "RankingEvaluator",
]
