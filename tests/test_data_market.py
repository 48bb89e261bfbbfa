"""Market-layout loaders (docs/design.md, sec. 5): real samples from ../shared/data and edge cases."""
from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from casn_core.data import (
    DatasetError,
    ImageDataset,
    ImageRecord,
    build_test_transform,
    build_train_transform,
    load_market,
    load_split,
    parse_market_name,
)
from casn_core.images import ImageInputError

NAME = re.compile(r"^(-?\d+)_c(\d)")
FOLDERS = {"train": "bounding_box_train", "query": "query", "gallery": "bounding_box_test"}


def _count(folder: Path) -> tuple[int, int, int]:
    """(images, ids, cameras) counted independently of the loader."""
    ids, cams, images = set(), set(), 0
    for name in os.listdir(folder):
        match = NAME.match(name)
        if name.endswith(".jpg") and match and int(match.group(1)) != -1:
            images += 1
            ids.add(int(match.group(1)))
            cams.add(int(match.group(2)))
    return images, len(ids), len(cams)


@pytest.mark.parametrize("name, expected", [
    ("0004_c2s3_059152_00.jpg", (4, 2)),
    ("-1_c1s1_000401_03.jpg", (-1, 1)),
    ("0000_c6s1_000000_00.jpg", (0, 6)),
    ("1501_c6s4_001902_01.jpg", (1501, 6)),
    ("0005_c2_f0046985.jpg", (5, 2)),  # DukeMTMC-reID
    ("0001_c1_1.png", (1, 1)),  # CUHK03-NP
    ("/some/dir/0012_c3s1_000551_01.jpg", (12, 3)),
    ("Thumbs.db", None),
    ("0004c2s3_059152_00.jpg", None),
    ("person_0004_c2.jpg", None),
    ("abc_c1s1_000001_00.jpg", None),
    ("0004_s1_000001_00.jpg", None),
    ("-2_c1s1_000001_00.jpg", None),
])
def test_parse_market_name(name, expected):
    assert parse_market_name(name) == expected


def test_mini_market1501_counts(shared_data):
    root = shared_data / "mini_market1501"
    dataset = load_market(root)
    for split, folder in FOLDERS.items():
        records = getattr(dataset, split)
        images, ids, cams = _count(root / folder)
        assert len(records) == images
        assert len({r.pid for r in records}) == ids
        assert len({r.camid for r in records}) == cams
        assert dataset.reports[split].num_unparsed == 0
        assert [Path(r.path).name for r in records] == sorted(Path(r.path).name for r in records)
    # the numbers shared/data/README.md states
    assert (len(dataset.train), dataset.num_train_pids) == (32, 16)
    assert (len(dataset.query), dataset.num_query_pids) == (32, 16)
    assert (len(dataset.gallery), dataset.num_gallery_pids) == (32, 16)
    assert {r.pid for r in dataset.query} == {r.pid for r in dataset.gallery}
    assert not {r.pid for r in dataset.train} & {r.pid for r in dataset.query}
    matched = sum(any(g.pid == q.pid and g.camid != q.camid for g in dataset.gallery) for q in dataset.query)
    assert matched == 30
    # training labels are 0..C-1 in pid order; query/gallery labels are the pids
    pids = sorted({r.pid for r in dataset.train})
    assert all(r.label == pids.index(r.pid) for r in dataset.train)
    assert all(r.label == r.pid for r in dataset.query + dataset.gallery)
    assert all(1 <= r.camid <= 6 for r in dataset.train + dataset.query + dataset.gallery)


def test_mini_mars_train_counts(shared_data):
    root = shared_data / "mini_mars_train"
    dataset = load_market(root, splits=("train",))
    images, ids, cams = _count(root / "bounding_box_train")
    assert (len(dataset.train), dataset.num_train_pids, dataset.num_train_cams) == (images, ids, cams)
    assert (len(dataset.train), dataset.num_train_pids, dataset.num_train_cams) == (1719, 16, 6)
    assert dataset.query == [] and dataset.gallery == []
    assert sorted({r.label for r in dataset.train}) == list(range(16))
    with pytest.raises(DatasetError, match="query"):
        load_market(root, splits=("query", "gallery"))


def test_image_dataset_reads_real_crops(shared_data):
    dataset = load_market(shared_data / "mini_market1501", splits=("query",))
    items = ImageDataset(dataset.query, build_test_transform(128, 64))
    image, label, camid, index = items[3]
    assert image.shape == (3, 128, 64) and image.dtype == torch.float32
    assert (label, camid, index) == (dataset.query[3].label, dataset.query[3].camid, 3)


