"""A torchreid model presented as a :class:`casn_core.models.CASN`: ``backbone``/``feature_map``, ``pool``,
``features``, ``bce_head``, ``config``; the attention, similarity, ranking and store code runs on it unchanged.

torchreid computes ``f = head(GAP(A))`` with a head of Linear, BatchNorm1d (eval: a per-channel
affine map) and ReLU layers (:mod:`casn_core.models.torchreid_adapter`). For one image the ReLUs'
active set ``m`` is fixed by that image's own pre-activations, so the head is affine for it:
``f = J GAP(A) + b'``. Applying the same affine map at every location gives the *folded map*
``A'(i) = J A(i) + b'`` with ``GAP(A') = f`` exactly; :meth:`TorchreidBackbone.forward` returns
``A'`` as the model's feature map and the pool is plain global average pooling. Hence

- the exact similarity decomposition (:mod:`casn_core.attention.similarity`) holds for ``A'``
  (its maps sum to the cosine of torchreid's own features);
- the paper's Siamese attention (sec. 3.2.2) is Grad-CAM at ``A'``: ``s = <a, f>`` (eq. 4's indicator
  ``a``) has the channel weights ``a / HW`` there, and its pre-ReLU map sums to ``s`` over the
  locations. At the backbone's map ``A`` the same score has the weights ``J^T a / HW``; the two
  pre-ReLU maps differ by the per-image constant ``<a, b'> / HW`` (zero without a head, where
  ``A' = A``).

A model whose head cannot be folded (see :func:`casn_core.models.torchreid_adapter.head_layers`)
keeps working for feature ranking: its feature map is then ``f`` itself as a 1 x 1 map, and
:attr:`TorchreidCASN.explain_refusal` says why explanations are refused.
"""
from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from casn_core.models.casn import ForwardOutput
from casn_core.models.heads import ClassifierHead
from casn_core.models.pooling import GlobalAvgPool
from casn_core.models.torchreid_adapter import DEFAULT_SIZE_TEXT, arch_entry, head_layers, parse_input_size

log = logging.getLogger(__name__)

DEFAULT_INPUT_SIZE = parse_input_size(DEFAULT_SIZE_TEXT)
"""torchreid's default input (height, width) for person re-id."""

PROBE_SIZE = (64, 32)
"""Input of the load-time check that the folded map reproduces torchreid's feature (small: cheap)."""

PROBE_TOLERANCE = 1e-4
"""Largest accepted ``max |f_ours - f_torchreid| / max |f_torchreid|`` of that check (float32 rounding is ~1e-6)."""


@dataclass(frozen=True)
class ForeignConfig:
    """What rebuilds a :class:`TorchreidCASN` (stored as a checkpoint's ``model_config``).

    ``num_classes`` is the size of torchreid's own identity classifier (unused for inference);
    ``hidden`` and ``dropout`` shape the BCE head (eq. 3), as in :class:`casn_core.models.ModelConfig`.
    """

    arch: str
    input_size: tuple[int, int] = DEFAULT_INPUT_SIZE
    num_classes: int = 1
    hidden: int = 512
    dropout: float = 0.5
    library: str = "torchreid"

    @property
    def backbone(self) -> str:
        """The name shown for the model (``torchreid:osnet_x0_25``)."""
        return f"{self.library}:{self.arch}"

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "input_size": [int(v) for v in self.input_size], "backbone": self.backbone}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ForeignConfig":
        fields = {k: v for k, v in data.items() if k != "backbone"}
        if "input_size" in fields:
            fields["input_size"] = tuple(int(v) for v in fields["input_size"])
        return cls(**fields)


def fold_head(layers: list[nn.Module], pooled: torch.Tensor, maps: torch.Tensor) -> torch.Tensor:
    """``A'`` (N, D, H, W) of maps ``A`` (N, K, H, W) whose pooled feature is ``pooled`` (N, K).

    Each layer runs on ``pooled`` as torchreid runs it (which fixes the ReLUs' active set) and its
    affine part on every location of the map, so ``GAP(A') = head(pooled)`` (module docstring).
    """
    x = pooled
    y = maps.permute(0, 2, 3, 1)  # (N, H, W, K): the layers act on the last dimension
    for layer in layers:
        if isinstance(layer, nn.Linear):
            y = F.linear(y, layer.weight, layer.bias)
        elif isinstance(layer, nn.BatchNorm1d):
            scale = layer.running_var.add(layer.eps).rsqrt()
            if layer.weight is not None:
                scale = scale * layer.weight
            shift = -layer.running_mean * scale + (layer.bias if layer.bias is not None else 0)
            y = y * scale + shift
        elif isinstance(layer, nn.ReLU):
            y = y * (x > 0).to(y.dtype)[:, None, None, :]
        x = layer(x)  # Dropout, Identity, Flatten: identities at test time on (N, D)
    return y.permute(0, 3, 1, 2)


class TorchreidBackbone(nn.Module):
    """A torchreid model as a feature-map extractor: images -> ``A'`` (or ``f`` as a 1 x 1 map when refused)."""

    def __init__(self, net: nn.Module, arch: str) -> None:
        super().__init__()
        self.net = net.eval()
        self.arch = arch
        self.entry = arch_entry(arch)
        named, self.refusal = head_layers(net, arch)
        self._layers = [layer for _, layer in named]  # modules of ``net``: not registered twice

    def conv_map(self, images: torch.Tensor) -> torch.Tensor:
        """``A``: torchreid's last convolutional map (its ``featuremaps``, per the table)."""
        return self.entry.feature_map(self.net, images)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if self.refusal is not None:
            return self.net(images)[:, :, None, None]  # feature ranking still works on f itself
        maps = self.conv_map(images)
        pooled = getattr(self.net, self.entry.pool)(maps).flatten(1)
        return fold_head(self._layers, pooled, maps)

    def train(self, mode: bool = True) -> "TorchreidBackbone":
        # the torchreid model is frozen: its BatchNorm keeps the running statistics it was trained with
        super().train(False)
        return self


