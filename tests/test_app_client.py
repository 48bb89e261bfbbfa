"""The app through ``gradio_client`` against a launched server.

One app for the module: a tiny generated dataset (8 test identities x 2 cameras at 128x64) and a
randomly initialised MobileNetV2 CASN checkpoint, launched in-process on a free 127.0.0.1 port.

The app's numbers are checked against independent references (``tests/reference.py``): its CASN
distance rows against a float64 computation with the literal oracle's d_a, its metrics against a
plain-loop Market-1501 evaluation of those rows (not against ``casn_core``'s evaluator, which runs the
app's own pipeline).
"""
from __future__ import annotations

import io
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest

import app.offline  # noqa: F401  (before gradio)
from helpers import indicator_decided, require

gradio_client = require("gradio_client", "the app's client API tests")
from gradio_client import Client, handle_file  # noqa: E402
from gradio_client.exceptions import AppError  # noqa: E402
from PIL import Image  # noqa: E402

from app_helpers import make_checkpoint, make_dataset, running_app  # noqa: E402
from reference import reference_casn_distances, reference_evaluate, reference_per_query  # noqa: E402

EXPLANATION_KEYS = {"same_probability", "feature_distance", "attention_distance", "threshold", "map1", "map2",
                    "rows1", "rows2", "span1", "span2", "aligned1", "aligned2"}
UPLOAD_LIMIT = 2 * 2**20  # small, so that the over-size test file stays small
# Against the float64 reference, the app's float32 CASN rows (values 0 to 3: unit-range parts) to ROW_TOL:
# float32 rounding of the maps' products (~1e-6 relative, in an order set by threads and SIMD width),
# amplified by the min-max normalisation over a query's 10 candidates; measured up to 8.3e-6 at 1 to 3
# threads with AVX-512 and scalar kernels, so 6 times that.
ROW_TOL = 5e-5
# A query's rows are compared only when none of its candidates has an indicator within 10x float32
# rounding of a switch (helpers.indicator_margins; pre-activations from float32 features carry ~3e-6 of
# their largest): there the float32 indicator may legitimately differ from the float64 one.
PRE_MARGIN = 3e-5


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    root = tmp_path_factory.mktemp("app")
    checkpoint = make_checkpoint(root / "ckpt" / "tiny.pt")
    data = make_dataset(root / "data")
    with running_app(checkpoint, data, root / "cache", topk=10, max_upload_bytes=UPLOAD_LIMIT) as (url, service):
        client = Client(url, verbose=False, download_files=str(root / "downloads"))
        yield {"url": url, "service": service, "client": client, "root": root, "checkpoint": checkpoint,
               "data": data}


@pytest.fixture(scope="module")
def reference(served):
    """The served set's CASN distances in float64 (``tests/reference.py``), the app's rows, and which
    queries' rankings the float32 indicator decides like the float64 one (PRE_MARGIN)."""
    service = served["service"]
    state = service.state
    result = reference_casn_distances(state.model, state.query.maps, state.gallery.maps, state.query.features,
                                      state.gallery.features, state.topk, state.attention_weight, state.threshold)
    decided = indicator_decided(state.model, state.query.features, state.gallery.features, pre_margin=PRE_MARGIN)
    result["decided"] = np.array([decided[q, result["candidates"][q]].all() for q in range(len(state.query))])
    result["app_rows"] = np.stack([service.ranking(i).distance_row for i in range(len(state.query))])
    result["labels"] = (state.query.pids, state.gallery.pids, state.query.camids, state.gallery.camids)
    return result


def _alive(client: Client) -> None:
    result = client.predict(0, api_name="/rank_query")
    assert result["query"]["index"] == 0