def _touch(folder: Path, names: list[str]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(names):
        if name.endswith((".db", ".txt")):
            (folder / name).write_bytes(b"x")
        else:
            Image.new("RGB", (8, 16), (i * 20 % 256, 0, 0)).save(folder / name)


def _layout(root: Path, train: list[str], query: list[str], gallery: list[str]) -> Path:
    _touch(root / "bounding_box_train", train)
    _touch(root / "query", query)
    _touch(root / "bounding_box_test", gallery)
    return root


def test_junk_distractors_and_unparsed_names(tmp_path):
    root = _layout(
        tmp_path / "ds",
        train=["0007_c1s1_000001_00.jpg", "0007_c2s1_000002_00.jpg", "0003_c1s1_000003_00.png",
               "0000_c1s1_000004_00.jpg", "-1_c1s1_000005_00.jpg", "Thumbs.db"],
        query=["0002_c1s1_000010_00.jpg", "-1_c2s1_000011_00.jpg"],
        gallery=["0002_c2s1_000012_00.jpg", "0000_c1s1_000013_00.jpg", "0000_c3s1_000014_00.jpg",
                 "-1_c1s1_000015_00.jpg", "img_001.jpg", "0002-c3.jpg", "notes.txt"],
    )
    with pytest.warns(UserWarning, match=r"bounding_box_test: 2 image name\(s\).*img_001.jpg"):
        dataset = load_market(root)
    # train: junk skipped, the distractor dropped from the relabelled split, labels 0..C-1 by pid
    assert [(r.pid, r.camid, r.label) for r in dataset.train] == [(3, 1, 0), (7, 1, 1), (7, 2, 1)]
    train_report = dataset.reports["train"]
    assert (train_report.num_junk, train_report.num_distractors_dropped, train_report.num_other_files) == (1, 1, 1)
    # gallery: distractors kept (label = pid = 0), junk skipped, unparsed counted with examples
    assert [(r.pid, r.camid) for r in dataset.gallery] == [(0, 1), (0, 3), (2, 2)]
    report = dataset.reports["gallery"]
    assert (report.num_junk, report.num_distractors, report.num_unparsed) == (1, 2, 2)
    assert set(report.unparsed_examples) == {"img_001.jpg", "0002-c3.jpg"}
    assert report.num_other_files == 1
    assert [(r.pid, r.label) for r in dataset.query] == [(2, 2)]
    assert isinstance(dataset.train[0], ImageRecord)


def test_load_split_without_relabel_keeps_pids(tmp_path):
    folder = tmp_path / "q"
    _touch(folder, ["0010_c1s1_000001_00.jpg", "0000_c2s1_000002_00.jpg", "0004_c2_f0000003.jpg"])
    records, report = load_split(folder, relabel=False)
    assert [(r.pid, r.label) for r in records] == [(0, 0), (4, 4), (10, 10)]
    assert (report.num_images, report.num_ids, report.num_cams, report.num_distractors) == (3, 3, 2, 1)


@pytest.mark.parametrize("spelling", ["absolute", "relative", "dot", "trailing-slash", "dot-dot"])
def test_load_split_paths_are_spelled_as_pathlib_joins_them(tmp_path, monkeypatch, spelling):
    """The listing uses os.scandir; the record paths (which key the map store) are what
    ``str(Path(folder) / name)`` gives, whatever the spelling of ``folder``; sub-folders, hidden
    files and links to nothing are skipped as before."""
    folder = tmp_path / "q"
    _touch(folder, ["0002_c1s1_000001_00.jpg", "0001_c2s1_000002_00.jpg", ".0003_c1s1_000003_00.jpg"])
    (folder / "0004_c1s1_000004_00.jpg").mkdir()
    (folder / "0005_c1s1_000005_00.jpg").symlink_to(tmp_path / "missing.jpg")
    (tmp_path / "sub").mkdir()
    monkeypatch.chdir(tmp_path if spelling != "dot" else folder)
    given = {"absolute": str(folder), "relative": "q", "dot": ".", "trailing-slash": "q/",
             "dot-dot": "sub/../q"}[spelling]
    records, _ = load_split(given, relabel=False)
    names = ["0001_c2s1_000002_00.jpg", "0002_c1s1_000001_00.jpg"]
    assert [r.path for r in records] == [str(Path(given) / name) for name in names]


def test_empty_query_folder_is_a_clear_error(tmp_path):
    root = _layout(tmp_path / "ds", ["0001_c1s1_000001_00.jpg"], [], ["0002_c1s1_000002_00.jpg"])
    with pytest.raises(DatasetError, match=r"query.*no usable images"):
        load_market(root)
    # a query folder holding only junk is just as empty
    _touch(root / "query", ["-1_c1s1_000003_00.jpg"])
    with pytest.raises(DatasetError, match=r"query.*1 junk"):
        load_market(root, splits=("query", "gallery"))
    assert len(load_market(root, splits=("train",)).train) == 1


def test_missing_root_and_split_folders(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        load_market(tmp_path / "nowhere")
    with pytest.raises(DatasetError, match="nowhere"):
        load_market(tmp_path / "nowhere")
    root = tmp_path / "ds"
    _touch(root / "bounding_box_train", ["0001_c1s1_000001_00.jpg"])
    with pytest.raises(DatasetError, match=r"bounding_box_test"):
        load_market(root, splits=("gallery",))
    with pytest.raises(DatasetError, match="unknown split"):
        load_market(root, splits=("val",))
    cuhk = tmp_path / "cuhk03-np"
    (cuhk / "detected").mkdir(parents=True)
    with pytest.raises(DatasetError, match="detected"):
        load_market(cuhk)


def test_unreadable_image_names_the_file(tmp_path):
    bad = tmp_path / "0001_c1s1_000001_00.jpg"
    bad.write_bytes(b"not a jpeg")
    items = ImageDataset([ImageRecord(str(bad), 1, 1, 0)], build_test_transform(32, 16))
    with pytest.raises(ImageInputError, match="0001_c1s1_000001_00.jpg"):
        items[0]


def test_transforms_shapes_and_normalisation():
    image = Image.fromarray(np.full((40, 20, 3), 128, dtype=np.uint8))
    test = build_test_transform(64, 32)(image)
    assert test.shape == (3, 64, 32)
    assert torch.allclose(test[:, 10, 10], (128 / 255 - torch.tensor([0.485, 0.456, 0.406])) / torch.tensor([0.229, 0.224, 0.225]), atol=1e-4)
    torch.manual_seed(0)
    train = build_train_transform(64, 32, random_erasing=True)
    outs = [train(image) for _ in range(4)]
    assert all(o.shape == (3, 64, 32) for o in outs)
    assert build_train_transform(64, 32, flip=False, pad=0)(image).shape == (3, 64, 32)
    with pytest.raises(ValueError):
        build_test_transform(0, 32)
