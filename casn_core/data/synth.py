"""``python -m casn_core synth``: write a procedural pedestrian dataset in the Market-1501 layout.

The project's embedded demo data (docs/design.md, sec. 6; the people are drawn by
:mod:`casn_core.data.pedestrian`). Layout::

    OUT/bounding_box_train/0001_c1s2_000000_00.jpg     training ids (the first half: 1..N//2)
    OUT/query/...                                      test ids (the rest), 1 or 2 images each
    OUT/bounding_box_test/...                          the other images of the test ids
    OUT/masks/<split>/<same name>.png                  person mask, uint8 0/255
    OUT/manifest.json                                  seed, counts, generator version, image size, per-image facts

Every identity is seen by at least two cameras. Each query is taken from a camera such that the
gallery still holds an image of the same person from another camera, so every query has a
cross-camera true match under the Market-1501 protocol (docs/design.md, sec. 5).

Determinism: identity ``pid`` draws its appearance from ``(seed, pid)``, camera ``c`` its cast and
scene from ``(seed, c)``, and image ``k`` of ``pid`` everything else from ``(seed, pid, k)``; JPEG
quality and PNG compression are fixed. The same arguments give byte-identical files whatever the
number of workers.
"""
from __future__ import annotations

import json
import multiprocessing
import os
import shutil
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from casn_core.data.market import SPLIT_FOLDERS
from casn_core.data.pedestrian import make_identity
from casn_core.data.scene import make_camera, mask_bbox, render_image

GENERATOR_VERSION = "1.0"
JPEG_QUALITY = 92
PNG_COMPRESSION = 3
MAX_CAMERAS = 9  # Market-style names carry one camera digit
MASK_FOLDER = "masks"


@dataclass(frozen=True)
class ImageJob:
    """One image to render: where it goes and what it shows."""

    split: str
    pid: int
    camid: int
    index: int  # image number k of this person, 0..images_per_id-1
    name: str

    @property
    def path(self) -> str:
        return f"{SPLIT_FOLDERS[self.split]}/{self.name}"

    @property
    def mask_path(self) -> str:
        return f"{MASK_FOLDER}/{SPLIT_FOLDERS[self.split]}/{Path(self.name).stem}.png"


@dataclass(frozen=True)
class SynthSpec:
    """What to generate: identities, cameras, images per identity, the seed and the image size (H x W).

    The seed and the counts decide every image (see the module docstring); the checks run here, so a
    spec that exists can be generated. Messages name the ``casn synth`` option of each field.
    """

    num_ids: int
    num_cameras: int
    images_per_id: int
    seed: int
    height: int = 256
    width: int = 128

    def __post_init__(self) -> None:
        if self.num_ids < 2:
            raise ValueError(f"--ids must be >= 2 (half train, half query/gallery), got {self.num_ids}")
        if not 2 <= self.num_cameras <= MAX_CAMERAS:
            raise ValueError(f"--cameras must be between 2 and {MAX_CAMERAS} (every test person needs two cameras; "
                             f"Market names hold one camera digit), got {self.num_cameras}")
        if self.images_per_id < 2:
            raise ValueError(f"--images-per-id must be >= 2 (two cameras per person), got {self.images_per_id}")
        if self.num_ids > 9999:
            raise ValueError(f"--ids must be <= 9999 (four-digit person ids), got {self.num_ids}")
        if self.height < 32 or self.width < 16:
            raise ValueError(f"image size must be at least 32x16, got {self.height}x{self.width}")


def plan_dataset(spec: SynthSpec) -> list[ImageJob]:
    """Every image of the dataset, in a fixed order (train ids first, then query/gallery ids); the
    image size plays no part."""
    num_ids, num_cameras, images_per_id, seed = spec.num_ids, spec.num_cameras, spec.images_per_id, spec.seed
    num_train = num_ids // 2
    jobs: list[ImageJob] = []
    frame = 0
    for pid in range(1, num_ids + 1):
        rng = np.random.default_rng([int(seed), 3, pid])
        count = int(rng.integers(2, min(num_cameras, images_per_id) + 1))
        cameras = np.sort(rng.choice(num_cameras, size=count, replace=False) + 1)
        camids = [int(cameras[k % count]) for k in range(images_per_id)]
        splits = ["train"] * images_per_id
        if pid > num_train:
            splits = ["gallery"] * images_per_id
            per_camera = {c: [k for k in range(images_per_id) if camids[k] == c] for c in cameras.tolist()}
            two = count >= 3 or all(len(v) >= 2 for v in per_camera.values())
            num_query = 2 if two and rng.random() < 0.5 else 1
            for c in rng.choice(cameras, size=num_query, replace=False).tolist():
                splits[per_camera[int(c)][int(rng.integers(len(per_camera[int(c)])))]] = "query"
        for k in range(images_per_id):
            name = f"{pid:04d}_c{camids[k]}s{1 + (pid + k) % 6}_{frame:06d}_00.jpg"
            jobs.append(ImageJob(split=splits[k], pid=pid, camid=camids[k], index=k, name=name))
            frame += 1
    return jobs


