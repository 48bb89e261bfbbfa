"""Backbones, pooling, classifier heads and the CASN model."""
from casn_core.models.backbones import BACKBONES, PretrainedWeightsWarning, build_backbone
from casn_core.models.casn import CASN, ForwardOutput, ModelConfig, build_model
from casn_core.models.heads import ClassifierHead
from casn_core.models.pooling import GlobalAvgPool, StripePool

__all__ = [
    "BACKBONES", "CASN", "ClassifierHead", "ForwardOutput", "GlobalAvgPool", "ModelConfig",
    "PretrainedWeightsWarning", "StripePool", "build_backbone", "build_model",
]
