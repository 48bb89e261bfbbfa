"""Every checkpoint loader refuses hostile, damaged and mismatched files.

``tests/test_checkpoint.py`` covers :func:`casn_core.checkpoint.load_checkpoint` itself; this file
checks the loaders built on it, end to end: ``python -m casn_core eval`` and ``explain`` (through
``casn_core.cli.main``), the app (``app.state.load_state`` and ``app.py``'s ``main``), and
``train(..., resume=True)``. The app's refusal through a running server is in
``tests/test_app_client.py::test_app_refuses_a_pickle_checkpoint``; here the app's loader is also
checked for the missing part, that nothing ran. Uploads over the size limit: refused before decoding.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from casn_core.checkpoint import CheckpointError, load_checkpoint, model_from_checkpoint, model_payload, save_checkpoint
from casn_core.cli import main as cli_main
from casn_core.models import build_model

H, W = 64, 32


class _Exploit:
    """Unpickling this runs ``touch TARGET`` (what a hostile checkpoint would do)."""

    def __init__(self, target: Path) -> None:
        self.target = str(target)

    def __reduce__(self):
        return os.system, (f"touch {self.target}",)


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory) -> Path:
    from casn_core.data.synth import SynthSpec, generate_dataset

    root = tmp_path_factory.mktemp("tiny-data")
    generate_dataset(root, SynthSpec(num_ids=8, num_cameras=2, images_per_id=4, seed=3, height=H, width=W))
    return root


@pytest.fixture(scope="module")
def good_checkpoint(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    model = build_model("mobilenet_v2", num_classes=4, pretrained="none").eval()
    path = tmp_path_factory.mktemp("good") / "good.pt"
    return save_checkpoint(path, model_payload(model, input_size=[H, W]))


@pytest.fixture
def evil(tmp_path) -> tuple[Path, Path]:
    """``(checkpoint that would run code, marker file that running it creates)``."""
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save({"format": "casn-checkpoint", "model": {}, "model_config": {}, "evil": _Exploit(marker)}, path)
    return path, marker


def _images(data: Path) -> tuple[str, str]:
    query = sorted((data / "query").iterdir())
    return str(query[0]), str(query[1])


def _cli(kind: str, checkpoint: Path, data: Path) -> list[str]:
    if kind == "eval":
        return ["eval", "--checkpoint", str(checkpoint), "--data", str(data), "--device", "cpu", "--topk", "5",
                "--store-dir", str(data.parent / "eval-store")]
    image1, image2 = _images(data)
    return ["explain", "--checkpoint", str(checkpoint), "--image1", image1, "--image2", image2, "--device", "cpu"]


# ---- code-running pickles ---------------------------------------------------------------------

def test_exploit_really_runs_code_when_unpickled_unsafely(evil):
    """The fixture is a real exploit: an unsafe ``torch.load`` creates the marker (so the tests below mean something)."""
    path, marker = evil
    torch.load(path, weights_only=False)
    assert marker.exists()


@pytest.mark.parametrize("kind", ["eval", "explain"])
def test_cli_refuses_code_running_pickle(kind, evil, tiny_data, capsys):
    path, marker = evil
    assert cli_main(_cli(kind, path, tiny_data)) == 1
    err = capsys.readouterr().err
    assert "refusing" in err and str(path) in err, err
    assert "Traceback" not in err
    assert not marker.exists(), "the pickle ran code"


def test_app_loader_refuses_code_running_pickle_without_side_effect(evil, tiny_data, tmp_path):
    from app.state import load_state

    path, marker = evil
    with pytest.raises(CheckpointError, match="refusing") as info:
        load_state(path, tiny_data, tmp_path / "cache", progress=False)
    assert str(path) in str(info.value)
    assert not marker.exists(), "the pickle ran code"
    assert not (tmp_path / "cache" / "features").exists(), "nothing is extracted or cached for a refused checkpoint"


def test_app_command_line_refuses_code_running_pickle(evil, tiny_data, tmp_path, capsys):
    from app.server import main as app_main

    path, marker = evil
    assert app_main(["--checkpoint", str(path), "--data", str(tiny_data), "--cache-dir", str(tmp_path / "c")]) == 2
    err = capsys.readouterr().err
    assert "refusing" in err and str(path) in err, err
    assert not marker.exists()


def test_resume_refuses_code_running_pickle(evil, tiny_data, tmp_path):
    from casn_core.engine.train import TrainConfig, train

    path, marker = evil
    run = tmp_path / "run"
    run.mkdir()
    os.replace(path, run / "last.pt")
    config = TrainConfig(data=str(tiny_data), out=str(run), backbone="resnet18", epochs=1, batch_size=2,
                         height=H, width=W, pretrained="none", device="cpu", max_steps_per_epoch=1)
    with pytest.raises(CheckpointError, match="refusing"):
        train(config, resume=True, progress=False)
    assert not marker.exists()


# ---- truncated and corrupted files ------------------------------------------------------------

def _damaged(kind: str, good: Path, folder: Path) -> tuple[Path, str]:
    data = good.read_bytes()
    path = folder / f"{kind}.pt"
    if kind == "truncated":
        path.write_bytes(data[: len(data) // 2])
        return path, "truncated or corrupted"
    if kind == "empty":
        path.write_bytes(b"")
        return path, "empty"
    if kind == "flipped":  # same length, a block of the zip's central directory overwritten
        damaged = bytearray(data)
        damaged[-200:-100] = os.urandom(100)
        path.write_bytes(bytes(damaged))
        return path, "truncated or corrupted"
    # random bytes are not a zip, so torch reads them as a legacy pickle stream: refused unread
    path.write_bytes(os.urandom(2048))
    return path, "corrupted"


# random bytes can read as a pickle header of any protocol, which torch's loader warns about before it fails
@pytest.mark.filterwarnings("ignore:Detected pickle protocol:UserWarning")
@pytest.mark.parametrize("damage", ["truncated", "empty", "flipped", "noise"])
@pytest.mark.parametrize("kind", ["eval", "explain"])
def test_cli_names_a_damaged_checkpoint(kind, damage, good_checkpoint, tiny_data, tmp_path, capsys):
    path, message = _damaged(damage, good_checkpoint, tmp_path)
    assert cli_main(_cli(kind, path, tiny_data)) == 1
    err = capsys.readouterr().err
    assert str(path) in err and message in err, err
    assert "Traceback" not in err


def test_damaged_files_always_give_a_checkpoint_error(good_checkpoint, tmp_path):
    """Fuzz: random bytes, damaged pickle streams, truncated pickles and bytes flipped in a real
    checkpoint. Each is a :class:`CheckpointError` naming the file (before the fix, IndexError,
    KeyError and struct.error escaped from ``torch.load`` for about 1 file in 20)."""
    import pickle
    import random

    rng = random.Random(0)
    plain = pickle.dumps({"format": "casn-checkpoint", "model": {"w": 1}, "model_config": {}}, protocol=2)
    real = good_checkpoint.read_bytes()
    path = tmp_path / "fuzzed.pt"
    for i in range(240):
        kind = i % 4
        if kind == 0:
            data = rng.randbytes(rng.randint(1, 3000))
        elif kind == 1:
            data = b"\x80\x02" + rng.randbytes(rng.randint(0, 300))
        elif kind == 2:
            data = plain[: rng.randint(1, len(plain) - 1)]
        else:
            damaged = bytearray(real)
            for _ in range(5):
                damaged[rng.randrange(len(damaged))] = rng.randrange(256)
            data = bytes(damaged)
        path.write_bytes(data)
        try:
            load_checkpoint(path)
        except CheckpointError as exc:
            assert str(path) in str(exc), (i, str(exc))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol 4:UserWarning")  # torch says so of any protocol-4 file
def test_protocol_4_exploit_is_refused_without_side_effect(tmp_path, tiny_data, capsys):
    """``pickle.dump`` at its default protocol (not ``torch.save``): refused too, nothing runs."""
    import pickle

    marker = tmp_path / "pwned"
    path = tmp_path / "evil4.pt"
    path.write_bytes(pickle.dumps({"format": "casn-checkpoint", "model": {}, "model_config": {},
                                   "evil": _Exploit(marker)}, protocol=4))
    assert cli_main(_cli("eval", path, tiny_data)) == 1
    err = capsys.readouterr().err
    assert "refusing" in err and str(path) in err and "weights_only` set to `False`" not in err, err
    assert not marker.exists()


def test_app_loader_names_a_truncated_checkpoint(good_checkpoint, tiny_data, tmp_path):
    from app.state import load_state

    path, _ = _damaged("truncated", good_checkpoint, tmp_path)
    with pytest.raises(CheckpointError, match="truncated or corrupted") as info:
        load_state(path, tiny_data, tmp_path / "cache", progress=False)
    assert str(path) in str(info.value)


def test_good_checkpoint_still_works_through_the_cli(good_checkpoint, tiny_data, capsys):
    """The control: the same commands succeed on the undamaged file."""
    assert cli_main(_cli("explain", good_checkpoint, tiny_data)) == 0
    assert "same-person probability" in capsys.readouterr().out


# ---- another backbone or identity count -------------------------------------------------------

def test_identity_count_mismatch_is_reported(good_checkpoint):
    payload = load_checkpoint(good_checkpoint)
    with pytest.raises(CheckpointError, match="num_classes") as info:
        model_from_checkpoint(payload, good_checkpoint, expect={"num_classes": 751})
    message = str(info.value)
    assert "num_classes=4" in message and "num_classes=751" in message and str(good_checkpoint) in message
    with pytest.raises(CheckpointError, match="backbone='mobilenet_v2'.*backbone='resnet50'"):
        model_from_checkpoint(payload, good_checkpoint, expect={"backbone": "resnet50", "num_classes": 4})


def test_weights_of_another_model_are_reported_not_a_shape_traceback(good_checkpoint, tmp_path):
    """A file whose config says one thing and whose weights are another model's (e.g. hand-edited)."""
    payload = load_checkpoint(good_checkpoint)
    payload["model_config"] = {**payload["model_config"], "num_classes": 9}
    with pytest.raises(CheckpointError, match="does not match its own model config") as info:
        model_from_checkpoint(payload, good_checkpoint)
    assert "9 identities" in str(info.value)