def test_rank_query(served):
    client, service = served["client"], served["service"]
    state = service.state
    result = client.predict(1, api_name="/rank_query")
    entries = result["ranking"]
    assert result["query"]["index"] == 1 and not os.path.isabs(result["query"]["name"])
    assert [e["rank"] for e in entries] == list(range(1, len(entries) + 1))
    assert len(entries) == service.strip_length
    q_pid, q_cam = result["query"]["pid"], result["query"]["camid"]
    for e in entries:
        assert e["match"] == (e["pid"] == q_pid)
        assert not (e["pid"] == q_pid and e["camid"] == q_cam), "same-camera images of the query id are junk"
        assert not os.path.isabs(e["name"]) and str(state.data_root) not in e["name"]
        if e["reranked_with_attention"]:
            assert e["score"] == pytest.approx(e["feature_part"] + e["attention_part"], abs=1e-5)
    scores = [e["score"] for e in entries if e["reranked_with_attention"]]
    assert scores == sorted(scores)
    if result["first_true_rank"] is not None and result["first_true_rank"] <= len(entries):
        assert entries[result["first_true_rank"] - 1]["match"]
        assert not any(e["match"] for e in entries[:result["first_true_rank"] - 1])
        assert 0 < result["ap"] <= 1
    with pytest.raises(AppError, match="out of range"):
        client.predict(10_000, api_name="/rank_query")
    _alive(client)


@pytest.mark.numeric
def test_ranking_rows_are_the_float64_casn_distances(served, reference):
    """Every query's CASN distance row (what the app ranks and scores) against the float64 reference."""
    decided = reference["decided"]
    assert decided.sum() >= len(decided) // 2, f"only queries {np.flatnonzero(decided)} are decided"
    rows, expected = reference["app_rows"][decided], reference["distance"][decided]
    np.testing.assert_allclose(rows, expected, rtol=0, atol=ROW_TOL)
    # the comparison has teeth: the attention part moves rows by far more than the tolerance
    assert np.abs(reference["attention"]).max() > 0.1
    feature_only = reference["distance"].copy()
    for q in range(len(feature_only)):
        c = reference["candidates"][q]
        f = reference["feature"][q, c]
        feature_only[q, c] = (f - f.min()) / (f.max() - f.min())
    assert np.abs(feature_only[decided] - expected).max() > 100 * ROW_TOL


@pytest.mark.numeric
def test_dataset_metrics_match_a_plain_loop(served, reference):
    """The app's dataset numbers are a plain-loop Market-1501 evaluation of its rows (checked above against
    float64) and of float64 feature distances; casn_core's evaluator agrees."""
    from casn_core.engine.evaluator import evaluate_rankings
    from casn_core.rankings import RankingSpec

    service = served["service"]
    state = service.state
    labels = reference["labels"]
    max_rank = min(50, len(state.gallery))
    expected = {"casn": reference_evaluate(reference["app_rows"], *labels, max_rank=max_rank),
                "feature": reference_evaluate(reference["feature"], *labels, max_rank=max_rank)}
    # float64 and float32 feature distances rank alike: no two of a query are within 1e-6, several times
    # the float32 distances' error (measured 1.5e-7 on this set)
    gaps = np.diff(np.sort(reference["feature"], axis=1), axis=1)
    assert gaps.min() > 1e-6, gaps.min()
    summary = served["client"].predict(api_name="/dataset_summary")
    ranking = RankingSpec("casn", state.attention_weight, state.topk, state.threshold)
    evaluator = evaluate_rankings(state.model, state.query, state.gallery, [ranking])
    for key in ("casn", "feature"):
        assert summary[key]["mAP"] == pytest.approx(expected[key]["mAP"], abs=1e-12), key
        assert summary[key]["mINP"] == pytest.approx(expected[key]["mINP"], abs=1e-12), key
        assert summary[key]["cmc"] == pytest.approx(expected[key]["cmc"], abs=1e-12), key
        assert summary[key]["rank1"] == pytest.approx(expected[key]["cmc"][0], abs=1e-12), key
        assert evaluator[key]["mAP"] == pytest.approx(expected[key]["mAP"], abs=1e-12), key
        assert evaluator[key]["rank1"] == pytest.approx(expected[key]["cmc"][0], abs=1e-12), key
    assert len(summary["casn"]["cmc"]) == max_rank


