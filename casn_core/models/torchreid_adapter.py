"""Loading torchreid (deep-person-reid) models: the import, the architecture table, the checkpoint.

torchreid's image models end the way CASN's do (paper sec. 3.1.1, "feature after conv5"): a last
convolutional map ``A``, global average pooling, then an optional head of Linear, BatchNorm1d and
ReLU layers (``fc``; OSNet: 512 units, ``resnet50_fc512``; none for ``resnet50`` and
``mobilenetv2_x1_0``). :data:`ARCHITECTURES` says, per family, how to get ``A`` and which modules are
the pooling and the head (torchreid's ``forward``: ``featuremaps -> global_avgpool -> view -> fc``);
:func:`head_layers` checks that the pooling is an average and every head layer is one the exact
folding of :mod:`casn_core.models.foreign` passes, and names the first layer that is not.

PyPI's ``torchreid==0.2.5`` packages the models as ``torchreid.reid.models`` (it imports scipy,
gdown and tensorboard without declaring them); a source install of deep-person-reid exposes
``torchreid.models``. Both build an architecture by name, and with ``pretrained=False`` download
nothing. torchreid checkpoints are ``{"state_dict", "epoch", "rank1", "optimizer"}`` (keys
``module.``-prefixed when saved from ``nn.DataParallel``) or a bare state dict; they are read with
``torch.load(weights_only=True)`` and any object other than tensors and plain containers (a numpy
``rank1``, an optimizer's custom object) is replaced by an inert placeholder, never constructed.
"""
from __future__ import annotations

import argparse
import contextlib
import importlib
import io
import logging
import os
import pickle
import warnings
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from casn_core.errors import CheckpointError

log = logging.getLogger(__name__)

INSTALL_HINT = ('pip install -e ".[torchreid]" (torchreid==0.2.5 from PyPI with scipy, gdown and tensorboard), '
                "or a source install of deep-person-reid")


DEFAULT_SIZE_TEXT = "256x128"
"""torchreid's default input size (height x width) for person re-id."""


def parse_input_size(text: str | tuple[int, int]) -> tuple[int, int]:
    """``"256x128"`` (height x width) -> ``(256, 128)``; a pair passes through."""
    if isinstance(text, (tuple, list)):
        height, width = (int(v) for v in text)
    else:
        parts = str(text).lower().replace(" ", "").split("x")
        if len(parts) != 2 or not all(p.isdigit() for p in parts):
            raise ValueError(f"input size must be HxW (e.g. {DEFAULT_SIZE_TEXT}), got {text!r}")
        height, width = int(parts[0]), int(parts[1])
    if height < 1 or width < 1:
        raise ValueError(f"input size must be positive, got {height}x{width}")
    return height, width


def add_arch_arguments(parser: argparse.ArgumentParser) -> None:
    """``--arch`` and ``--input-size``: read ``--checkpoint`` as a torchreid checkpoint of that architecture."""
    parser.add_argument("--arch", default=None,
                        help="read --checkpoint as a torchreid checkpoint of this model name (e.g. osnet_x1_0, "
                             "resnet50_fc512); needs the torchreid extra")
    parser.add_argument("--input-size", type=parse_input_size, default=None,
                        help=f"with --arch: HxW the model was trained at (default {DEFAULT_SIZE_TEXT}, torchreid's)")


class TorchreidError(CheckpointError):
    """torchreid is missing, the architecture is unknown, or a checkpoint does not fit it."""


def torchreid_models() -> ModuleType:
    """torchreid's model package: ``torchreid.reid.models`` (PyPI 0.2.5) or ``torchreid.models`` (source)."""
    errors = []
    for name in ("torchreid.reid.models", "torchreid.models"):
        try:
            with warnings.catch_warnings():
                # torchreid warns at import that its Cython ranking is unavailable; we use none of it
                warnings.simplefilter("ignore", UserWarning)
                module = importlib.import_module(name)
        except ImportError as exc:
            errors.append(f"{name}: {exc}")
            continue
        if hasattr(module, "build_model"):
            return module
        errors.append(f"{name}: has no build_model")
    raise TorchreidError(f"torchreid is not importable ({'; '.join(errors)}); install it: {INSTALL_HINT}")


def _dense_map(net: nn.Module, images: torch.Tensor) -> torch.Tensor:
    # torchreid's DenseNet applies the final ReLU in forward, after self.features
    return F.relu(net.features(images))


def _features_attr(net: nn.Module, images: torch.Tensor) -> torch.Tensor:
    return net.features(images)


def _featuremaps(net: nn.Module, images: torch.Tensor) -> torch.Tensor:
    return net.featuremaps(images)


