"""Searching an unlabelled folder of person crops: scan, bad files, cache, ranking, CLI.

The gallery is the project's generated pedestrians renamed to random names, spread over nested
folders, with a text file, a text file named ``.jpg``, a truncated JPEG and a symbolic link to an
image outside the folder added.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from casn_core import build_model
from casn_core.checkpoint import load_checkpoint, model_payload, save_checkpoint
from casn_core.data import SynthSpec, generate_dataset, parse_market_name
from casn_core.engine.extraction import ExtractionConfig
from casn_core.images import ImageInputError
from casn_core.commands.search import add_arguments as add_search_arguments
from casn_core.commands.search import run as run_search
from casn_core.search import (
    EmptyGalleryError, GalleryNotFoundError, RankingChoice, SearchError, build_search_index, open_search_index,
    scan_gallery,
)

REPO_ROOT = Path(__file__).resolve().parents[1]
BUNDLED = REPO_ROOT / "checkpoints" / "casn_mobilenetv2_synth.pt"
BAD = {"notes.txt", "sub/broken.jpg", "sub/deeper/truncated.jpg", "outside_link.jpg"}


def _generated_images(root: Path, seed: int, num_ids: int, cameras: int, per_id: int, height: int,
                      width: int) -> list[Path]:
    generate_dataset(root, SynthSpec(num_ids=num_ids, num_cameras=cameras, images_per_id=per_id, seed=seed,
                                     height=height, width=width))
    return sorted(p for folder in ("bounding_box_train", "query", "bounding_box_test")
                  for p in (root / folder).glob("*.jpg"))


def _listing(folder: Path) -> list[tuple[str, int, int]]:
    """Every entry under ``folder`` (links not followed) with size and mtime."""
    out = []
    for dirpath, dirnames, filenames in os.walk(folder):
        for name in sorted(dirnames + filenames):
            stat = os.lstat(os.path.join(dirpath, name))
            out.append((os.path.relpath(os.path.join(dirpath, name), folder), stat.st_size, stat.st_mtime_ns))
    return sorted(out)


@pytest.fixture(scope="module")
def gallery(tmp_path_factory) -> dict:
    """A random-named gallery with bad files, its labels, an outside image and a tiny checkpoint."""
    base = tmp_path_factory.mktemp("search")
    sources = _generated_images(base / "generated", seed=3, num_ids=8, cameras=3, per_id=3, height=64, width=32)
    folder = base / "my crops"
    (folder / "sub" / "deeper").mkdir(parents=True)
    rng = np.random.default_rng(0)
    labels = {}
    for n, source in enumerate(sources):
        sub = ("", "sub/", "sub/deeper/")[n % 3]
        suffix = (".jpg", ".JPG", ".png", ".webp")[n % 4]
        rel = f"{sub}{rng.integers(16**8):08x}{suffix}"
        image = Image.open(source)
        image.save(folder / rel, format={".jpg": "JPEG", ".png": "PNG", ".webp": "WEBP"}[suffix.lower()])
        labels[rel] = parse_market_name(source.name)
    (folder / "notes.txt").write_text("not an image\n")
    (folder / "sub" / "broken.jpg").write_text("a text file with an image extension\n")
    data = sources[0].read_bytes()
    (folder / "sub" / "deeper" / "truncated.jpg").write_bytes(data[: len(data) // 3])
    outside = base / "outside.jpg"
    shutil.copy(sources[1], outside)
    (folder / "outside_link.jpg").symlink_to(outside)
    (folder / ".hidden.jpg").write_bytes(b"ignored")

    model = build_model("resnet18", num_classes=4, pretrained="none").eval()
    checkpoint = save_checkpoint(base / "tiny.pt", model_payload(model, input_size=[64, 32]))
    payload = load_checkpoint(checkpoint)
    return {"base": base, "folder": folder, "labels": labels, "outside": outside, "sources": sources,
            "model": model, "payload": payload, "checkpoint": checkpoint}


def _index(gallery: dict, cache_dir: Path, **ranking):
    return build_search_index(gallery["model"], gallery["payload"], gallery["checkpoint"], gallery["folder"],
                              cache_dir, ExtractionConfig(progress=False), RankingChoice(**ranking))


@pytest.fixture
def messages(caplog) -> pytest.LogCaptureFixture:
    """The library's log records from INFO up (skipped files, cache hits, store rebuilds)."""
    caplog.set_level(logging.INFO, logger="casn_core")
    return caplog