def test_per_query_numbers_are_the_evaluators(served, reference):
    """Every query's first true rank and AP in the app are a plain loop's over its distance row (checked
    against float64 above), the shown list (junk left out) puts its first true match at that rank, and the
    row ranks the gallery as eval's CASN matrix does."""
    from casn_core.engine.inference import casn_distmat
    from casn_core.rankings import RankingSpec

    service = served["service"]
    state = service.state
    expected = reference_per_query(reference["app_rows"], *reference["labels"])
    assert sum(e is not None and e[0] > 1 for e in expected) > 0, "no query whose first match is below rank 1"
    dist = casn_distmat(state.model, state.query, state.gallery,
                        RankingSpec.custom(state.attention_weight, state.topk, state.threshold))
    listed = served["client"].predict(False, "file order", api_name="/list_queries")
    assert [q["index"] for q in listed] == list(range(len(state.query)))
    for q in listed:
        i = q["index"]
        ranking = service.ranking(i)
        if expected[i] is not None:
            first, ap, _ = expected[i]
            assert q["first_true_rank"] == ranking.first_true_rank == first
            assert q["ap"] == pytest.approx(ap, abs=1e-12)
            assert ranking.matches[ranking.first_true_rank - 1] and not ranking.matches[:ranking.first_true_rank - 1].any()
            np.testing.assert_allclose(ranking.distance_row, dist[i], rtol=0, atol=1e-6)  # float32 rounding
            assert np.array_equal(np.argsort(ranking.distance_row, kind="stable"), np.argsort(dist[i], kind="stable"))
        else:
            assert q["first_true_rank"] is None and q["ap"] is None and not ranking.matches.any()
    summary = served["client"].predict(api_name="/dataset_summary")
    valid = [e for e in expected if e is not None]
    assert summary["casn"]["mINP"] == pytest.approx(sum(e[2] for e in valid) / len(valid), abs=1e-12)


def test_explain_pair_matches_the_ranking(served):
    client = served["client"]
    ranking = client.predict(2, api_name="/rank_query")
    top = ranking["ranking"][0]
    result = client.predict(2, top["gallery_index"], api_name="/explain_pair")
    assert EXPLANATION_KEYS <= set(result)
    assert 0.0 <= result["same_probability"] <= 1.0
    assert result["feature_distance"] == pytest.approx(top["feature_distance"], abs=1e-5)
    # cached-map explanation (head autograd) == the ranking's batched closed form
    assert result["attention_distance"] == pytest.approx(top["attention_distance"], abs=1e-4)
    score = result["ranking_score"]
    assert score["rank"] == 1 and score["reranked_with_attention"]
    assert score["total"] == pytest.approx(score["feature_part"] + score["attention_part"], abs=1e-6)
    assert result["true_match"] == top["match"]
    h, w = np.asarray(result["map1"]).shape
    assert len(result["rows1"]) == h and np.asarray(result["map2"]).shape == (h, w)
    with pytest.raises(AppError, match="gallery index"):
        client.predict(2, -5, api_name="/explain_pair")


def test_similarity_decomposition_in_explanations(served):
    """The pair JSON carries the exact decomposition of the feature similarity: maps summing to s."""
    client = served["client"]
    top = client.predict(2, api_name="/rank_query")["ranking"][0]
    result = client.predict(2, top["gallery_index"], api_name="/explain_pair")
    s = result["similarity"]
    assert result["feature_distance"] ** 2 == pytest.approx(2 - 2 * s, abs=1e-5)
    for key in ("similarity_map1", "similarity_map2"):
        assert np.asarray(result[key]).sum() == pytest.approx(s, abs=1e-5)
    assert np.sum(result["similarity_rows1"]) == pytest.approx(s, abs=1e-5)
    assert len(result["similarity_rows2"]) == np.asarray(result["similarity_map2"]).shape[0]


