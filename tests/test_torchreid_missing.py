"""Without torchreid installed, ``--arch`` is a clear error naming the extra to install (runs everywhere)."""
from __future__ import annotations

import sys

import pytest
import torch

from casn_core.checkpoint import CheckpointError, load_model
from casn_core.cli import main


@pytest.fixture
def no_torchreid(monkeypatch):
    """torchreid as if not installed: a ``None`` entry makes ``import`` raise ImportError."""
    for name in [n for n in sys.modules if n == "torchreid" or n.startswith("torchreid.")]:
        monkeypatch.delitem(sys.modules, name)
    for name in ("torchreid", "torchreid.reid", "torchreid.reid.models", "torchreid.models"):
        monkeypatch.setitem(sys.modules, name, None)


def test_load_model_names_the_extra(no_torchreid, tmp_path):
    path = tmp_path / "model.pth.tar"
    torch.save({"state_dict": {"conv1.weight": torch.zeros(1)}}, path)
    with pytest.raises(CheckpointError, match=r"torchreid is not importable .*pip install -e \"\.\[torchreid\]\""):
        load_model(path, arch="osnet_x1_0")


def test_fit_head_command_reports_it(no_torchreid, tmp_path, capsys):
    path = tmp_path / "model.pth.tar"
    torch.save({"state_dict": {"conv1.weight": torch.zeros(1)}}, path)
    code = main(["fit-head", "--checkpoint", str(path), "--arch", "osnet_x1_0", "--data", str(tmp_path),
                 "--out", str(tmp_path / "head.pt")])
    assert code == 1
    assert "torchreid is not importable" in capsys.readouterr().err