def cross_camera_matches(jobs: list[ImageJob]) -> dict[str, int]:
    """How many queries have (and lack) a gallery image of the same person from another camera."""
    gallery = {(j.pid, j.camid) for j in jobs if j.split == "gallery"}
    cams_of: dict[int, set[int]] = {}
    for pid, camid in gallery:
        cams_of.setdefault(pid, set()).add(camid)
    queries = [j for j in jobs if j.split == "query"]
    matched = sum(1 for q in queries if cams_of.get(q.pid, set()) - {q.camid})
    return {"queries": len(queries), "with_match": matched, "without_match": len(queries) - matched}


def _render_job(job: ImageJob, seed: int, height: int, width: int, out_dir: str) -> dict:
    who = make_identity(seed, job.pid)
    camera = make_camera(seed, job.camid)
    rendered = render_image(who, camera, np.random.default_rng([int(seed), 2, job.pid, job.index]), height, width)
    ok1 = cv2.imwrite(os.path.join(out_dir, job.path), rendered.image, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    ok2 = cv2.imwrite(os.path.join(out_dir, job.mask_path), rendered.mask, [cv2.IMWRITE_PNG_COMPRESSION, PNG_COMPRESSION])
    if not (ok1 and ok2):
        raise OSError(f"could not write {os.path.join(out_dir, job.path)} or its mask")
    box = mask_bbox(rendered.mask)
    return {"path": job.path, "mask": job.mask_path, "split": job.split, "pid": job.pid, "camid": job.camid,
            "view": rendered.pose.view, "occluder": rendered.pose.occluder,
            "person_box": None if box is None else list(box),
            "visible_fraction": round(float(np.count_nonzero(rendered.mask)) /
                                      max(1, int(np.count_nonzero(rendered.figure_mask))), 4)}


def _render_chunk(args: tuple) -> list[dict]:
    jobs, seed, height, width, out_dir = args
    return [_render_job(job, seed, height, width, out_dir) for job in jobs]


def _worker_init() -> None:
    cv2.setNumThreads(1)


def _prepare(out: Path, overwrite: bool) -> None:
    generated = [out / f for f in SPLIT_FOLDERS.values()] + [out / MASK_FOLDER, out / "manifest.json"]
    existing = [p for p in generated if p.exists()]
    if existing and not overwrite:
        raise FileExistsError(f"{out} already holds a dataset ({existing[0].name} exists); "
                              f"choose an empty folder or pass overwrite=True (--overwrite)")
    for p in existing:
        shutil.rmtree(p) if p.is_dir() else p.unlink()
    for folder in SPLIT_FOLDERS.values():
        (out / folder).mkdir(parents=True, exist_ok=True)
        (out / MASK_FOLDER / folder).mkdir(parents=True, exist_ok=True)


def generate_dataset(out_dir: str | os.PathLike, spec: SynthSpec, workers: int = 0, overwrite: bool = False) -> dict:
    """Write the dataset ``spec`` describes (see the module docstring) into ``out_dir``; its manifest.

    ``workers`` > 1 renders in that many processes (same bytes as ``workers=0``). Raises
    :class:`ValueError` for a bad ``workers`` (a bad spec raises when it is made) and
    :class:`FileExistsError` when ``out_dir`` already holds a generated dataset and ``overwrite`` is false.
    """
    if workers < 0:
        raise ValueError(f"--workers must be >= 0, got {workers}")
    num_ids, seed, height, width = spec.num_ids, spec.seed, spec.height, spec.width
    out = Path(out_dir)
    jobs = plan_dataset(spec)
    _prepare(out, overwrite)
    if workers and workers > 1:
        size = max(1, min(64, len(jobs) // (4 * workers)))
        chunks = [(jobs[i:i + size], seed, height, width, str(out)) for i in range(0, len(jobs), size)]
        # spawn, not fork: a forked child deadlocks in OpenCV's thread pool once the parent used it
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=workers, mp_context=context, initializer=_worker_init) as pool:
            images = [item for chunk in pool.map(_render_chunk, chunks) for item in chunk]
    else:
        images = _render_chunk((jobs, seed, height, width, str(out)))
    splits = {}
    for split in SPLIT_FOLDERS:
        chosen = [j for j in jobs if j.split == split]
        splits[split] = {"folder": SPLIT_FOLDERS[split], "images": len(chosen), "ids": len({j.pid for j in chosen}),
                         "cameras": len({j.camid for j in chosen})}
    manifest = {
        "generator": "casn_core.data.synth",
        "generator_version": GENERATOR_VERSION,
        "seed": int(seed),
        "num_ids": int(num_ids),
        "num_cameras": int(spec.num_cameras),
        "images_per_id": int(spec.images_per_id),
        "image_size": {"height": int(height), "width": int(width)},
        "jpeg_quality": JPEG_QUALITY,
        "num_images": len(jobs),
        "splits": splits,
        "train_ids": [1, int(num_ids) // 2],
        "test_ids": [int(num_ids) // 2 + 1, int(num_ids)],
        "query_cross_camera": cross_camera_matches(jobs),
        "mask": "masks/<split folder>/<image stem>.png, uint8, 255 = visible person (with hair, hat and bags)",
        "identities": {str(pid): make_identity(seed, pid).describe() for pid in range(1, num_ids + 1)},
        "images": images,
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    return manifest