def test_correspondence_endpoint(served):
    """Clicking every feature cell of the shown query image gives rows of C that together sum to s; each row
    sums to its cell's entry of the query's similarity map; the other way round for the gallery image."""
    client, service = served["client"], served["service"]
    q, g = 3, 5
    pair = client.predict(q, g, api_name="/explain_pair")
    for direction, own in (("query", np.asarray(pair["similarity_map1"])), ("gallery", np.asarray(pair["similarity_map2"]))):
        total = 0.0
        h, w = own.shape
        first = client.predict(q, g, 0, 0, direction, api_name="/correspondence")
        height, width = first["shown_size"]
        for row in range(h):
            for col in range(w):
                x, y = int((col + 0.5) * width / w), int((row + 0.5) * height / h)
                result = client.predict(q, g, x, y, direction, api_name="/correspondence")
                assert result["cell"] == [row, col] and result["direction"] == direction
                values = np.asarray(result["correspondence"])
                other = np.asarray(pair["similarity_map2" if direction == "query" else "similarity_map1"]).shape
                assert values.shape == other
                assert values.sum() == pytest.approx(own[row, col], abs=1e-5)
                assert result["location_share"] == pytest.approx(own[row, col], abs=1e-6)
                total += values.sum()
        assert total == pytest.approx(pair["similarity"], abs=1e-5)
    height, width = first["shown_size"]
    with pytest.raises(AppError, match="outside"):
        client.predict(q, g, width, 0, "query", api_name="/correspondence")
    with pytest.raises(AppError, match="direction"):
        client.predict(q, g, 0, 0, "sideways", api_name="/correspondence")
    with pytest.raises(AppError, match="gallery index"):
        client.predict(q, len(service.state.gallery), 0, 0, "query", api_name="/correspondence")
    _alive(client)


def test_why_wrong(served):
    client = served["client"]
    failures = client.predict(True, "AP: worst first", api_name="/list_queries")
    everything = client.predict(False, "file order", api_name="/list_queries")
    assert len(everything) == len(served["service"].state.query)
    assert all(q["first_true_rank"] > 1 for q in failures)
    target = failures[0]["index"] if failures else 0
    result = client.predict(target, api_name="/why_wrong")
    if failures:
        assert result["failed"]
        assert result["rank1_wrong"]["true_match"] is False and result["rank1_wrong"]["ranking_score"]["rank"] == 1
        assert result["best_true"]["true_match"] is True
        assert result["best_true"]["ranking_score"]["rank"] == result["first_true_rank"]
        gap = result["rank1_wrong"]["similarity"] - result["best_true"]["similarity"]
        assert np.asarray(result["contrastive"]["map"]).sum() == pytest.approx(gap, abs=1e-5)
        assert result["contrastive"]["similarity_gap"] == pytest.approx(gap, abs=1e-5)
    else:
        assert result["rank1_wrong"] is None and result["contrastive"] is None


def _png_bytes(image: Image.Image, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=kwargs.pop("format", "PNG"), **kwargs)
    return buffer.getvalue()


def _good_uploads(folder: Path) -> dict[str, Path]:
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 255, (300, 140, 3), dtype=np.uint8)
    files = {
        "gray.png": _png_bytes(Image.fromarray(rgb[:, :, 0], "L")),
        "rgba.png": _png_bytes(Image.fromarray(np.dstack([rgb, rgb[:, :, :1]]), "RGBA")),
        "wide.jpg": _png_bytes(Image.fromarray(rng.integers(0, 255, (50, 700, 3), dtype=np.uint8)), format="JPEG"),
        "sixteen.png": _png_bytes(Image.fromarray(rgb[:, :, 0].astype(np.uint16) * 257)),
        "cmyk.jpg": _png_bytes(Image.fromarray(rgb).convert("CMYK"), format="JPEG"),
    }
    frames = [Image.fromarray(rng.integers(0, 255, (64, 32, 3), dtype=np.uint8)) for _ in range(3)]
    buffer = io.BytesIO()
    frames[0].save(buffer, format="GIF", save_all=True, append_images=frames[1:], duration=50, loop=0)
    files["animated.gif"] = buffer.getvalue()
    paths = {}
    for name, data in files.items():
        paths[name] = folder / name
        paths[name].write_bytes(data)
    return paths


def test_upload_pair_any_format(served, tmp_path):
    client = served["client"]
    paths = _good_uploads(tmp_path)
    reference = served["data"] / "query"
    first = sorted(reference.iterdir())[0]
    for name, path in paths.items():
        result = client.predict(handle_file(str(first)), handle_file(str(path)), api_name="/explain_upload")
        assert EXPLANATION_KEYS <= set(result), name
        assert np.isfinite(result["attention_distance"]) and 0 <= result["same_probability"] <= 1
        assert result["images"][1] == name