class TorchreidCASN(nn.Module):
    """A torchreid model with CASN's BCE head (eq. 3) on its retrieval feature; the interface of :class:`CASN`."""

    def __init__(self, net: nn.Module, config: ForeignConfig) -> None:
        super().__init__()
        self.config = config
        self.backbone = TorchreidBackbone(net, config.arch)
        self.pool = GlobalAvgPool()
        self.feature_dim, difference = probe(self.backbone)
        if self.backbone.refusal is None and difference > PROBE_TOLERANCE:
            self.backbone.refusal = (f"torchreid architecture {config.arch!r}: the folded map does not reproduce "
                                     f"torchreid's feature (relative difference {difference:.2g})")
        if self.backbone.refusal is not None:
            log.warning("%s; feature ranking only", self.backbone.refusal)
        self.bce_head = ClassifierHead(self.feature_dim, 2, config.hidden, config.dropout)

    @property
    def explain_refusal(self) -> str | None:
        """Why maps cannot be explained exactly for this model (None when they can)."""
        return self.backbone.refusal

    def feature_map(self, images: torch.Tensor) -> torch.Tensor:
        """``A'``, the folded map whose average is torchreid's feature (module docstring)."""
        return self.backbone(images)

    def features(self, feature_map: torch.Tensor) -> torch.Tensor:
        """``f = GAP(A')``: torchreid's ``model.eval()(x)`` up to float rounding."""
        return self.pool(feature_map)

    def forward(self, images: torch.Tensor) -> ForwardOutput:
        maps = self.feature_map(images)
        features = self.features(maps.float())
        classifier = getattr(self.backbone.net, "classifier", None)
        logits = classifier(features) if isinstance(classifier, nn.Linear) else features
        return ForwardOutput(maps, features, logits)

    def pair_logits(self, features1: torch.Tensor, features2: torch.Tensor) -> torch.Tensor:
        """``z = BCE(f1 - f2)`` (eq. 3); ``z[:, 1]`` is the same-person score."""
        return self.bce_head(features1 - features2)


@torch.no_grad()
def probe(backbone: TorchreidBackbone) -> tuple[int, float]:
    """``(feature dimension, max |GAP(A') - f| / max |f|)`` on a seeded random batch, ``f`` torchreid's own."""
    generator = torch.Generator().manual_seed(0)
    device = next(backbone.net.parameters()).device
    images = torch.randn(2, 3, *PROBE_SIZE, generator=generator).to(device)
    reference = backbone.net(images)
    ours = backbone(images).mean(dim=(2, 3))
    if ours.shape != reference.shape:
        return reference.shape[1], float("inf")
    scale = reference.abs().max().clamp_min(torch.finfo(reference.dtype).tiny)
    return reference.shape[1], float((ours - reference).abs().max() / scale)


def fresh_bce_head(model: TorchreidCASN, seed: int = 0) -> None:
    """A newly initialised BCE head (seeded), to train from: the null head is a stationary point of SGD
    (zero weights on both layers give zero gradients to both)."""
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        model.bce_head = ClassifierHead(model.feature_dim, 2, model.config.hidden, model.config.dropout).to(
            next(model.parameters()).device)
    finally:
        torch.random.set_rng_state(generator_state)


def null_bce_head(model: TorchreidCASN) -> None:
    """Zero the BCE head: ``p(same) = 0.5`` and an all-zero indicator (eq. 4), so the Siamese maps are
    empty and ``d_a = 0``: what a model without a trained head (before ``casn fit-head``) shows."""
    with torch.no_grad():
        for parameter in model.bce_head.parameters():
            parameter.zero_()


def model_from_payload(payload: dict, path: str = "<checkpoint>") -> TorchreidCASN:
    """The :class:`TorchreidCASN` a CASN checkpoint of a torchreid model holds (``casn fit-head``'s output)."""
    from casn_core.models.torchreid_adapter import TorchreidError, build_net, fit_state

    try:
        config = ForeignConfig.from_dict(payload["model_config"])
    except (TypeError, ValueError) as exc:
        raise TorchreidError(f"checkpoint {path} has an invalid torchreid model config: {exc}") from None
    state = payload["model"]
    prefix = "backbone.net."
    net = build_net(config.arch, config.num_classes)
    fit_state(net, {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}, f"checkpoint {path}",
              config.arch)
    model = TorchreidCASN(net, config)
    head = {k[len("bce_head."):]: v for k, v in state.items() if k.startswith("bce_head.")}
    try:
        model.bce_head.load_state_dict(head)
    except RuntimeError as exc:
        raise TorchreidError(f"checkpoint {path}: its BCE head does not fit: {str(exc).splitlines()[0]}") from None
    return model.eval()


NO_HEAD_NOTE = ("no trained BCE head: the Siamese attention is empty (p(same) = 0.5, d_a = 0) and rankings are "
                "torchreid's feature ranking; `casn fit-head` trains one. The similarity maps are exact.")
"""What commands say about a plain torchreid checkpoint."""


def require_explainable(model: nn.Module) -> None:
    """Raise when ``model``'s maps cannot be explained exactly (a torchreid head that cannot be folded)."""
    from casn_core.models.torchreid_adapter import TorchreidError

    reason = getattr(model, "explain_refusal", None)
    if reason:
        raise TorchreidError(f"{reason}; the feature ranking (casn eval, casn search) still works")