def _train_config(data: Path, out: Path, **overrides):
    from casn_core.engine.train import TrainConfig

    base = dict(data=str(data), out=str(out), backbone="resnet18", losses="ide", epochs=2, batch_size=2,
                height=H, width=W, pretrained="none", device="cpu", max_steps_per_epoch=1)
    base.update(overrides)
    return TrainConfig(**base)


@pytest.fixture(scope="module")
def trained_run(tiny_data, tmp_path_factory) -> Path:
    """A run dir with a resnet18 ``last.pt`` after epoch 1 of 2."""
    from casn_core.engine.train import train

    run = tmp_path_factory.mktemp("run") / "run"
    train(_train_config(tiny_data, run, epochs=1), progress=False)
    payload = load_checkpoint(run / "last.pt")
    # the same run, planned for 2 epochs: only the epoch count differs from what is resumed below
    payload["train_config"]["epochs"] = 2
    save_checkpoint(run / "last.pt", {k: v for k, v in payload.items() if k not in ("format", "version")})
    return run


def _copy_run(run: Path, target: Path) -> Path:
    import shutil

    shutil.copytree(run, target)
    return target


def test_resume_with_another_backbone_reports_the_backbone(trained_run, tiny_data, tmp_path):
    from casn_core.engine.train import train

    run = _copy_run(trained_run, tmp_path / "run")
    with pytest.raises(CheckpointError, match="backbone") as info:
        train(_train_config(tiny_data, run, backbone="mobilenet_v2"), resume=True, progress=False)
    message = str(info.value)
    assert "resnet18" in message and "mobilenet_v2" in message and "last.pt" in message, message
    assert "size mismatch" not in message