@dataclass(frozen=True)
class ArchEntry:
    """Where ``A``, the pooling and the head of one torchreid family are (its ``forward``)."""

    feature_map: Callable[[nn.Module, torch.Tensor], torch.Tensor]
    pool: str
    head: str | None


_GAP_FC = ArchEntry(_featuremaps, "global_avgpool", "fc")
ARCHITECTURES: dict[str, ArchEntry | None] = {
    # longest prefix first; read from each family's forward in torchreid/reid/models
    "resnet50_ibn_": ArchEntry(_featuremaps, "avgpool", "fc"),
    "resnet50mid": None,  # pools mid-level features as well (not one map)
    "resnet": _GAP_FC, "resnext": _GAP_FC, "se_res": _GAP_FC, "osnet": _GAP_FC, "mobilenetv2": _GAP_FC,
    "xception": _GAP_FC, "squeezenet": ArchEntry(_features_attr, "global_avgpool", "fc"),
    "densenet": ArchEntry(_dense_map, "global_avgpool", "fc"),
    "shufflenet_v2": ArchEntry(_featuremaps, "global_avgpool", None),
    "inceptionresnetv2": ArchEntry(_featuremaps, "global_avgpool", None),
}
"""Family prefix -> :class:`ArchEntry`; ``None`` or no prefix: the retrieval feature is not the average
of one map followed by a head (PCB's normalised parts, HACNN, MLFN, MuDeep, ...)."""


def arch_entry(arch: str) -> ArchEntry | None:
    """The table entry of ``arch`` (longest matching prefix), or None when the table has none."""
    for prefix in sorted(ARCHITECTURES, key=len, reverse=True):
        if arch.startswith(prefix):
            return ARCHITECTURES[prefix]
    return None


def build_net(arch: str, num_classes: int) -> nn.Module:
    """torchreid's ``build_model(arch)`` with random weights (``pretrained=False``: no download), in eval mode."""
    models = torchreid_models()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            net = models.build_model(arch, num_classes=num_classes, loss="softmax", pretrained=False, use_gpu=False)
    except KeyError:
        names = getattr(models, "__model_factory", None) or {}
        known = ", ".join(sorted(names)) if names else "see torchreid.models.show_avai_models()"
        raise TorchreidError(f"torchreid has no architecture {arch!r}; known: {known}") from None
    return net.eval()


def head_layers(net: nn.Module, arch: str) -> tuple[list[tuple[str, nn.Module]], str | None]:
    """``(head layers by name, refusal)``: the layers after the pooling, and why they cannot be folded
    exactly (a message naming the layer), or None when they can."""
    entry = arch_entry(arch)
    if entry is None:
        return [], (f"torchreid architecture {arch!r}: its retrieval feature is not the global average of one "
                    f"convolutional map followed by a Linear/BatchNorm/ReLU head (not in the table of "
                    f"casn_core.models.torchreid_adapter)")
    pool = getattr(net, entry.pool, None)
    reason = _pool_refusal(entry.pool, pool)
    if reason:
        return [], f"torchreid architecture {arch!r}: {reason}"
    head = getattr(net, entry.head, None) if entry.head else None
    if head is None:
        return [], None
    layers = list(head.named_children()) if isinstance(head, nn.Sequential) else [("", head)]
    named = [(f"{entry.head}.{name}" if name else entry.head, layer) for name, layer in layers]
    for name, layer in named:
        reason = _layer_refusal(layer)
        if reason:
            return named, (f"torchreid architecture {arch!r}: head layer '{name}' ({type(layer).__name__}) {reason}; "
                           f"the similarity decomposition and the Siamese attention need a head that is affine for "
                           f"each image (Linear, BatchNorm1d with running statistics, ReLU, Dropout)")
    return named, None


def _pool_refusal(name: str, pool: nn.Module | None) -> str | None:
    if isinstance(pool, nn.AdaptiveAvgPool2d) and pool.output_size in (1, (1, 1)):
        return None
    p = getattr(pool, "p", None)
    if p is not None and not isinstance(p, (int, float)):
        p = float(torch.as_tensor(p).detach().flatten()[0]) if torch.as_tensor(p).numel() == 1 else None
    if pool is not None and p == 1:  # GeM at p = 1 is the mean (the load-time check compares the features)
        return None
    what = "missing" if pool is None else f"{type(pool).__name__}" + (f", p={p:g}" if isinstance(p, float) else "")
    return (f"pooling layer '{name}' ({what}) is not a global average: f is not the mean of the map, so the "
            f"similarity decomposition and the Siamese attention would not be exact")


