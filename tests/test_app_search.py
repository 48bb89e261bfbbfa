"""Searching your own images in the app: unlabelled mode (``python app.py --gallery DIR``) and
query-by-upload in labelled mode, through ``gradio_client``.

The unlabelled gallery is a tiny generated set's test images renamed to random names (half in a nested
sub-folder), plus a text file and a truncated JPEG; the checkpoint is a random-init MobileNetV2 CASN.
"""
from __future__ import annotations

import numpy as np
import pytest

import app.offline  # noqa: F401  (before gradio)
from helpers import indicator_decided, require

require("gradio_client", "the app's search API tests")
from gradio_client import Client, handle_file  # noqa: E402
from gradio_client.exceptions import AppError  # noqa: E402

from app_helpers import make_checkpoint, make_dataset, make_unlabelled_gallery, running_app, running_gallery_app  # noqa: E402,E501
from reference import reference_casn_distances  # noqa: E402


def _path(entry: dict) -> str:
    """A result's gallery-relative file name (``"path"`` in ``SearchResult.to_json``; the upload API may call
    it ``"name"``, since ``gradio_client`` would try to download any ``{"path": ...}`` in an answer)."""
    return entry["path"] if "path" in entry else entry["name"]


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


def _decided_by_float32(index, image) -> bool:
    """No re-ranked candidate of this query has an indicator float32 rounding could switch (tests/helpers.py:
    the float32 ranking could then legitimately differ from float64's). The query's own copy (d_f ~ 0) is
    exempt: its indicator is rounding noise, but with two equal maps every indicator gives d_a = 0."""
    _, qfeat, _ = index.query_tensors(image)
    unit = qfeat / qfeat.norm()
    distance = (index.gallery_unit - unit).norm(dim=1)
    candidates = np.argsort(distance.numpy(), kind="stable")[:index.rerank_k]
    others = candidates[distance.numpy()[candidates] > 1e-3]
    return bool(indicator_decided(index.model, qfeat[None], index.gallery.features[others], pre_margin=3e-5).all())


