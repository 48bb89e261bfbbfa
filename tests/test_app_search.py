"""Searching your own images in the app (issue 14): unlabelled mode (``python app.py --gallery DIR``) and
query-by-upload in labelled mode, through ``gradio_client``.

The unlabelled gallery is a tiny generated set's test images renamed to random names (half in a nested
sub-folder), plus a text file and a truncated JPEG; the checkpoint is a random-init MobileNetV2 CASN.
"""
from __future__ import annotations

import numpy as np
import pytest

import app.offline  # noqa: F401  (before gradio)

pytest.importorskip("gradio_client")
from gradio_client import Client, handle_file  # noqa: E402
from gradio_client.exceptions import AppError  # noqa: E402

from app_helpers import make_checkpoint, make_dataset, make_unlabelled_gallery, running_app, running_gallery_app  # noqa: E402,E501


@pytest.fixture(scope="module")
def unlabelled(tmp_path_factory):
    root = tmp_path_factory.mktemp("search")
    checkpoint = make_checkpoint(root / "tiny.pt")
    data = make_dataset(root / "data")
    gallery = make_unlabelled_gallery(data, root / "my crops")
    with running_gallery_app(checkpoint, gallery["folder"], root / "cache") as (url, service):
        yield {"url": url, "service": service, "client": Client(url, verbose=False, download_files=False),
               "root": root, "checkpoint": checkpoint, "data": data, **gallery}


def test_bad_files_are_reported_and_good_ones_indexed(unlabelled):
    index = unlabelled["service"].index
    skipped = {s.path.split("/")[-1] for s in index.report.skipped}
    assert set(unlabelled["bad"]) <= skipped
    assert sorted(i.relpath for i in index.images) == sorted(unlabelled["names"])
    assert unlabelled["service"].labelled == 0
    assert not any(p.name == "store" or p.suffix == ".npy" for p in unlabelled["folder"].rglob("*")), \
        "nothing is written inside the user's folder"


def test_search_upload_is_the_json_of_casn_search(unlabelled):
    """The answer is ``SearchResult.to_json()`` of the library's search (what ``casn search --json`` writes)
    with the app's settings (re-ranking depth = ``--topk``; float32 maps, the app's choice for a small
    folder), names instead of server paths."""
    from casn_core.images import load_rgb
    from casn_core.search import open_search_index

    client, folder = unlabelled["client"], unlabelled["folder"]
    query = sorted(folder.glob("*.jpg"))[0]
    answer = client.predict(handle_file(str(query)), 5, api_name="/search_upload")
    index = open_search_index(unlabelled["checkpoint"], folder, unlabelled["root"] / "cache" / "search", "cpu",
                              rerank_k=10, map_dtype="float32", progress=False, log=lambda *_: None)
    expected = index.search(load_rgb(query), 5).to_json()  # an upload is an image, not the gallery file
    assert answer["query"] == query.name and answer["gallery"] == folder.name  # names, never server paths
    assert {k: v for k, v in answer.items() if k not in ("query", "gallery", "results")} == \
        {k: v for k, v in expected.items() if k not in ("query", "gallery", "results")}
    assert [r["path"] for r in answer["results"]] == [r["path"] for r in expected["results"]]
    for mine, theirs in zip(answer["results"], expected["results"]):
        assert set(mine) == set(theirs) and mine["rank"] == theirs["rank"]
        for key in ("feature_distance", "distance", "attention_distance"):
            assert mine[key] == pytest.approx(theirs[key], abs=1e-5), key
    # an uploaded copy of a gallery image ranks that image first, at feature distance ~0
    assert answer["results"][0]["path"] == query.name and answer["results"][0]["feature_distance"] < 1e-3
    with pytest.raises(AppError, match="topk|minimum"):
        client.predict(handle_file(str(query)), 0, api_name="/search_upload")


def test_explain_search(unlabelled):
    client, folder = unlabelled["client"], unlabelled["folder"]
    query = sorted(folder.glob("*.jpg"))[1]
    target = sorted(unlabelled["names"])[3]
    result = client.predict(handle_file(str(query)), target, api_name="/explain_search")
    assert result["gallery"]["name"] == target and result["query"]["name"] == query.name
    assert 0 <= result["same_probability"] <= 1
    assert np.asarray(result["similarity_map1"]).sum() == pytest.approx(result["similarity"], abs=1e-5)
    assert result["feature_distance"] ** 2 == pytest.approx(2 - 2 * result["similarity"], abs=1e-4)
    for bad in ("no-such.jpg", "notes.txt", str(folder / target)):
        with pytest.raises(AppError, match="no gallery image named"):
            client.predict(handle_file(str(query)), bad, api_name="/explain_search")


def test_own_identity_ranks_first_from_another_camera(unlabelled):
    """With Market names, the query's own identity from another camera (this random-init model: counted,
    not required) is found; the bookkeeping that counts it is what is tested here."""
    service = unlabelled["service"]
    names = unlabelled["names"]
    hits = total = 0
    for rel, original in sorted(names.items()):
        if not original.startswith(("0009", "0010")):
            continue
        result = service.search("gallery", rel, 3)
        assert rel not in [h.path for h in result.results], "a gallery query is left out of its own ranking"
        total += 1
        hits += names[result.results[0].path][:4] == original[:4]
    assert total > 0 and 0 <= hits <= total


@pytest.fixture(scope="module")
def labelled(tmp_path_factory):
    root = tmp_path_factory.mktemp("search-labelled")
    checkpoint = make_checkpoint(root / "tiny.pt")
    data = make_dataset(root / "data")
    with running_app(checkpoint, data, root / "cache", topk=10) as (url, service):
        yield {"client": Client(url, verbose=False, download_files=False), "service": service, "data": data}


def test_query_by_upload_in_labelled_mode(labelled):
    client, data = labelled["client"], labelled["data"]
    gallery_image = sorted((data / "bounding_box_test").glob("*.jpg"))[4]
    answer = client.predict(handle_file(str(gallery_image)), 3, api_name="/search_upload")
    first = answer["results"][0]
    assert first["path"] == f"bounding_box_test/{gallery_image.name}" and first["feature_distance"] < 1e-3
    assert answer["query_pid"] == first["pid"] == int(gallery_image.name[:4])  # Market names give labels
    explained = client.predict(handle_file(str(gallery_image)), first["path"], api_name="/explain_search")
    assert explained["feature_distance"] < 1e-3


def test_missing_or_empty_gallery_folder_is_a_clear_error(unlabelled, tmp_path, capsys):
    from app.server import main

    empty = tmp_path / "empty"
    (empty / "sub").mkdir(parents=True)
    (empty / "sub" / "readme.txt").write_text("no images here")
    for folder in (tmp_path / "missing", empty):
        code = main(["--checkpoint", str(unlabelled["checkpoint"]), "--gallery", str(folder),
                     "--cache-dir", str(tmp_path / "cache")])
        err = capsys.readouterr().err
        assert code == 2 and str(folder) in err and "Traceback" not in err, err
