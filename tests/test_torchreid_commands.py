"""A torchreid checkpoint through every command: ``casn fit-head`` on real MARS frames, then ``explain``,
``eval``, ``tune``, ``search`` and ``python app.py --gallery`` (through ``gradio_client``), with and
without the fitted head.

The data are the real re-id samples of ``../shared/data`` (skipped without them, never copied: the
training folder here holds symbolic links to every fifth MARS frame, to keep the module fast). The
torchreid model is a random-initialised ``osnet_x0_25`` at 128 x 64.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

from helpers import REPO_ROOT, require

with warnings.catch_warnings():  # torchreid warns at import that its Cython ranking is unavailable (unused here)
    warnings.simplefilter("ignore", UserWarning)
    require("torchreid", "the optional extra: pip install -e '.[torchreid]' (requirements-torchreid.txt)")

from casn_core.checkpoint import checkpoint_info, load_checkpoint, load_model  # noqa: E402
from casn_core.cli import main  # noqa: E402
from casn_core.engine.fit_head import FitHeadSettings, fit_head  # noqa: E402
from casn_core.models.foreign import TorchreidCASN  # noqa: E402
from casn_core.models.torchreid_adapter import build_net, save_torchreid_checkpoint  # noqa: E402

pytestmark = pytest.mark.slow
ARCH, SIZE = "osnet_x0_25", (128, 64)


@pytest.fixture(scope="module")
def fitted(tmp_path_factory, shared_data):
    import torch

    root = tmp_path_factory.mktemp("torchreid")
    torch.manual_seed(0)
    net = build_net(ARCH, 751)
    raw = save_torchreid_checkpoint(net, root / "osnet.pth.tar", prefix="module.")
    train = root / "mars" / "bounding_box_train"
    train.mkdir(parents=True)
    for frame in sorted((shared_data / "mini_mars_train" / "bounding_box_train").glob("*.jpg"))[::5]:
        (train / frame.name).symlink_to(frame)
    head = root / "head.pt"
    result = fit_head(FitHeadSettings(checkpoint=str(raw), arch=ARCH, data=str(train.parent), out=str(head),
                                      input_size=SIZE, head_steps=400, val_ids=4, device="cpu"), progress=False)
    return {"root": root, "raw": raw, "head": head, "net": net.eval(), "result": result,
            "market": shared_data / "mini_market1501"}


def test_fit_head_writes_a_casn_checkpoint_of_the_frozen_model(fitted):
    import torch

    model, payload = load_model(fitted["head"])  # no --arch: the checkpoint says what it wraps
    assert isinstance(model, TorchreidCASN) and checkpoint_info(payload).backbone == f"torchreid:{ARCH}"
    images = torch.randn(3, 3, *SIZE, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        reference = fitted["net"](images)
        ours = model.features(model.feature_map(images))
    assert float((ours - reference).abs().max()) <= 1e-5 * float(reference.abs().max())  # the model stayed frozen
    stage, held = fitted["result"]["head_stage"], fitted["result"]["held_out"]
    assert stage["head_loss_last"] < stage["head_loss_first"]
    assert len(held["ids"]) == 4 and held["num_pairs_positive"] > 0 and held["num_pairs_negative"] > 0
    assert 0 <= held["auc_same_probability"] <= 1
    assert load_checkpoint(fitted["head"])["fit_head"]["held_out"] == held


def _explain(args: list[str], out: Path, market: Path, capsys, gallery_index: int = 0) -> dict:
    query, gallery = sorted((market / "query").glob("*.jpg"))[:1], sorted((market / "bounding_box_test").glob("*.jpg"))
    code = main(["explain", *args, "--image1", str(query[0]), "--image2", str(gallery[gallery_index]), "--json",
                 str(out), "--device", "cpu"])
    assert code == 0, capsys.readouterr().err
    return json.loads(out.read_text())


def test_explain_with_and_without_the_head(fitted, tmp_path, capsys):
    raw_args = ["--checkpoint", str(fitted["raw"]), "--arch", ARCH, "--input-size", "128x64"]
    raw = [_explain(raw_args, tmp_path / f"a{i}.json", fitted["market"], capsys, i) for i in range(5)]
    assert "no trained BCE head" in capsys.readouterr().err
    for pair in raw:  # the null head: p(same) = 0.5, no channel selected, no attention
        assert pair["same_probability"] == 0.5 and not np.asarray(pair["map1"]).any()
        assert np.asarray(pair["similarity_map1"]).sum() == pytest.approx(pair["similarity"], rel=1e-5, abs=1e-5)  # cosine
    head = [_explain(["--checkpoint", str(fitted["head"])], tmp_path / f"b{i}.json", fitted["market"], capsys, i)
            for i in range(5)]
    assert all(pair["same_probability"] != 0.5 for pair in head)
    # whether one pair's eq. 4 indicator selects any channel of a head fitted on a random network is a step
    # function of float rounding (it changes with the thread count), so ask for a map on one of five pairs
    assert any(np.asarray(pair["map1"]).any() for pair in head)
    for with_head, without in zip(head, raw):  # the same features
        assert with_head["similarity"] == pytest.approx(without["similarity"], abs=1e-6)


def test_eval_tune_and_search(fitted, tmp_path, capsys):
    market, store = str(fitted["market"]), str(tmp_path / "store")
    assert main(["eval", "--checkpoint", str(fitted["raw"]), "--arch", ARCH, "--input-size", "128x64", "--data",
                 market, "--store-dir", store, "--json", str(tmp_path / "raw.json"), "--device", "cpu"]) == 0
    raw = json.loads((tmp_path / "raw.json").read_text())
    assert "paper" not in raw and "pair_signals" not in raw and raw["casn"]["attention_weight"] == 0
    assert main(["eval", "--checkpoint", str(fitted["head"]), "--data", market, "--store-dir", store, "--json",
                 str(tmp_path / "head.json"), "--device", "cpu"]) == 0
    head = json.loads((tmp_path / "head.json").read_text())
    assert head["feature"] == raw["feature"]  # one model, one feature ranking
    assert "paper" in head and "auc_same_probability" in head["pair_signals"]
    tuned = tmp_path / "tuned.pt"
    assert main(["tune", "--checkpoint", str(fitted["head"]), "--data", market, "--out", str(tuned)]) == 0
    assert checkpoint_info(load_checkpoint(tuned)).tuned is not None
    query = sorted((fitted["market"] / "query").glob("*.jpg"))[0]
    assert main(["search", "--checkpoint", str(fitted["raw"]), "--arch", ARCH, "--input-size", "128x64", "--gallery",
                 str(fitted["market"] / "bounding_box_test"), "--query", str(query), "--cache-dir",
                 str(tmp_path / "search"), "--device", "cpu", "--no-progress", "--json", str(tmp_path / "s.json")]) == 0
    assert len(json.loads((tmp_path / "s.json").read_text())["results"]) == 20
    capsys.readouterr()


def _start_app(args: list[str], cache: Path) -> tuple[subprocess.Popen, str]:
    from app.server import free_port
    from app_helpers import wait_until_up

    port = free_port()
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1"}
    process = subprocess.Popen([sys.executable, str(REPO_ROOT / "app.py"), *args, "--port", str(port), "--cache-dir",
                                str(cache)], cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True)
    url = f"http://127.0.0.1:{port}/"
    try:
        wait_until_up(url, timeout=240)
    except TimeoutError:
        process.kill()
        raise AssertionError(f"the app did not start: {process.communicate()[0][-3000:]}") from None
    return process, url


@pytest.mark.parametrize("route", ["fit-head", "arch"])
def test_app_answers_every_view(fitted, route, tmp_path):
    """``python app.py --checkpoint HEAD.pt --gallery ...`` (and the plain torchreid file with --arch): both
    endpoints of the gallery page answer; with the fitted head the Siamese attention is there."""
    require("gradio_client", "the app's API client")
    from gradio_client import Client, handle_file

    gallery = fitted["market"] / "bounding_box_test"
    source = (["--checkpoint", str(fitted["head"])] if route == "fit-head" else
              ["--checkpoint", str(fitted["raw"]), "--arch", ARCH, "--input-size", "128x64"])
    process, url = _start_app([*source, "--gallery", str(gallery), "--topk", "10"], tmp_path / "cache")
    try:
        client = Client(url, verbose=False, download_files=False)
        query = sorted((fitted["market"] / "query").glob("*.jpg"))[0]
        answer = client.predict(handle_file(str(query)), 5, api_name="/search_upload")
        assert len(answer["results"]) == 5
        explained = [client.predict(handle_file(str(query)), result.get("path", result.get("name")),
                                    api_name="/explain_search") for result in answer["results"]]
        for pair in explained:
            assert np.asarray(pair["similarity_map1"]).sum() == pytest.approx(pair["similarity"], rel=1e-5, abs=1e-5)
        if route == "fit-head":
            # the Siamese map of one pair is empty when its eq. 4 indicator selects no channel, which for a
            # head fitted on a random network depends on float rounding (the thread count of the fit); over
            # the top five pairs the attention must be there
            assert all(pair["same_probability"] != 0.5 for pair in explained)
            assert any(np.asarray(pair["map1"]).any() for pair in explained)
        else:  # the null head: no attention, so the feature order whatever w
            assert all(pair["same_probability"] == 0.5 and not np.asarray(pair["map1"]).any() for pair in explained)
            assert all(r["attention_distance"] == 0 for r in answer["results"])
            distances = [r["feature_distance"] for r in answer["results"]]
            assert distances == sorted(distances)
    finally:
        process.terminate()
        process.wait(timeout=30)
