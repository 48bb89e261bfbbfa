"""The checkpoints in ``checkpoints/``: each loads safely, is small, carries no training state, runs at its
own input size, stores a validated ranking, and is described in ``checkpoints/README.md``."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from casn_core.checkpoint import TRAINING_STATE_KEYS, checkpoint_info, load_model

CHECKPOINTS = Path(__file__).resolve().parents[1] / "checkpoints"
SHIPPED = sorted(CHECKPOINTS.glob("*.pt"))
MAX_BYTES = 20 * 2**20


def test_the_repository_ships_checkpoints():
    assert SHIPPED, f"no checkpoint in {CHECKPOINTS}"


@pytest.mark.parametrize("path", SHIPPED, ids=[p.name for p in SHIPPED])
def test_a_shipped_checkpoint_is_small_loads_and_runs(path: Path):
    assert path.stat().st_size < MAX_BYTES, f"{path.name}: {path.stat().st_size / 2**20:.1f} MB"
    model, payload = load_model(path)
    assert not set(TRAINING_STATE_KEYS) & set(payload), f"{path.name} still holds training state"
    info = checkpoint_info(payload)
    assert info.tuned is not None, f"{path.name} has no validated (w, K)"
    assert info.bce_head_trained
    height, width = info.input_size
    with torch.no_grad():
        out = model(torch.zeros(2, 3, height, width))
    assert out.features.shape[0] == 2 and torch.isfinite(out.features).all()
    assert out.logits.shape == (2, info.num_classes)
    assert path.name in (CHECKPOINTS / "README.md").read_text(), f"checkpoints/README.md does not describe {path.name}"
