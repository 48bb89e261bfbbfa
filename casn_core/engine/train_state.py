"""What a training run holds while it runs: its context, data and state, and what it returns."""
from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import torch

from casn_core.models.casn import CASN, ModelConfig


@dataclass
class TrainResult:
    """What :func:`train` returns: the last epoch's metrics record and the trained model."""

    record: dict
    model: CASN


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite; training stopped without overwriting the last good checkpoint."""


def relabel(records: list) -> tuple[list, int]:
    """Identity labels 0..C-1 in sorted pid order (after any images were dropped)."""
    pids = sorted({r.pid for r in records})
    index = {pid: i for i, pid in enumerate(pids)}
    return [replace(r, label=index[r.pid]) for r in records], len(pids)


@dataclass
class RunContext:
    """Where and how this process trains: rank, world size, device, run folder."""

    rank: int
    world: int
    device: torch.device
    run_dir: Path
    owns_group: bool

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def last_path(self) -> Path:
        return self.run_dir / "last.pt"


@dataclass
class TrainData:
    """Training pairs, their records and identity count, and the validation split (``--val-ids``)."""

    pairs: object
    records: list
    num_classes: int
    val_query: list
    val_gallery: list


@dataclass
class TrainState:
    """What an epoch updates: model, optimizer, scheduler, the next epoch and the best test mAP."""

    model: CASN
    model_config: ModelConfig
    optimizer: torch.optim.Optimizer
    scheduler: object
    start_epoch: int = 0
    best_map: float = -1.0
    head_done: bool = False  # --head-steps already applied to the weights in last.pt
    partial: dict | None = None
    """Where ``last.pt`` stopped inside an epoch (``casn_core.engine.epoch.PARTIAL_KEY``), until that epoch runs."""
    scaler: torch.amp.GradScaler | None = None
    """Loss scaling for ``--amp fp16`` (fp16 gradients underflow without it); disabled otherwise, where
    its ``scale``/``step`` are the plain ``backward``/``optimizer.step``."""
