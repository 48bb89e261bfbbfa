"""Crash safety and bad data in training (issue: Hardening, items 2 and 3)."""
from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import casn_core.engine.train as train_module
from casn_core.checkpoint import load_checkpoint
from casn_core.engine.train import NonFiniteLossError, TrainConfig, train

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory) -> Path:
    from casn_core.data.synth import SynthSpec, generate_dataset

    root = tmp_path_factory.mktemp("tiny")
    generate_dataset(root, SynthSpec(num_ids=8, num_cameras=2, images_per_id=4, seed=1, height=64, width=32))
    return root


def _config(data: Path, out: Path, **overrides) -> TrainConfig:
    base = dict(data=str(data), out=str(out), backbone="resnet18", losses="ide,ia,sa", epochs=2, batch_size=2,
                pretrained="none", device="cpu", height=64, width=32, max_steps_per_epoch=2)
    base.update(overrides)
    return TrainConfig(**base)


def test_nan_loss_stops_with_the_step_and_keeps_the_last_good_checkpoint(tiny_data, tmp_path, monkeypatch):
    calls = {"n": 0}
    real = train_module.casn_loss

    def poisoned(*args, **kwargs):
        terms = real(*args, **kwargs)
        calls["n"] += 1
        if calls["n"] == 4:  # epoch 2, step 2
            terms.total = terms.total * float("nan")
        return terms

    monkeypatch.setattr(train_module, "casn_loss", poisoned)
    with pytest.raises(NonFiniteLossError, match="epoch 2, step 2"):
        train(_config(tiny_data, tmp_path / "run"), progress=False)
    payload = load_checkpoint(tmp_path / "run" / "last.pt")
    assert payload["epoch"] == 0
    assert all(torch.isfinite(v).all() for v in payload["model"].values() if v.is_floating_point())


def _broken_copy(source: Path, target: Path) -> list[Path]:
    import shutil

    shutil.copytree(source, target)
    train_dir = target / "bounding_box_train"
    zero = train_dir / "0001_c1s1_999998_00.jpg"
    zero.write_bytes(b"")
    garbage = train_dir / "0001_c2s1_999999_00.jpg"
    garbage.write_bytes(b"\xff\xd8\xff not really a jpeg")
    return [zero, garbage]


def test_bad_images_stop_before_training_and_can_be_skipped(tiny_data, tmp_path):
    data = tmp_path / "data"
    bad = _broken_copy(tiny_data, data)
    with pytest.raises(ValueError, match="unreadable") as info:
        train(_config(data, tmp_path / "run"), progress=False)
    for path in bad:
        assert str(path) in str(info.value)
    assert not (tmp_path / "run" / "last.pt").exists()
    result = train(_config(data, tmp_path / "run2", epochs=1, skip_bad_images=True), progress=False)
    assert result.record["steps"] == 2


@pytest.mark.slow
def test_sigkill_mid_training_leaves_a_loadable_checkpoint_and_resume_finishes(tiny_data, tmp_path):
    run = tmp_path / "run"
    command = [sys.executable, "-m", "casn_core", "train", "--data", str(tiny_data), "--out", str(run),
               "--backbone", "resnet18", "--pretrained", "none", "--epochs", "6", "--batch-size", "2",
               "--height", "64", "--width", "32", "--device", "cpu", "--max-steps-per-epoch", "3"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not (run / "last.pt").exists() and time.time() < deadline and process.poll() is None:
        time.sleep(0.05)
    assert (run / "last.pt").exists(), "no checkpoint appeared"
    time.sleep(random.Random(os.getpid()).uniform(0.0, 1.5))  # somewhere inside a later epoch or a save
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)
    payload = load_checkpoint(run / "last.pt")  # loadable whatever the moment of the kill
    (run / ".last.pt.deadbeef.tmp").write_bytes(b"partial")  # as a kill inside save_checkpoint leaves
    done = payload["epoch"] + 1
    assert 1 <= done <= 6
    resumed = subprocess.run(command + ["--resume"], env=env, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert load_checkpoint(run / "last.pt")["epoch"] == 5
    assert not list(run.glob(".*.tmp"))  # stale temporaries are cleaned up on start
    epochs = [json.loads(line)["epoch"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert epochs == list(range(1, 7))  # each epoch once: resume drops records past the checkpoint
