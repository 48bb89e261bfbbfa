"""Checkpoints: written atomically, read without ever unpickling arbitrary objects.

A checkpoint is one ``torch.save`` file holding only tensors and plain containers: the model's
weights, its :class:`~casn_core.models.casn.ModelConfig`, and (from training) optimizer and
scheduler state, epoch, the full training config. Reading uses ``torch.load(weights_only=True)``,
which refuses any pickle that would construct other objects or call functions.
"""
from __future__ import annotations

import os
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from casn_core.atomic import atomic_file
from casn_core.attention.siamese import DEFAULT_THRESHOLD
from casn_core.errors import CheckpointError
from casn_core.models.casn import CASN, ModelConfig
from casn_core.rankings import RankingSpec, paper_ranking, stored_ranking

FORMAT = "casn-checkpoint"
VERSION = 1




def save_checkpoint(path: str | os.PathLike, payload: dict[str, Any]) -> Path:
    """Write ``payload`` to ``path`` atomically: a temporary file in the same folder, fsync, rename.

    A crash at any point leaves either the previous file or the new one, never a partial file.
    """
    payload = {"format": FORMAT, "version": VERSION, **payload}
    with atomic_file(path, "wb") as handle:
        torch.save(payload, handle)
    return Path(path)


PARTIAL_EPOCH_KEY = "partial_epoch"
"""Where a training checkpoint written between two steps says which step comes next (``--save-every``)."""

TRAINING_STATE_KEYS = ("optimizer", "scheduler", "scaler", PARTIAL_EPOCH_KEY)
"""What only ``--resume`` reads: dropped by :func:`export_checkpoint`."""


def export_checkpoint(source: str | os.PathLike, out: str | os.PathLike) -> dict[str, Any]:
    """Write ``source`` without its training state (optimizer momentum, schedule, loss scaler, position
    inside an epoch) to ``out``: the file to ship, about half the size of a ``last.pt``, which evaluates,
    explains and serves the app alike but cannot ``--resume``. Returns the written payload."""
    source, out = Path(source), Path(out)
    if source.resolve() == out.resolve():
        raise CheckpointError(f"export would overwrite {source} with a copy that cannot resume; choose another --out")
    payload = load_checkpoint(source)
    kept = {k: v for k, v in payload.items() if k not in TRAINING_STATE_KEYS + ("format", "version")}
    if PARTIAL_EPOCH_KEY in payload:
        raise CheckpointError(f"{source} was written inside epoch {payload[PARTIAL_EPOCH_KEY]['epoch'] + 1} "
                              f"(--save-every); resume it to the end of an epoch before exporting")
    save_checkpoint(out, kept)
    return kept


def remove_stale_temporaries(folder: str | os.PathLike) -> list[Path]:
    """Delete temporary files that a process killed inside :func:`save_checkpoint` left behind.

    Only names of the form ``.NAME.pt.XXXXXXXX.tmp`` are touched; the checkpoints themselves never are.
    """
    removed = []
    for path in Path(folder).glob(".*.pt.*.tmp"):
        path.unlink(missing_ok=True)
        removed.append(path)
    return removed