@pytest.mark.numeric
def test_search_upload_is_the_json_of_casn_search(unlabelled):
    """The answer is ``SearchResult.to_json()`` of the library's search (what ``casn search --json`` writes)
    with the app's settings (re-ranking depth = ``--topk``; float32 maps, the app's choice for a small
    folder), names instead of server paths; and its ranking and distances are the float64 reference's
    (``tests/reference.py``: d_a from the literal oracle), not only the library's own."""
    from casn_core.engine.extraction import ExtractionConfig
    from casn_core.images import load_rgb
    from casn_core.search import RankingChoice, open_search_index

    client, folder = unlabelled["client"], unlabelled["folder"]
    index = open_search_index(unlabelled["checkpoint"], folder, unlabelled["root"] / "cache" / "search", "cpu",
                              extraction=ExtractionConfig(map_dtype="float32", progress=False),
                              ranking=RankingChoice(rerank_k=10))
    query = next(q for q in sorted(folder.glob("*.jpg")) if _decided_by_float32(index, load_rgb(q)))
    answer = client.predict(handle_file(str(query)), 5, api_name="/search_upload")
    expected = index.search(load_rgb(query), 5).to_json()  # an upload is an image, not the gallery file
    assert answer["query"] == query.name and answer["gallery"] == folder.name  # names, never server paths
    assert {k: v for k, v in answer.items() if k not in ("query", "gallery", "results")} == \
        {k: v for k, v in expected.items() if k not in ("query", "gallery", "results")}
    assert [_path(r) for r in answer["results"]] == [_path(r) for r in expected["results"]]
    for mine, theirs in zip(answer["results"], expected["results"]):
        assert len(mine) == len(theirs) and mine["rank"] == theirs["rank"]
        for key in ("feature_distance", "distance", "attention_distance"):
            assert mine[key] == pytest.approx(theirs[key], abs=1e-5), key  # the same float32 computation
    # an uploaded copy of a gallery image ranks that image first, at feature distance ~0
    assert _path(answer["results"][0]) == query.name and answer["results"][0]["feature_distance"] < 1e-3

    # the float64 reference: the query's own maps (one backbone pass) against every gallery image's
    qmap, qfeat, _ = index.query_tensors(load_rgb(query))
    gallery = index.gallery
    ref = reference_casn_distances(index.model, qmap[None].float(), gallery.maps, qfeat[None],
                                   gallery.features, index.rerank_k, index.attention_weight, index.threshold)
    order = np.argsort(ref["distance"][0], kind="stable")
    # the combined distance normalises d_f over the candidates, whose minimum is the query's own copy:
    # float32 has that d_f only to 1e-3 (below), which moves every candidate's unit-range d_f by up to
    # 1e-3 / (range of d_f); on top, 5e-5 for the rest of float32 rounding (test_app_client measures 8e-6)
    candidate_f = ref["feature"][0, ref["candidates"][0]]
    distance_tol = 5e-5 + 1e-3 / (candidate_f.max() - candidate_f.min())
    assert np.diff(ref["distance"][0][order[:6]]).min() > 2 * distance_tol  # no near ties in the shown ranks
    relpaths = [image.relpath for image in index.images]
    assert [_path(r) for r in answer["results"]] == [relpaths[g] for g in order[:5]]
    attention = dict(zip(ref["candidates"][0].tolist(), ref["attention"][0]))
    for entry, g in zip(answer["results"], order[:5]):
        # float32 against float64: d_f to 1e-5 (float32 d_f = sqrt(2 - 2 s) is good to ~1e-7 / d_f, but
        # near 0 only to sqrt(float32 eps) ~ 5e-4: the query's own copy is just asserted below 1e-3); d_a
        # to 5e-5 (float32 map products amplified by min-max normalisation), the combined distance above
        if ref["feature"][0, g] > 1e-3:
            assert entry["feature_distance"] == pytest.approx(ref["feature"][0, g], abs=1e-5)
        else:
            assert entry["feature_distance"] < 1e-3
        assert entry["distance"] == pytest.approx(ref["distance"][0, g], abs=distance_tol)
        assert entry["attention_distance"] == pytest.approx(attention[int(g)], abs=5e-5)
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


def test_a_gallery_query_is_left_out_and_its_near_duplicate_ranks_first(unlabelled, tmp_path):
    """Picking a gallery image as the query leaves it out of its own ranking; a near-duplicate of it in the
    gallery (the same picture re-encoded as a JPEG of another quality, under another name) ranks first,
    for every picked image. (The random-init model cannot be asked to find the same person in another
    camera; the same picture it must find.)"""
    import shutil

    from PIL import Image

    from app.server import build_gallery

    folder = tmp_path / "with duplicates"
    folder.mkdir()
    sources = sorted(unlabelled["folder"].glob("*.jpg"))[:8]
    for source in sources:
        shutil.copyfile(source, folder / source.name)
    for source in sources[:4]:
        Image.open(source).convert("RGB").save(folder / f"copy-of-{source.stem}.jpg", quality=80)
    _, service = build_gallery(unlabelled["checkpoint"], folder, tmp_path / "cache", topk=10, progress=False)
    for source in sources[:4]:
        result = service.search("gallery", source.name, 3)
        paths = [hit.path for hit in result.results]
        assert source.name not in paths, "a gallery query is left out of its own ranking"
        assert paths[0] == f"copy-of-{source.stem}.jpg", (source.name, paths)
        assert result.results[0].feature_distance < result.results[1].feature_distance
    # and the copies find their originals
    for source in sources[:4]:
        assert service.search("gallery", f"copy-of-{source.stem}.jpg", 1).results[0].path == source.name


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
    assert _path(first) == f"bounding_box_test/{gallery_image.name}" and first["feature_distance"] < 1e-3
    assert answer["query_pid"] == first["pid"] == int(gallery_image.name[:4])  # Market names give labels
    explained = client.predict(handle_file(str(gallery_image)), _path(first), api_name="/explain_search")
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
