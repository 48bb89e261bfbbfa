"""CASN: the Consistent Attentive Siamese Network for person re-identification (Zheng et al., CVPR 2019).

Public API (each step names the paper's equation it implements). The app, the benches and user code
import these names only; everything else is internal.

Model and training
- :func:`build_model` -- backbone (``resnet50``, ``pcb``, ``mobilenet_v2``; ``resnet18`` for small
  runs) + IDE classifier (eq. 1) + BCE classifier (eq. 3).
- :func:`casn_loss` with :class:`LossConfig` -- ``L = L_ide + lambda1 L_ia + lambda2 L_sa`` (eq. 6),
  with ``L_ia`` (eq. 2) and ``L_sa`` (eq. 5).

Checkpoints
- :func:`save_checkpoint`, :func:`load_checkpoint`, :func:`load_model` -- atomic writes, safe reads;
  :func:`checkpoint_info` -> :class:`CheckpointInfo` (input size, threshold, attention weight, backbone).

Inference on cached feature maps (docs/design.md, sec. 4: the backbone runs once per image)
- :func:`extract` -> :class:`FeatureCache`; :func:`feature_distance` (the retrieval ``d_f``);
  :func:`rank_query_casn` (the paper's ``d = d_f + w d_a`` on the top K, sec. 4) of a
  :class:`RankingSpec` (w, K, threshold; :func:`paper_ranking` is the paper's w = 1, K = all).
- :func:`pair_attention` / :func:`pair_attention_grid` -- Siamese attention of pairs: indicator
  (eq. 4), maps, row importance vectors, alignment and consistency distance.
- :func:`similarity_grid` / :func:`explain_similarity` / :func:`correspondence` /
  :func:`contrastive_map` -- the exact decomposition of the cosine similarity that ranks
  (beyond the paper; Stylianou et al., WACV 2019).
- :func:`explain_maps` -> :class:`PairExplanation` (both explainers for one pair, ``to_json()``).

Evaluation
- :func:`evaluate_rank` (CMC, mAP, mINP; Market-1501 protocol) and
  :func:`evaluate_rank_per_query` -> :class:`QueryResults` (first true rank, AP, INP, valid).
"""
from casn_core.attention import (
    DEFAULT_THRESHOLD, PairAttention, oracle_pair_attention, pair_attention, pair_attention_grid,
)
from casn_core.attention.similarity import (
    SimilarityExplanation, contrastive_map, correspondence, explain_similarity, pooling_weights, similarity_grid,
)
from casn_core.checkpoint import (
    CheckpointError, CheckpointInfo, checkpoint_info, load_checkpoint, load_model, save_checkpoint,
)
from casn_core.engine.inference import (
    FeatureCache, RankedQuery, autocast_context, extract, extract_tensors, feature_distance, rank_query_casn,
    resolve_device,
)
from casn_core.explanation import PairExplanation, explain_maps
from casn_core.losses import LossConfig, LossTerms, casn_loss
from casn_core.metrics import QueryResults, evaluate_rank, evaluate_rank_per_query
from casn_core.models import BACKBONES, CASN, ModelConfig, build_model
from casn_core.rankings import RankingSpec, paper_ranking

__version__ = "0.2.0"

__all__ = [
    "BACKBONES", "CASN", "CheckpointError", "CheckpointInfo", "DEFAULT_THRESHOLD", "FeatureCache", "LossConfig",
    "LossTerms", "ModelConfig", "PairAttention", "PairExplanation", "QueryResults", "RankedQuery", "RankingSpec",
    "SimilarityExplanation", "autocast_context", "build_model", "casn_loss", "checkpoint_info", "contrastive_map",
    "correspondence", "evaluate_rank", "evaluate_rank_per_query", "explain_maps", "explain_similarity", "extract",
    "extract_tensors", "feature_distance", "load_checkpoint", "load_model", "oracle_pair_attention",
    "pair_attention", "pair_attention_grid", "paper_ranking", "pooling_weights", "rank_query_casn", "resolve_device",
    "save_checkpoint", "similarity_grid",
]