def _unpickler_reason(exc: Exception) -> str:
    """The line of a weights-only unpickling error that says what was refused (not torch's advice to
    retry with ``weights_only=False``)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    for line in lines:
        if line.startswith(("Trying to load unsupported", "Unsupported", "Can only")):
            return line
    detail = [line for line in lines if not line.startswith(("Weights only load failed", "Please file", "Check the"))]
    return detail[0] if detail else (lines[0] if lines else type(exc).__name__)


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a CASN checkpoint safely; every failure is a :class:`CheckpointError` naming the file."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    if path.stat().st_size == 0:
        raise CheckpointError(f"checkpoint {path} is empty (0 bytes): truncated or never written")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        reason = _unpickler_reason(exc)
        if "Unsupported operand" in reason:  # damaged bytes, or a pickle protocol torch.save never writes
            raise CheckpointError(
                f"refusing to load {path}: it is truncated or corrupted, or not a torch.save checkpoint "
                f"({reason}); nothing in it was run"
            ) from None
        raise CheckpointError(
            f"refusing to load {path}: it contains pickled Python objects other than tensors and plain "
            f"containers, which could run code when unpickled ({reason})"
        ) from None
    except Exception as exc:  # weights_only unpickling runs no code: anything else is a damaged file
        raise CheckpointError(f"checkpoint {path} is truncated or corrupted: {type(exc).__name__}: {exc}") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a CASN checkpoint (no '{FORMAT}' format marker)")
    for key in ("model", "model_config"):
        if key not in payload:
            raise CheckpointError(f"checkpoint {path} lacks its '{key}' entry")
    return payload


def model_from_checkpoint(
    payload: dict[str, Any], path: str | os.PathLike = "<checkpoint>", expect: dict[str, Any] | None = None
) -> CASN:
    """Rebuild the model stored in a loaded checkpoint.

    ``expect`` (e.g. ``{"backbone": "pcb", "num_classes": 751}``) is checked first, so that a
    checkpoint of another backbone or identity count is reported as such rather than as a
    tensor-shape error. A checkpoint that wraps a torchreid model (``casn fit-head``) is rebuilt by
    :func:`casn_core.models.foreign.model_from_payload`.
    """
    if (payload.get("model_config") or {}).get("library") == "torchreid":
        from casn_core.models.foreign import model_from_payload

        model = model_from_payload(payload, str(path))
        for key, wanted in (expect or {}).items():
            found = getattr(model.config, key, None)
            if found != wanted:
                raise CheckpointError(f"checkpoint {path} wraps {model.config.backbone} ({key}={found!r}), "
                                      f"but {key}={wanted!r} is needed here")
        return model
    try:
        config = ModelConfig(**payload["model_config"])
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"checkpoint {path} has an invalid model config: {exc}") from None
    for key, wanted in (expect or {}).items():
        found = getattr(config, key)
        if found != wanted:
            raise CheckpointError(f"checkpoint {path} was trained with {key}={found!r}, but {key}={wanted!r} is needed here")
    model = CASN(config, pretrained="none")
    try:
        model.load_state_dict(payload["model"])
    except RuntimeError as exc:
        first = str(exc).splitlines()[0]
        raise CheckpointError(
            f"checkpoint {path} does not match its own model config ({config.backbone}, "
            f"{config.num_classes} identities): {first}"
        ) from None
    return model


def load_model(
    path: str | os.PathLike, device: str | torch.device = "cpu", expect: dict[str, Any] | None = None,
    arch: str | None = None, input_size: tuple[int, int] | str | None = None,
) -> tuple[CASN, dict[str, Any]]:
    """Load a checkpoint and return ``(model in eval mode on device, checkpoint payload)``.

    ``arch`` (a torchreid model name) reads ``path`` as a torchreid checkpoint instead, at
    ``input_size`` (``(H, W)`` or ``"HxW"``, default 256 x 128): :func:`load_torchreid`.
    """
    if arch is not None:
        model, payload = load_torchreid(str(path), arch, input_size)
        return model.to(device).eval(), payload
    payload = load_checkpoint(path)
    model = model_from_checkpoint(payload, path, expect).to(device).eval()
    return model, payload


DEFAULT_INPUT_SIZE = (288, 144)
"""The paper's IDE input (sec. 4) and training's default; used when a checkpoint records no input size."""


@dataclass(frozen=True)
class CheckpointInfo:
    """What inference needs to know of a checkpoint, read once instead of ``payload.get`` chains.

    ``attention_weight`` is w in the paper's ranking distance ``d = d_f + w d_a`` (sec. 4): the
    paper fixes w = 1; a checkpoint may store a (w, K) pair validated on held-out identities
    (``casn tune``, ``train --val-ids``), ``tuned``, which inference uses as one pair unless the user
    overrides it. ``topk`` is the tuned K (``None``: all, or nothing stored; ``tuned`` tells which).
    """

    backbone: str
    input_size: tuple[int, int]
    threshold: float
    attention_weight: float
    topk: int | None
    num_classes: int
    attention_weight_source: str
    tuned: RankingSpec | None = None
    has_bce_head: bool = True
    """False for a plain torchreid checkpoint read with ``--arch``: its null BCE head gives no Siamese
    attention (``casn fit-head`` trains one)."""
    bce_head_trained: bool = True
    """Whether anything trained the BCE head (eq. 3): ``L_sa`` in the losses, or a head-only stage
    (``--head-steps``, ``casn fit-head``). An IDE or IDE+IA model keeps its random initial head, whose
    p(same), Siamese attention and d_a carry no learned signal."""

    def default_ranking(self) -> RankingSpec:
        """The ranking inference uses by default: the stored (w, K) pair, else the paper's (w = 1, K = all)."""
        return self.tuned if self.tuned is not None else paper_ranking(self.threshold)

    @classmethod
    def from_payload(cls, payload: dict[str, Any]) -> "CheckpointInfo":
        train_config = payload.get("train_config") or {}
        size = payload.get("input_size") or (train_config.get("height"), train_config.get("width"))
        if size[0] is None or size[1] is None:
            size = DEFAULT_INPUT_SIZE
        model_config = payload.get("model_config") or {}
        tuned = payload.get("ranking") or {}
        weight = tuned.get("attention_weight")
        threshold = float(train_config.get("threshold", DEFAULT_THRESHOLD))
        ranking = stored_ranking(tuned, threshold)
        return cls(
            backbone=str(model_config.get("backbone", "unknown")),
            input_size=(int(size[0]), int(size[1])),
            threshold=threshold,
            attention_weight=1.0 if weight is None else float(weight),
            topk=None if ranking is None else ranking.topk,
            num_classes=int(model_config.get("num_classes", 0)),
            attention_weight_source="the paper's default" if weight is None else str(
                tuned.get("source", "stored in the checkpoint")),
            tuned=ranking,
            has_bce_head=payload.get("bce_head") != "none",
            bce_head_trained=_bce_head_trained(payload),
        )