def test_resume_into_a_foreign_last_checkpoint_reports_the_backbone(trained_run, tiny_data, tmp_path):
    """``last.pt`` replaced by another backbone's weights while its training config still matches."""
    from casn_core.engine.train import train

    run = _copy_run(trained_run, tmp_path / "run")
    payload = load_checkpoint(run / "last.pt")
    other = build_model("mobilenet_v2", num_classes=payload["model_config"]["num_classes"], pretrained="none")
    payload.update(model_payload(other))
    save_checkpoint(run / "last.pt", {k: v for k, v in payload.items() if k not in ("format", "version")})
    with pytest.raises(CheckpointError, match="backbone='mobilenet_v2', but backbone='resnet18'") as info:
        train(_train_config(tiny_data, run), resume=True, progress=False)
    assert "size mismatch" not in str(info.value)


def test_resume_on_data_with_another_identity_count_reports_it(trained_run, tmp_path):
    from casn_core.data.synth import SynthSpec, generate_dataset
    from casn_core.engine.train import train

    run = _copy_run(trained_run, tmp_path / "run")
    other = tmp_path / "other"
    generate_dataset(other, SynthSpec(num_ids=12, num_cameras=2, images_per_id=2, seed=4, height=H, width=W))
    with pytest.raises(CheckpointError, match="num_classes") as info:
        train(_train_config(other, run), resume=True, progress=False)
    assert "num_classes=4" in str(info.value) and "num_classes=6" in str(info.value), str(info.value)


