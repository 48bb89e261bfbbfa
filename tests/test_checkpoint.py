"""Checkpoints: round trip, atomic writes, and safe loading of untrusted or damaged files."""
from __future__ import annotations

import os
import pickle

import pytest
import torch

from casn_core.checkpoint import (
    CheckpointError, load_checkpoint, load_model, model_from_checkpoint, model_payload, save_checkpoint,
)
from casn_core.models import build_model


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_model("resnet18", num_classes=5)


@pytest.fixture(scope="module")
def saved(model, tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt") / "model.pth"
    save_checkpoint(path, model_payload(model, epoch=3))
    return path


def _assert_same_weights(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        assert torch.equal(sa[key], sb[key]), key


def test_round_trip(model, saved):
    payload = load_checkpoint(saved)
    assert payload["epoch"] == 3
    assert payload["model_config"]["backbone"] == "resnet18"
    _assert_same_weights(model, model_from_checkpoint(payload, saved))


def test_load_model_is_in_eval_mode(model, saved):
    loaded, payload = load_model(saved)
    assert not loaded.training
    assert all(not m.training for m in loaded.modules())
    assert payload["model_config"]["num_classes"] == 5
    _assert_same_weights(model, loaded)


def test_atomic_write_leaves_no_temp_files(model, tmp_path):
    path = tmp_path / "a.pth"
    save_checkpoint(path, model_payload(model))
    save_checkpoint(path, model_payload(model, epoch=1))  # overwrite
    assert sorted(os.listdir(tmp_path)) == ["a.pth"]
    assert load_checkpoint(path)["epoch"] == 1


def test_failed_save_keeps_previous_file(model, tmp_path, monkeypatch):
    path = tmp_path / "b.pth"
    save_checkpoint(path, model_payload(model, epoch=1))
    before = path.read_bytes()

    def broken_save(obj, f, *args, **kwargs):
        f.write(b"PK\x03\x04 half a checkpoint")  # partial output, then the crash
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, model_payload(model, epoch=2))
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["b.pth"]
    assert load_checkpoint(path)["epoch"] == 1


class _Exploit:
    def __init__(self, target: str) -> None:
        self.target = target

    def __reduce__(self):
        return os.system, (f"touch {self.target}",)


@pytest.mark.parametrize("writer", ["torch", "pickle"])
def test_code_running_pickle_is_refused(tmp_path, writer):
    marker = tmp_path / "pwned"
    path = tmp_path / f"evil_{writer}.pth"
    payload = {"format": "casn-checkpoint", "model": {}, "model_config": {}, "evil": _Exploit(str(marker))}
    if writer == "torch":
        torch.save(payload, path)
    else:
        with open(path, "wb") as handle:
            pickle.dump(payload, handle, protocol=2)
    with pytest.raises(CheckpointError, match="refusing") as info:
        load_checkpoint(path)
    assert str(path) in str(info.value)
    assert not marker.exists()


def test_truncated_file(saved, tmp_path):
    path = tmp_path / "truncated.pth"
    data = saved.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated.pth"):
        load_checkpoint(path)


def test_zero_byte_file(tmp_path):
    path = tmp_path / "empty.pth"
    path.write_bytes(b"")
    with pytest.raises(CheckpointError, match="empty.pth"):
        load_checkpoint(path)


def test_random_bytes(tmp_path):
    path = tmp_path / "noise.pth"
    path.write_bytes(os.urandom(4096))
    with pytest.raises(CheckpointError, match="noise.pth"):
        load_checkpoint(path)


def test_missing_file(tmp_path):
    with pytest.raises(CheckpointError, match="absent.pth"):
        load_checkpoint(tmp_path / "absent.pth")


def test_valid_torch_file_that_is_not_a_checkpoint(model, tmp_path):
    path = tmp_path / "state_dict.pth"
    torch.save(model.state_dict(), path)  # a plain state dict, not a CASN checkpoint
    with pytest.raises(CheckpointError, match="not a CASN checkpoint") as info:
        load_checkpoint(path)
    assert "state_dict.pth" in str(info.value)
    tensor_path = tmp_path / "tensor.pth"
    torch.save(torch.zeros(3), tensor_path)
    with pytest.raises(CheckpointError, match="not a CASN checkpoint"):
        load_checkpoint(tensor_path)


def test_backbone_mismatch_is_reported(saved):
    payload = load_checkpoint(saved)
    with pytest.raises(CheckpointError, match="backbone") as info:
        model_from_checkpoint(payload, saved, expect={"backbone": "pcb"})
    message = str(info.value)
    assert "resnet18" in message and "pcb" in message
    with pytest.raises(CheckpointError, match="backbone"):
        load_model(saved, expect={"backbone": "pcb"})


def test_export_drops_the_training_state_and_keeps_the_model(tmp_path):
    from casn_core.cli import main as cli_main

    torch.manual_seed(1)
    model = build_model("resnet18", num_classes=5)  # its own: the step below changes the weights
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.randn(2, 3, 64, 32)).logits.sum().backward()
    optimizer.step()  # momentum buffers: the part of a last.pt that only --resume needs
    optimizer.zero_grad(set_to_none=True)
    last = tmp_path / "last.pt"
    save_checkpoint(last, {**model_payload(model, epoch=7), "optimizer": optimizer.state_dict(),
                           "scheduler": {"last_epoch": 8}, "scaler": {}, "ranking": {"attention_weight": 0.5, "topk": 20}})
    shipped = tmp_path / "shipped.pt"
    assert cli_main(["export", "--checkpoint", str(last), "--out", str(shipped)]) == 0
    payload = load_checkpoint(shipped)
    assert not {"optimizer", "scheduler", "scaler"} & set(payload)
    assert payload["epoch"] == 7 and payload["ranking"] == {"attention_weight": 0.5, "topk": 20}
    _assert_same_weights(model, model_from_checkpoint(payload, shipped))
    assert shipped.stat().st_size < 0.6 * last.stat().st_size
    assert cli_main(["export", "--checkpoint", str(last), "--out", str(last)]) == 1  # would lose --resume
    assert "optimizer" in load_checkpoint(last)


def test_export_refuses_a_checkpoint_from_inside_an_epoch(model, tmp_path):
    from casn_core.checkpoint import PARTIAL_EPOCH_KEY, export_checkpoint

    last = tmp_path / "last.pt"
    save_checkpoint(last, {**model_payload(model, epoch=2), PARTIAL_EPOCH_KEY: {"epoch": 3, "step": 10}})
    with pytest.raises(CheckpointError, match="inside epoch 4"):
        export_checkpoint(last, tmp_path / "out.pt")
    assert not (tmp_path / "out.pt").exists()


def test_checkpoint_info_says_whether_anything_trained_the_bce_head(model):
    from casn_core.checkpoint import checkpoint_info

    def trained(**entries) -> bool:
        return checkpoint_info({**model_payload(model), **entries}).bce_head_trained

    assert trained(train_config={"losses": "ide,ia,sa"}) and trained(train_config={"losses": "ide,sa"})
    assert not trained(train_config={"losses": "ide"}) and not trained(train_config={"losses": "ide,ia"})
    assert trained(train_config={"losses": "ide"}, head_stage={"head_steps": 100})  # --head-steps
    assert trained()  # not trained here: nothing says otherwise
    assert not trained(bce_head="none", head_stage=None)  # a torchreid model read with --arch