def _bad_uploads(folder: Path) -> dict[str, tuple[Path, str]]:
    rng = np.random.default_rng(1)
    good = _png_bytes(Image.fromarray(rng.integers(0, 255, (64, 32, 3), dtype=np.uint8)))
    # a 26-megapixel PNG written by hand (one row repeated) so the test stays light
    width, height = 5200, 5000
    raw = zlib.compress(b"\x00" * (width + 1) * height, 9)

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    huge = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", raw) + chunk(b"IEND", b""))
    cases = {
        "random.png": (rng.bytes(4096), "not an image"),
        "notes.txt": (b"just some text, not a picture\n" * 10, "not an image"),
        "truncated.png": (good[: len(good) // 2], "truncated or corrupted"),
        "empty.png": (b"", "empty"),
        "huge.png": (huge, "megapixel limit"),
        # over the upload limit: Gradio's own limit is the same number, so the client refuses it before sending
        # (test_app_load checks the server's refusal, test_hardening_loaders the handler's message)
        # under 16 pixels on a side: too small to hold a person, refused with the size
        "one.png": (_png_bytes(Image.new("RGB", (1, 1), (200, 10, 10))), "1 x 1 pixels, too small"),
        "strip.png": (_png_bytes(Image.new("RGB", (10000, 10), (10, 200, 10))), "10000 x 10 pixels, too small"),
    }
    out = {}
    for name, (data, message) in cases.items():
        out[name] = (folder / name, message)
        out[name][0].write_bytes(data)
    return out


def test_bad_uploads_get_clear_messages(served, tmp_path):
    client = served["client"]
    good = sorted((served["data"] / "query").iterdir())[0]
    for name, (path, message) in _bad_uploads(tmp_path).items():
        with pytest.raises(AppError) as info:
            client.predict(handle_file(str(good)), handle_file(str(path)), api_name="/explain_upload")
        text = str(info.value)
        assert message in text and name in text, (name, text)
        assert str(tmp_path) not in text, "messages must not reveal server paths"
        _alive(client)  # the server keeps answering


def test_upload_fuzz_never_crashes(served, tmp_path):
    """Random bytes, and random corruptions of a valid PNG: always a clear AppError or an answer."""
    client = served["client"]
    rng = np.random.default_rng(7)
    good_bytes = _png_bytes(Image.fromarray(rng.integers(0, 255, (40, 20, 3), dtype=np.uint8)))
    good = tmp_path / "good.png"
    good.write_bytes(good_bytes)
    for i in range(6):
        if i % 2:
            data = bytearray(good_bytes)
            for pos in rng.integers(8, len(data), 20):
                data[pos] = int(rng.integers(0, 256))
            data = bytes(data)
        else:
            data = rng.bytes(int(rng.integers(1, 3000)))
        path = tmp_path / f"fuzz{i}.png"
        path.write_bytes(data)
        try:
            result = client.predict(handle_file(str(good)), handle_file(str(path)), api_name="/explain_upload")
            assert EXPLANATION_KEYS <= set(result)
        except AppError as exc:
            assert f"fuzz{i}.png" in str(exc)
    _alive(client)


def test_files_outside_data_and_cache_are_refused(served):
    import httpx

    url, data = served["url"], served["data"]
    image = sorted((data / "query").iterdir())[0]
    assert httpx.get(f"{url}gradio_api/file={image}").status_code == 200  # the dataset itself is served
    repo_file = Path(__file__).resolve()
    for target in ("../../../../../../etc/passwd", "..%2F..%2F..%2F..%2F..%2F..%2Fetc%2Fpasswd", "/etc/passwd",
                   f"{data}/../ckpt/tiny.pt", f"{data}/..%2Fckpt%2Ftiny.pt", str(served["checkpoint"]),
                   str(repo_file), f"{data}/query/../../ckpt/tiny.pt"):
        response = httpx.get(f"{url}gradio_api/file={target}")
        assert response.status_code in (400, 403, 404), (target, response.status_code)
        assert b"root:" not in response.content


def test_launch_defaults_are_local_and_private(served):
    from app.server import launch_kwargs, parse_args

    args = parse_args([])
    assert args.host == "127.0.0.1" and args.share is False and args.port == 7860
    assert args.topk is None  # the checkpoint's stored (w, K), else the paper's (app/server.py --topk)
    assert parse_args(["--share"]).share is True
    kwargs = launch_kwargs(served["service"])
    assert kwargs["server_name"] == "127.0.0.1" and kwargs["share"] is False
    state = served["service"].state
    assert sorted(kwargs["allowed_paths"]) == sorted([str(state.data_root), str(state.cache_dir)])
    assert os.environ["GRADIO_ANALYTICS_ENABLED"] == "False" and os.environ["HF_HUB_OFFLINE"] == "1"


def test_map_store_is_reused_and_shared_with_eval(served, reference, tmp_path, caplog):
    """A second start opens the stores instead of extracting; ``eval`` with the same store folder and dtype
    opens the same stores (no second extraction) and gets the app's numbers; a changed file list rebuilds.
    The store's messages are casn_core.engine.store_build's log records."""
    import logging
    import shutil

    from casn_core.engine.evaluate import evaluate_model

    from app.state import load_state

    state = served["service"].state
    assert state.map_dtype == "float32"  # "auto" for a small set
    caplog.set_level(logging.INFO, logger="casn_core")
    again = load_state(served["checkpoint"], served["data"], state.cache_dir, progress=False)
    assert again.cache_hit and again.store_paths == state.store_paths, caplog.messages
    assert not any("extracting" in m for m in caplog.messages)
    assert (again.gallery.maps[:] == state.gallery.maps[:]).all()
    assert not hasattr(state, "feature_distances")  # no query x gallery matrix is kept

    caplog.clear()
    from casn_core.engine.extraction import ExtractionConfig
    from casn_core.rankings import RankingSpec

    config = ExtractionConfig(tuple(state.input_size), map_dtype=state.map_dtype, store_dir=state.cache_dir / "store",
                              progress=False)
    ranking = RankingSpec("casn", state.attention_weight, state.topk, state.threshold)
    results = evaluate_model(state.model, str(state.data_root), config, [ranking],
                             checkpoint=state.checkpoint_path)
    assert not any("extracting" in m for m in caplog.messages), caplog.messages
    assert sorted(results["storage"]["stores"]) == sorted(str(p) for p in state.store_paths)
    # eval on the shared stores gives the plain loop's numbers of the app's rows (and of the feature ranking)
    max_rank = min(50, len(state.gallery))
    expected = {"casn": reference_evaluate(reference["app_rows"], *reference["labels"], max_rank=max_rank),
                "feature": reference_evaluate(reference["feature"], *reference["labels"], max_rank=max_rank)}
    for key in ("casn", "feature"):
        assert results[key]["rank1"] == pytest.approx(expected[key]["cmc"][0], abs=1e-12), key
        for metric in ("mAP", "mINP"):
            assert results[key][metric] == pytest.approx(expected[key][metric], abs=1e-12), (key, metric)

    data = tmp_path / "data"
    shutil.copytree(served["data"], data)
    first = load_state(served["checkpoint"], data, tmp_path / "cache", progress=False)
    assert not first.cache_hit
    sorted((data / "bounding_box_test").iterdir())[-1].unlink()
    caplog.clear()
    changed = load_state(served["checkpoint"], data, tmp_path / "cache", progress=False)
    assert not changed.cache_hit and len(changed.gallery) == len(first.gallery) - 1
    assert any("extracting" in m for m in caplog.messages)


def test_app_refuses_a_pickle_checkpoint(tmp_path, served):
    from casn_core.checkpoint import CheckpointError

    from app.state import load_state

    class Boom:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    import torch

    bad = tmp_path / "evil.pt"
    torch.save({"format": "casn-checkpoint", "model": {}, "model_config": {}, "x": Boom()}, bad)
    with pytest.raises(CheckpointError):
        load_state(bad, served["data"], tmp_path / "cache", progress=False)


def test_missing_checkpoint_is_a_clear_error(tmp_path, capsys):
    from app.server import main

    assert main(["--checkpoint", str(tmp_path / "nope.pt"), "--cache-dir", str(tmp_path)]) == 2
    assert "nope.pt" in capsys.readouterr().err
