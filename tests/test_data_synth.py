"""Procedural pedestrian generator (docs/design.md, sec. 6): determinism, masks, protocol, CLI."""
from __future__ import annotations

import argparse
import hashlib
import json
import os
from pathlib import Path

import cv2
import numpy as np
import pytest

from casn_core.data import load_market
from casn_core.data.pedestrian import PLAIN_BACKGROUND, make_identity
from casn_core.data.scene import make_camera, mask_bbox, render_image
from casn_core.commands.synth import add_arguments as add_synth_arguments
from casn_core.commands.synth import run as run_synth
from casn_core.data.synth import SynthSpec, generate_dataset, plan_dataset

SMALL = dict(num_ids=6, num_cameras=3, images_per_id=5, height=64, width=32)


def _small(seed: int) -> SynthSpec:
    return SynthSpec(seed=seed, **SMALL)


def _digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("synth")
    return root, generate_dataset(root, _small(11))


def test_same_seed_same_bytes_other_seed_differs(small, tmp_path):
    root, _ = small
    again = generate_dataset(tmp_path / "again", _small(11))
    first, second = _digest(root), _digest(tmp_path / "again")
    assert first == second and len(first) == 2 * 30 + 1
    assert again == json.loads((root / "manifest.json").read_text())
    generate_dataset(tmp_path / "other", _small(12))
    other = _digest(tmp_path / "other")
    assert len(set(other.values()) & set(first.values())) == 0  # every image, mask and the manifest differ


@pytest.mark.slow
def test_worker_processes_give_the_same_bytes(small, tmp_path):
    root, _ = small
    generate_dataset(tmp_path / "parallel", _small(11), workers=2)
    assert _digest(tmp_path / "parallel") == _digest(root)


def test_layout_masks_and_manifest(small):
    root, manifest = small
    images = sorted(p for split in ("bounding_box_train", "query", "bounding_box_test")
                    for p in (root / split).glob("*.jpg"))
    assert len(images) == manifest["num_images"] == 6 * 5
    for split, info in manifest["splits"].items():
        assert len(list((root / info["folder"]).glob("*.jpg"))) == info["images"]
    by_path = {entry["path"]: entry for entry in manifest["images"]}
    for path in images:
        relative = path.relative_to(root)
        mask = cv2.imread(str(root / "masks" / relative.with_suffix(".png")), cv2.IMREAD_UNCHANGED)
        image = cv2.imread(str(path))
        assert image.shape == (64, 32, 3) and mask.shape == (64, 32) and mask.dtype == np.uint8
        assert set(np.unique(mask)) <= {0, 255} and (mask > 0).mean() > 0.05
        assert by_path[str(relative)]["person_box"] == list(mask_bbox(mask))
    assert manifest["seed"] == 11 and manifest["generator_version"]
    assert manifest["image_size"] == {"height": 64, "width": 32}
    assert (manifest["num_ids"], manifest["num_cameras"], manifest["images_per_id"]) == (6, 3, 5)


def test_split_protocol(small):
    root, _ = small
    data = load_market(root)
    train_ids = {r.pid for r in data.train}
    test_ids = {r.pid for r in data.query} | {r.pid for r in data.gallery}
    assert train_ids == {1, 2, 3} and test_ids == {4, 5, 6}
    assert {r.pid for r in data.query} == test_ids
    for pid in test_ids | train_ids:
        cams = {r.camid for r in data.train + data.query + data.gallery if r.pid == pid}
        assert len(cams) >= 2
    for pid in test_ids:
        assert 1 <= sum(r.pid == pid for r in data.query) <= 2
    for q in data.query:
        assert any(g.pid == q.pid and g.camid != q.camid for g in data.gallery), q.path