def test_resume_through_the_command_line_is_one_clear_line(trained_run, tiny_data, tmp_path, capsys):
    run = _copy_run(trained_run, tmp_path / "run")
    argv = ["train", "--data", str(tiny_data), "--out", str(run), "--backbone", "mobilenet_v2", "--losses", "ide",
            "--epochs", "2", "--batch-size", "2", "--height", str(H), "--width", str(W), "--pretrained", "none",
            "--device", "cpu", "--max-steps-per-epoch", "1", "--resume"]
    assert cli_main(argv) == 1
    err = capsys.readouterr().err
    assert "backbone" in err and "resnet18" in err and "mobilenet_v2" in err and "Traceback" not in err, err


# ---- uploads over the size limit ------------------------------------------------------------

def test_oversize_upload_is_refused_before_decoding(tmp_path, monkeypatch):
    """``read_upload`` checks the file size first and never opens an over-limit file as an image."""
    import io

    from PIL import Image

    import app.uploads as uploads

    buffer = io.BytesIO()
    Image.new("RGB", (64, 128), (1, 2, 3)).save(buffer, format="PNG")
    small = tmp_path / "small.png"
    small.write_bytes(buffer.getvalue())
    big = tmp_path / "big.png"
    big.write_bytes(buffer.getvalue() + b"\0" * 4096)  # a valid PNG with trailing bytes, over the limit below
    limit = len(buffer.getvalue()) + 100

    decoded = []
    real_load_rgb, real_open = uploads.load_rgb, Image.open

    def spy_load_rgb(*args, **kwargs):
        decoded.append(args[0])
        return real_load_rgb(*args, **kwargs)

    def spy_open(*args, **kwargs):
        decoded.append(args[0])
        return real_open(*args, **kwargs)

    monkeypatch.setattr(uploads, "load_rgb", spy_load_rgb)
    monkeypatch.setattr(Image, "open", spy_open)
    with pytest.raises(uploads.UploadError, match="over the .* upload limit; it was not decoded") as info:
        uploads.read_upload(str(big), "image 2", max_bytes=limit)
    assert "image 2 (big.png)" in str(info.value) and str(tmp_path) not in str(info.value)
    assert decoded == [], "an over-limit upload was opened for decoding"
    assert uploads.read_upload(str(small), "image 1", max_bytes=limit).size == (64, 128)  # control
    assert decoded, "the spy did not see the accepted upload being decoded"
