"""CASN: the Consistent Attentive Siamese Network for person re-identification (Zheng et al., CVPR 2019).

Public API (each step names the paper's equation it implements):

- :func:`build_model` -- backbone (``resnet50``, ``pcb``, ``mobilenet_v2``; ``resnet18`` for small
  runs) + IDE classifier (eq. 1) + BCE classifier (eq. 3).
- :func:`casn_loss` with :class:`LossConfig` -- ``L = L_ide + lambda1 L_ia + lambda2 L_sa`` (eq. 6),
  with ``L_ia`` (eq. 2) and ``L_sa`` (eq. 5).
- :func:`pair_attention` / :func:`pair_attention_grid` -- Siamese attention of pairs from cached
  feature maps: indicator (eq. 4), maps, row importance vectors, alignment and consistency distance.
- :func:`save_checkpoint`, :func:`load_checkpoint`, :func:`load_model` -- atomic writes, safe reads.
"""
from casn_core.attention import PairAttention, oracle_pair_attention, pair_attention, pair_attention_grid
from casn_core.checkpoint import CheckpointError, load_checkpoint, load_model, save_checkpoint
from casn_core.losses import LossConfig, LossTerms, casn_loss
from casn_core.models import BACKBONES, CASN, ModelConfig, build_model

__version__ = "0.1.0"

__all__ = [
    "BACKBONES", "CASN", "CheckpointError", "LossConfig", "LossTerms", "ModelConfig", "PairAttention",
    "build_model", "casn_loss", "load_checkpoint", "load_model", "oracle_pair_attention",
    "pair_attention", "pair_attention_grid", "save_checkpoint",
]
