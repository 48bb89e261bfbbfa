"""The two classifiers of CASN: ``FC(D, 512)-BN-ReLU-Dropout-FC(512, C)``.

- IDE classifier (paper sec. 3.1.1, eq. 1): ``f`` -> identity logits ``y``.
- BCE (Siamese) classifier (sec. 3.2.1, eq. 3): ``f- = f1 - f2`` -> ``z`` in R^2, ``z[:, 1]`` = "same person".
"""
from __future__ import annotations

import torch
from torch import nn


class ClassifierHead(nn.Module):
    """Two fully connected layers, ``FC(in, hidden)-BN-ReLU-Dropout-FC(hidden, out)``."""

    def __init__(self, in_features: int, num_outputs: int, hidden: int = 512, dropout: float = 0.5) -> None:
        super().__init__()
        self.fc1 = nn.Linear(in_features, hidden)
        self.bn = nn.BatchNorm1d(hidden)
        self.relu = nn.ReLU(inplace=False)
        self.dropout = nn.Dropout(dropout)
        self.fc2 = nn.Linear(hidden, num_outputs)
        nn.init.kaiming_normal_(self.fc1.weight, mode="fan_out")
        nn.init.zeros_(self.fc1.bias)
        nn.init.normal_(self.fc2.weight, std=0.001)
        nn.init.zeros_(self.fc2.bias)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.dropout(self.relu(self.bn(self.fc1(features)))))

    def hidden_preactivation(self, features: torch.Tensor) -> torch.Tensor:
        """``BN(FC1(x))`` with the running statistics (eval behaviour), for the closed-form indicator."""
        scale, shift = self.eval_affine()
        return features @ (self.fc1.weight.t() * scale) + (self.fc1.bias * scale + shift)

    def eval_affine(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-unit ``(scale, shift)`` of the BN layer in eval mode: ``BN(h) = scale * h + shift``."""
        scale = self.bn.weight / torch.sqrt(self.bn.running_var + self.bn.eps)
        shift = self.bn.bias - self.bn.running_mean * scale
        return scale, shift