def _layer_refusal(layer: nn.Module) -> str | None:
    if isinstance(layer, (nn.Linear, nn.ReLU, nn.Dropout, nn.Identity, nn.Flatten)):
        return None
    if isinstance(layer, nn.BatchNorm1d):
        return None if layer.track_running_stats and layer.running_var is not None else \
            "normalises with batch statistics at test time"
    return "is not Linear, BatchNorm1d, ReLU or Dropout"


class _Skipped:
    """Stands in for an object a torchreid checkpoint pickled (a numpy ``rank1``, an optimizer's custom
    class); it takes any arguments and state and does nothing, so no code of the checkpoint runs."""

    name = "?"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __setstate__(self, state: Any) -> None:
        pass

    def __repr__(self) -> str:
        return f"<skipped {self.name}>"


def _placeholders(names: list[str]) -> list[tuple[type, str]]:
    return [(type("Skipped", (_Skipped,), {"name": name}), name) for name in names]


def read_payload(path: str | os.PathLike) -> Any:
    """What ``torch.save`` wrote to ``path``, read with ``weights_only=True``; objects other than tensors
    and plain containers come back as inert placeholders (their types are logged), never constructed."""
    path = Path(path)
    if not path.is_file():
        raise TorchreidError(f"checkpoint {path} does not exist")
    try:
        unsafe = list(torch.serialization.get_unsafe_globals_in_checkpoint(str(path)))
    except Exception:  # legacy (non-zip) files cannot be listed: the weights-only load decides alone
        unsafe = []
    try:
        with torch.serialization.safe_globals(_placeholders(unsafe)) if unsafe else contextlib.nullcontext():
            payload = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise TorchreidError(f"refusing to load {path}: it holds objects a weights-only load cannot stand in "
                             f"for ({first})") from None
    except Exception as exc:
        raise TorchreidError(f"checkpoint {path} is truncated or corrupted: {type(exc).__name__}: {exc}") from None
    if unsafe:
        log.info("%s: entries made of %s were skipped (never constructed)", path, ", ".join(unsafe))
    return payload


def state_dict_of(payload: Any, path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The model weights of a torchreid checkpoint's payload (``state_dict`` or a bare state dict),
    without the ``module.`` prefix ``nn.DataParallel`` adds."""
    state = payload.get("state_dict", payload) if isinstance(payload, dict) else None
    if not isinstance(state, dict) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise TorchreidError(f"{path} is not a torchreid checkpoint: no 'state_dict' of tensors, nor a bare state dict")
    if all(key.startswith("module.") for key in state):
        state = {key[len("module."):]: value for key, value in state.items()}
    return dict(state)


def num_classes_of(state: dict[str, torch.Tensor]) -> int:
    """The identity count of the classifier a torchreid state dict holds (1 when it has none)."""
    weight = state.get("classifier.weight")
    return int(weight.shape[0]) if weight is not None and weight.ndim == 2 else 1


def load_net(path: str | os.PathLike, arch: str) -> nn.Module:
    """The torchreid model ``arch`` with the weights of the checkpoint at ``path``, in eval mode."""
    state = state_dict_of(read_payload(path), path)
    net = build_net(arch, num_classes_of(state))
    fit_state(net, state, f"checkpoint {path}", arch)
    return net


def fit_state(net: nn.Module, state: dict[str, torch.Tensor], what: str, arch: str) -> None:
    """Load ``state`` into ``net`` strictly; a mismatch names the keys (missing, unexpected, other shape)."""
    own = net.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in own
              if k in state and state[k].shape != own[k].shape]
    if missing or unexpected or shapes:
        def listing(keys: list[str]) -> str:
            return ", ".join(keys[:6]) + (f" and {len(keys) - 6} more" if len(keys) > 6 else "")

        parts = [f"{label} ({len(keys)}): {listing(keys)}" for label, keys in
                 (("missing", missing), ("unexpected", unexpected), ("other shape (file vs model)", shapes)) if keys]
        raise TorchreidError(f"{what} does not fit torchreid's {arch}: " + "; ".join(parts)
                             + " -- is --arch the architecture it was trained with?")
    net.load_state_dict(state)


def save_torchreid_checkpoint(net: nn.Module, path: str | os.PathLike, prefix: str = "", **extra: Any) -> Path:
    """Write ``net`` the way torchreid's ``save_checkpoint`` does (``{"state_dict", "epoch", "rank1", ...}``);
    ``prefix="module."`` as from ``nn.DataParallel``. For tests and examples."""
    state = {prefix + key: value for key, value in net.state_dict().items()}
    buffer = io.BytesIO()
    torch.save({"state_dict": state, "epoch": 0, "rank1": 0.0, **extra}, buffer)
    Path(path).write_bytes(buffer.getvalue())
    return Path(path)