def _bce_head_trained(payload: dict[str, Any]) -> bool:
    if payload.get("bce_head") == "none":
        return False
    losses = (payload.get("train_config") or {}).get("losses")
    if losses is None or payload.get("head_stage"):  # not trained here (nothing to go by), or a head stage ran
        return True
    return "sa" in str(losses).split(",")


def checkpoint_info(payload: dict[str, Any]) -> CheckpointInfo:
    """:class:`CheckpointInfo` of a loaded checkpoint payload."""
    return CheckpointInfo.from_payload(payload)


def model_payload(model: CASN, **extra: Any) -> dict[str, Any]:
    """The minimal checkpoint content of a model: its weights and config (plus ``extra`` entries)."""
    module = model.module if hasattr(model, "module") else model
    return {"model": module.state_dict(), "model_config": module.config.to_dict(), **extra}


NO_HEAD_RANKING = {"attention_weight": 0.0, "topk": 100,
                   "source": "no trained BCE head (casn fit-head trains one): the feature ranking"}
"""The stored ranking of a plain torchreid checkpoint: w = 0, the feature ranking (the null head gives d_a = 0)."""


def load_torchreid(path: str, arch: str, input_size: tuple[int, int] | str | None = None) -> tuple[CASN, dict]:
    """``(model in eval mode, payload)`` of a torchreid checkpoint (its ``state_dict``) for ``arch``: a
    :class:`casn_core.models.foreign.TorchreidCASN`, which presents :class:`CASN`'s interface.

    The model gets a null BCE head (:func:`null_bce_head`) and the payload a w = 0 ranking, so every
    command ranks by torchreid's feature until ``casn fit-head`` trains a head. A CASN checkpoint
    written by ``casn fit-head`` is accepted too when it wraps ``arch``.
    """
    from casn_core.models.foreign import DEFAULT_INPUT_SIZE, ForeignConfig, TorchreidCASN, null_bce_head
    from casn_core.models.torchreid_adapter import (
        TorchreidError, build_net, fit_state, num_classes_of, parse_input_size, read_payload, state_dict_of,
    )

    payload = read_payload(path)
    if isinstance(payload, dict) and payload.get("format") == FORMAT:
        model = model_from_checkpoint(payload, path)
        wrapped = getattr(model.config, "arch", model.config.backbone)
        if wrapped != arch:
            raise TorchreidError(f"{path} is a CASN checkpoint of {model.config.backbone}, not of torchreid's {arch}")
        return model.eval(), payload
    state = state_dict_of(payload, path)
    net = build_net(arch, num_classes_of(state))
    fit_state(net, state, f"checkpoint {path}", arch)
    size = DEFAULT_INPUT_SIZE if input_size is None else parse_input_size(input_size)
    config = ForeignConfig(arch, size, num_classes_of(state))
    model = TorchreidCASN(net, config)
    null_bce_head(model)
    payload = {"format": FORMAT, "version": VERSION, "model_config": config.to_dict(),
               "input_size": list(config.input_size), "ranking": dict(NO_HEAD_RANKING), "bce_head": "none",
               "torchreid_checkpoint": str(path)}
    return model.eval(), payload
