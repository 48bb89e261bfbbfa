"""The Consistent Attentive Siamese Network (paper sec. 3.3, fig. 2).

One shared backbone ("the feature extraction blocks across the two branches share weights"), a
pooling into ``f``, the IDE classifier on ``f`` and the BCE classifier on ``f- = f1 - f2``.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

from casn_core.models.backbones import BACKBONES, build_backbone
from casn_core.models.heads import ClassifierHead
from casn_core.models.pooling import build_pool


@dataclass
class ModelConfig:
    """Everything needed to rebuild a :class:`CASN` (stored in every checkpoint)."""

    backbone: str = "resnet50"
    num_classes: int = 751
    last_stride: int = 1
    num_parts: int = 6
    hidden: int = 512
    dropout: float = 0.5

    def __post_init__(self) -> None:
        if self.backbone not in BACKBONES:
            raise ValueError(f"unknown backbone {self.backbone!r}; choose one of {', '.join(BACKBONES)}")
        if self.num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {self.num_classes}")

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class ForwardOutput:
    """``feature_map`` = A (N, K, H, W), ``features`` = f (N, D), ``logits`` = y (N, C)."""

    feature_map: torch.Tensor
    features: torch.Tensor
    logits: torch.Tensor


class CASN(nn.Module):
    """Backbone + pooling + IDE classifier (eq. 1) + BCE classifier (eq. 3)."""

    def __init__(self, config: ModelConfig, pretrained: str = "none") -> None:
        super().__init__()
        self.config = config
        self.backbone, self.spec = build_backbone(config.backbone, pretrained, config.last_stride)
        self.pool = build_pool(config.backbone, config.num_parts)
        feature_dim = self.spec.channels * self.pool.num_parts
        self.feature_dim = feature_dim
        self.ide_head = ClassifierHead(feature_dim, config.num_classes, config.hidden, config.dropout)
        self.bce_head = ClassifierHead(feature_dim, 2, config.hidden, config.dropout)

    def feature_map(self, images: torch.Tensor) -> torch.Tensor:
        """``A``: the last convolutional feature map."""
        return self.backbone(images)

    def features(self, feature_map: torch.Tensor) -> torch.Tensor:
        """``f``: the pooled feature vector (the retrieval feature before L2 normalisation)."""
        return self.pool(feature_map)

    def forward(self, images: torch.Tensor) -> ForwardOutput:
        feature_map = self.feature_map(images)
        features = self.features(feature_map.float())
        return ForwardOutput(feature_map, features, self.ide_head(features))

    def pair_logits(self, features1: torch.Tensor, features2: torch.Tensor) -> torch.Tensor:
        """``z = BCE(f1 - f2)`` (eq. 3); ``z[:, 1]`` is the same-person score."""
        return self.bce_head(features1 - features2)


def build_model(
    backbone: str = "resnet50",
    num_classes: int = 751,
    pretrained: str = "none",
    last_stride: int = 1,
    **kwargs,
) -> CASN:
    """Build a CASN model. ``pretrained``: ``"none"``, ``"imagenet"`` or a weight file path."""
    return CASN(ModelConfig(backbone=backbone, num_classes=num_classes, last_stride=last_stride, **kwargs), pretrained)


def randomise_bce_head(model: CASN, seed: int = 0) -> None:
    """Give the BCE head (eq. 3) random weights and BatchNorm statistics, as after training.

    A freshly initialised head has identity BatchNorm statistics, so the indicator of eq. 4 hardly
    varies across pairs; benchmarks and tests of the Siamese attention use this instead of a trained
    head (seeded, in place).
    """
    gen = torch.Generator().manual_seed(seed)
    head = model.bce_head
    with torch.no_grad():
        head.fc1.weight.normal_(0, 0.05, generator=gen)
        head.fc1.bias.normal_(0, 0.1, generator=gen)
        head.fc2.weight.normal_(0, 0.1, generator=gen)
        head.bn.running_mean.normal_(0, 0.05, generator=gen)
        head.bn.running_var.uniform_(0.5, 2.0, generator=gen)
        head.bn.weight.uniform_(0.5, 1.5, generator=gen)
        head.bn.bias.normal_(0, 0.1, generator=gen)