@pytest.mark.parametrize("ids, cams, per_id", [(2, 2, 2), (9, 2, 3), (20, 5, 4), (30, 6, 2), (11, 9, 12)])
def test_every_query_has_a_cross_camera_match(ids, cams, per_id):
    jobs = plan_dataset(SynthSpec(ids, cams, per_id, seed=ids * cams))
    gallery = {(j.pid, j.camid) for j in jobs if j.split == "gallery"}
    queries = [j for j in jobs if j.split == "query"]
    assert {j.pid for j in queries} == set(range(ids // 2 + 1, ids + 1))
    assert all(any(p == q.pid and c != q.camid for p, c in gallery) for q in queries)
    assert len({j.name for j in jobs}) == len(jobs)
    for pid in range(1, ids + 1):
        assert len({j.camid for j in jobs if j.pid == pid}) >= 2


def _figure_pixels(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Pixels that differ from the (camera-cast) plain background, found without the mask."""
    far = cv2.dilate(mask, np.ones((7, 7), np.uint8)) == 0
    background = np.median(image[far], axis=0)
    return np.abs(image.astype(np.int16) - background).max(axis=2) > 40


@pytest.mark.parametrize("pid", range(1, 9))
def test_mask_matches_the_drawn_figure(pid):
    who = make_identity(3, pid)
    for k in range(4):
        rendered = render_image(who, make_camera(3, 1 + k % 3), np.random.default_rng([3, pid, k]), 128, 64,
                                background="plain", occluders=False, noise=False)
        mask = rendered.mask > 0
        drawn = _figure_pixels(rendered.image, rendered.mask)
        assert np.array_equal(rendered.mask, rendered.figure_mask)
        box, drawn_box = mask_bbox(rendered.mask), mask_bbox(drawn.astype(np.uint8))
        assert np.abs(np.subtract(box, drawn_box)).max() <= 2, (rendered.pose, box, drawn_box)
        iou = (mask & drawn).sum() / (mask | drawn).sum()
        assert iou > 0.85, (rendered.pose, iou)
    assert tuple(PLAIN_BACKGROUND) == (255, 0, 255)


def test_occluders_only_hide_the_person():
    hidden = 0
    for k in range(40):
        rendered = render_image(make_identity(0, k), make_camera(0, 1), np.random.default_rng([0, k]), 128, 64)
        mask, figure = rendered.mask > 0, rendered.figure_mask > 0
        assert not (mask & ~figure).any()
        if rendered.pose.occluder is not None:
            hidden += (figure & ~mask).sum() > 0
        else:
            assert np.array_equal(mask, figure)
    assert hidden >= 5


def test_identity_is_stable_and_varies_across_ids():
    assert make_identity(0, 5) == make_identity(0, 5)
    people = [make_identity(0, pid) for pid in range(1, 41)]
    assert len({(p.upper, p.lower) for p in people}) == 40
    assert len({p.pattern for p in people}) >= 4
    assert any(p.backpack for p in people) and any(p.logo for p in people) and any(p.hat for p in people)
    views = {render_image(people[0], make_camera(0, 1), np.random.default_rng(k), 64, 32).pose.view for k in range(30)}
    assert views == {"front", "back", "left", "right"}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser()
    add_synth_arguments(parser)
    return parser


def test_run_synth_cli(tmp_path, capsys):
    out = tmp_path / "cli"
    args = _parser().parse_args(["--out", str(out), "--ids", "4", "--cameras", "2", "--images-per-id", "3",
                                 "--seed", "5", "--height", "64", "--width", "32"])
    assert run_synth(args) == 0
    assert "wrote 12 images" in capsys.readouterr().out
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["seed"] == 5 and manifest["num_images"] == 12
    # a second run into the same folder is refused unless --overwrite
    assert run_synth(args) != 0
    assert "already holds a dataset" in capsys.readouterr().err
    args = _parser().parse_args(["--out", str(out), "--ids", "4", "--cameras", "2", "--images-per-id", "3",
                                 "--seed", "6", "--height", "64", "--width", "32", "--overwrite"])
    assert run_synth(args) == 0
    assert json.loads((out / "manifest.json").read_text())["seed"] == 6
    assert len(os.listdir(out / "bounding_box_train")) == 6


@pytest.mark.parametrize("flag, value, message", [("--ids", "1", "--ids"), ("--cameras", "1", "--cameras"),
                                                  ("--images-per-id", "1", "--images-per-id"),
                                                  ("--cameras", "12", "--cameras")])
def test_bad_arguments_are_clear_errors(tmp_path, capsys, flag, value, message):
    argv = {"--ids": "4", "--cameras": "2", "--images-per-id": "3"}
    argv[flag] = value
    args = _parser().parse_args(["--out", str(tmp_path / "x")] + [t for kv in argv.items() for t in kv])
    assert run_synth(args) != 0
    assert message in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
    with pytest.raises(ValueError, match=message):
        SynthSpec(int(argv["--ids"]), int(argv["--cameras"]), int(argv["--images-per-id"]), 0)