@contextlib.contextmanager
def _bare_root_logger():
    """The root logger as a fresh ``casn`` process has it, without pytest's handlers: the command then
    sends the library's messages to stderr itself."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    root.handlers.clear()
    try:
        yield
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_search_arguments(parser)
    return parser.parse_args(argv)


def test_scan_is_recursive_sorted_and_skips_non_images(gallery):
    images, report = scan_gallery(gallery["folder"])
    names = [i.relpath for i in images]
    assert names == sorted(names)
    # every generated image (any case of extension, nested) plus the two unreadable .jpg files
    assert set(names) == set(gallery["labels"]) | {"sub/broken.jpg", "sub/deeper/truncated.jpg"}
    assert all(i.pid is None for i in images)  # random names: unlabelled
    skipped = {s.path: s.reason for s in report.skipped}
    assert set(skipped) == {"notes.txt", "outside_link.jpg"}
    assert "outside" in skipped["outside_link.jpg"] and "not followed" in skipped["outside_link.jpg"]
    assert report.num_hidden == 1


def test_bad_files_reported_good_ones_ranked_nothing_written(gallery, tmp_path, messages):
    before = _listing(gallery["folder"])
    index = _index(gallery, tmp_path / "cache")
    skipped = {s.path: s.reason for s in index.report.skipped}
    assert set(skipped) == BAD
    assert "truncated or corrupted" in skipped["sub/deeper/truncated.jpg"]
    assert "not an image file" in skipped["sub/broken.jpg"]
    assert len(index) == len(gallery["labels"]) == index.report.num_images
    warning = "\n".join(r.getMessage() for r in messages.records if r.levelno == logging.WARNING)
    assert "4 file(s) skipped" in warning and "sub/broken.jpg" in warning

    result = index.search(gallery["outside"], topk=len(index))
    paths = [hit.path for hit in result.results]
    assert sorted(paths) == sorted(gallery["labels"])  # every good image ranked, no bad one, not the link
    assert [hit.rank for hit in result.results] == list(range(1, len(index) + 1))
    assert np.all(np.diff([hit.distance for hit in result.results]) >= 0)
    assert _listing(gallery["folder"]) == before


def test_outside_symlink_not_followed_even_when_it_is_a_good_image(gallery, tmp_path):
    index = _index(gallery, tmp_path / "cache")
    resolved = {Path(i.path).resolve() for i in index.images}
    assert gallery["outside"].resolve() not in resolved
    assert all(gallery["folder"].resolve() in p.parents for p in resolved)


def test_symlink_inside_the_folder_is_searched(tmp_path, gallery):
    folder = tmp_path / "linked"
    folder.mkdir()
    shutil.copy(gallery["sources"][0], folder / "a.jpg")
    (folder / "b.jpg").symlink_to(folder / "a.jpg")
    (folder / "loop").symlink_to(folder)
    images, report = scan_gallery(folder)
    assert [i.relpath for i in images] == ["a.jpg", "b.jpg"]
    assert [s.path for s in report.skipped] == ["loop"] and "folder" in report.skipped[0].reason


def test_missing_empty_and_only_bad_folders_are_errors_naming_them(gallery, tmp_path):
    with pytest.raises(GalleryNotFoundError, match="nowhere-here"):
        _index({**gallery, "folder": tmp_path / "nowhere-here"}, tmp_path / "cache")
    empty = tmp_path / "empty-folder"
    (empty / "sub").mkdir(parents=True)
    with pytest.raises(EmptyGalleryError, match="empty-folder.*holds no images"):
        _index({**gallery, "folder": empty}, tmp_path / "cache")
    only_bad = tmp_path / "only-bad"
    only_bad.mkdir()
    (only_bad / "readme.txt").write_text("hi")
    (only_bad / "x.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    with pytest.raises(EmptyGalleryError, match=r"only-bad holds no usable image: 2 file\(s\) skipped.*x\.png"):
        _index({**gallery, "folder": only_bad}, tmp_path / "cache")
    a_file = tmp_path / "file.jpg"
    shutil.copy(gallery["sources"][0], a_file)
    with pytest.raises(GalleryNotFoundError, match="file.jpg is not a folder"):
        scan_gallery(a_file)


def test_cache_inside_the_gallery_is_refused(gallery):
    before = _listing(gallery["folder"])
    with pytest.raises(SearchError, match="inside the gallery folder"):
        _index(gallery, gallery["folder"] / ".cache")
    assert _listing(gallery["folder"]) == before


def test_cache_hit_then_rebuilt_on_changed_file_list(gallery, tmp_path, messages):
    cache = tmp_path / "cache"
    first = _index(gallery, cache)
    assert not first.gallery.cache_hit
    messages.clear()
    second = _index(gallery, cache)
    assert second.gallery.cache_hit and second.gallery.cache_file == first.gallery.cache_file
    assert any("loaded from cache" in m for m in messages.messages)
    assert {s.path for s in second.report.skipped} == BAD  # unreadable files remembered without decoding
    assert [i.relpath for i in second.images] == [i.relpath for i in first.images]
    assert np.array_equal(second.gallery.features.numpy(), first.gallery.features.numpy())
    query = gallery["outside"]
    assert second.search(query, topk=5).to_json() == first.search(query, topk=5).to_json()

    folder = tmp_path / "copy"
    shutil.copytree(gallery["folder"], folder, symlinks=True)
    copy = {**gallery, "folder": folder}
    base = _index(copy, cache)
    assert not base.gallery.cache_hit and base.gallery.cache_file != first.gallery.cache_file
    assert all(folder in Path(i.path).parents for i in base.images)
    shutil.copy(gallery["sources"][5], folder / "sub" / "new.jpg")
    messages.clear()
    changed = _index(copy, cache)
    assert not changed.gallery.cache_hit and any("extracting" in m for m in messages.messages)
    assert len(changed) == len(base) + 1 and "sub/new.jpg" in [i.relpath for i in changed.images]
    assert _index(copy, cache).gallery.cache_hit
    os.utime(folder / "sub" / "new.jpg", ns=(1, 1))  # same names and sizes, another modification time
    assert not _index(copy, cache).gallery.cache_hit

    (changed.gallery.cache_file / "header.json").write_text("{damaged")
    for record in (cache / "checked").iterdir():
        record.write_text("[]")
    messages.clear()
    rebuilt = _index(copy, cache)
    text = "\n".join(messages.messages)
    assert not rebuilt.gallery.cache_hit and "unreadable header" in text and "decode-check record" in text
    assert len(rebuilt) == len(changed) and {s.path for s in rebuilt.report.skipped} == BAD
    assert not [p for p in cache.rglob("*") if ".tmp" in p.name]  # no temporaries left


def test_identical_upload_ranks_first_by_feature(gallery, tmp_path):
    index = _index(gallery, tmp_path / "cache", attention_weight=0.0)
    rel = sorted(gallery["labels"])[4]
    copy = tmp_path / "query.png"
    Image.open(gallery["folder"] / rel).save(copy)  # lossless copy of a (JPEG or PNG) gallery image
    for query in (copy, copy.read_bytes(), Image.open(copy), np.asarray(Image.open(copy).convert("RGB"))):
        result = index.search(query, topk=3)
        assert result.results[0].path == rel
        assert result.results[0].feature_distance == pytest.approx(0.0, abs=1e-3)
    own = index.search(gallery["folder"] / rel, topk=len(index))
    assert own.excluded == rel and rel not in [h.path for h in own.results] and len(own.results) == len(index) - 1
    assert index.search(rel, topk=2).excluded == rel  # gallery-relative path, as results show them
    with pytest.raises(ImageInputError, match="notes.txt"):
        index.search(gallery["folder"] / "notes.txt")
    with pytest.raises(ValueError, match="topk"):
        index.search(copy, topk=0)


def test_labels_parsed_from_market_names(gallery, tmp_path):
    folder = tmp_path / "market"
    folder.mkdir()
    for source in gallery["sources"][:6]:
        shutil.copy(source, folder / source.name)
    index = _index({**gallery, "folder": folder}, tmp_path / "cache")
    assert [(i.pid, i.camid) for i in index.images] == [parse_market_name(s.name) for s in sorted(
        gallery["sources"][:6], key=lambda p: p.name)]
    result = index.search(gallery["sources"][7], topk=3)
    assert (result.query_pid, result.query_camid) == parse_market_name(gallery["sources"][7].name)
    assert all({"pid", "camid"} <= set(hit) for hit in result.to_json()["results"])


def test_cli_json_shape_figure_and_folder_untouched(gallery, tmp_path, capsys, messages):
    before = _listing(gallery["folder"])
    out = tmp_path / "out"
    queries = [str(gallery["outside"]), sorted(gallery["labels"])[0]]
    argv = ["--checkpoint", str(gallery["checkpoint"]), "--gallery", str(gallery["folder"]), "--topk", "5",
            "--cache-dir", str(tmp_path / "cache"), "--device", "cpu", "--no-progress"]
    with _bare_root_logger():
        assert run_search(_parse(argv + ["--query", queries[0], "--json", str(out / "one.json")])) == 0
    printed = capsys.readouterr()
    assert "rank" in printed.out and "4 file(s) skipped" in printed.err
    one = json.loads((out / "one.json").read_text())
    assert one["query"] == queries[0] and len(one["results"]) == 5
    for rank, hit in enumerate(one["results"], start=1):
        assert {"path", "rank", "feature_distance", "distance"} <= set(hit) and hit["rank"] == rank
        assert hit["path"] in gallery["labels"] and "pid" not in hit  # relative to the gallery, unlabelled
        assert hit["path"] in printed.out

    argv2 = argv + ["--query", queries[0], "--query", queries[1], "--json", str(out / "two.json"),
                    "--figure", str(out / "strip.png")]
    assert run_search(_parse(argv2)) == 0
    assert "loaded from cache" in messages.text  # under pytest's own logging set-up: its capture, not stderr
    two = json.loads((out / "two.json").read_text())
    assert isinstance(two, list) and [d["query"] for d in two] == [queries[0], queries[1]]
    assert two[0]["results"] == one["results"] and two[1]["excluded"] == queries[1]
    assert (out / "strip.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert Image.open(out / "strip.png").size[0] > 400
    assert _listing(gallery["folder"]) == before


def test_cli_errors_name_the_bad_input(gallery, tmp_path, capsys):
    base = ["--checkpoint", str(gallery["checkpoint"]), "--cache-dir", str(tmp_path / "cache"), "--device", "cpu",
            "--no-progress"]
    assert run_search(_parse(base + ["--gallery", str(tmp_path / "missing-dir"), "--query", "q.jpg"])) == 1
    assert "missing-dir does not exist" in capsys.readouterr().err
    assert run_search(_parse(base + ["--gallery", str(gallery["folder"]), "--query", str(tmp_path / "nope.jpg")])) == 1
    assert "nope.jpg: no such file" in capsys.readouterr().err
    assert run_search(_parse(base + ["--gallery", str(gallery["folder"]), "--query", "q.jpg", "--topk", "0"])) == 1
    assert "--topk" in capsys.readouterr().err


@pytest.mark.skipif(not BUNDLED.is_file(), reason=f"bundled checkpoint {BUNDLED} not found")
def test_bundled_checkpoint_finds_the_same_person_from_another_camera(tmp_path):
    """Queries from camera 1 against random-named crops of cameras 2-3 of unseen identities."""
    sources = _generated_images(tmp_path / "generated", seed=14, num_ids=24, cameras=3, per_id=4,
                                height=128, width=64)
    folder, queries = tmp_path / "crops", tmp_path / "queries"
    folder.mkdir()
    queries.mkdir()
    rng = np.random.default_rng(1)
    pid_of: dict[str, int] = {}
    for source in sources:
        pid, camid = parse_market_name(source.name)
        if camid == 1:
            shutil.copy(source, queries / source.name)
        else:
            name = f"{rng.integers(16**10):010x}.jpg"
            shutil.copy(source, folder / name)
            pid_of[name] = pid
    asked = [q for q in sorted(queries.iterdir()) if parse_market_name(q.name)[0] in set(pid_of.values())]
    assert len(asked) >= 10
    index = open_search_index(BUNDLED, folder, tmp_path / "cache", device="cpu",
                              extraction=ExtractionConfig(progress=False))
    casn_hits = feature_hits = 0
    for query in asked:
        pid = parse_market_name(query.name)[0]
        casn_hits += pid_of[index.search(query, topk=1).results[0].path] == pid
    index.attention_weight = 0.0
    for query in asked:
        pid = parse_market_name(query.name)[0]
        feature_hits += pid_of[index.search(query, topk=1).results[0].path] == pid
    print(f"\nbundled checkpoint, {len(asked)} camera-1 queries vs {len(index)} crops of cameras 2-3 "
          f"({len(set(pid_of.values()))} unseen ids): same person first for {casn_hits} (CASN ranking, "
          f"w = {index.info.attention_weight:g}), {feature_hits} (feature ranking)")
    assert casn_hits > len(asked) / 2
    assert feature_hits > len(asked) / 2
