"""Market-1501 folder layout: the loader of Market-1501, DukeMTMC-reID and CUHK03-NP.

All three datasets the paper evaluates on (CASN, CVPR 2019, sec. 4) are distributed in one layout
(docs/design.md, sec. 5)::

    root/bounding_box_train/   training images            -> split "train"
    root/query/                query images               -> split "query"
    root/bounding_box_test/    gallery images             -> split "gallery"

File names start with ``PPPP_cC``: person id ``PPPP`` and camera ``C`` (1-based, kept as written).

* Market-1501: ``0004_c2s3_059152_00.jpg``; ``-1_c1s1_...`` is junk, ``0000_...`` a distractor.
* DukeMTMC-reID: ``0005_c2_f0046985.jpg``.
* CUHK03-NP: ``0001_c1_1.png`` in ``detected/`` and ``labeled/``; pass that folder as ``root``.

Junk images (person id -1) are skipped everywhere. Distractors (person id 0) are kept in query
and gallery, where the evaluation protocol treats them as non-matches; in a relabelled (training)
split they are dropped, because they are not a person class (Market-1501's training split has
none). Both are counted in the split's :class:`SplitReport`. Names that do not parse are counted
and reported through :func:`warnings.warn` and the logger, never silently dropped.
"""
from __future__ import annotations

import logging
import os
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import torch
from torch.utils.data import Dataset

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp")
SPLIT_FOLDERS = {"train": "bounding_box_train", "query": "query", "gallery": "bounding_box_test"}
"""Split name -> folder name inside a Market-layout root."""
JUNK_PID = -1
DISTRACTOR_PID = 0
_NAME = re.compile(r"^(-?\d+)_c(\d+)")
_EXAMPLES = 5


class DatasetError(ValueError):
    """A dataset folder cannot be used; the message names the path and says why."""


class DatasetNotFoundError(DatasetError, FileNotFoundError):
    """A dataset root or split folder does not exist (also a :class:`FileNotFoundError`)."""


def parse_market_name(filename: str | os.PathLike) -> tuple[int, int] | None:
    """``(pid, camid)`` of a Market-style file name, or ``None`` when it does not parse.

    ``0004_c2s3_059152_00.jpg`` -> ``(4, 2)``; ``-1_c1s1_000401_03.jpg`` -> ``(-1, 1)``;
    ``0005_c2_f0046985.jpg`` -> ``(5, 2)``; ``0001_c1_1.png`` -> ``(1, 1)``. The camera id is
    returned as written (1-based). Only the base name is looked at.
    """
    match = _NAME.match(os.path.basename(os.fspath(filename)))
    if match is None:
        return None
    pid, camid = int(match.group(1)), int(match.group(2))
    if pid < JUNK_PID:
        return None
    return pid, camid


@dataclass(frozen=True)
class ImageRecord:
    """One image: ``label`` is the relabelled id 0..C-1 in a training split, else the pid.

    ``camid`` is 1-based, as in the file name.
    """

    path: str
    pid: int
    camid: int
    label: int


@dataclass
class SplitReport:
    """What :func:`load_split` found in one folder."""

    folder: str
    num_files: int = 0
    num_images: int = 0
    num_junk: int = 0
    num_distractors: int = 0
    num_distractors_dropped: int = 0
    num_unparsed: int = 0
    unparsed_examples: list[str] = field(default_factory=list)
    num_other_files: int = 0
    num_ids: int = 0
    num_cams: int = 0

    def summary(self) -> str:
        """One line, e.g. ``query: 32 images, 16 ids, 6 cameras``."""
        text = f"{Path(self.folder).name}: {self.num_images} images, {self.num_ids} ids, {self.num_cams} cameras"
        extras = [f"{n} {what}" for n, what in ((self.num_junk, "junk skipped"),
                                                 (self.num_distractors, "distractors"),
                                                 (self.num_distractors_dropped, "distractors dropped"),
                                                 (self.num_unparsed, "unparsed names skipped")) if n]
        return text + (f" ({', '.join(extras)})" if extras else "")


# kept as an alias: the brief names the report "SplitStats"
SplitStats = SplitReport


def load_split(folder: str | os.PathLike, relabel: bool) -> tuple[list[ImageRecord], SplitReport]:
    """Read one split folder (flat, sorted by file name, so the order is deterministic).

    With ``relabel`` (training splits) the labels are 0..C-1 in sorted pid order and distractors
    (pid 0) are dropped; without it ``label == pid``. Junk (pid -1) is always skipped. Raises
    :class:`DatasetNotFoundError` when ``folder`` is not a directory. An empty result is not an
    error here (see :func:`load_market`).
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise DatasetNotFoundError(f"{folder}: no such folder")
    report = SplitReport(folder=str(folder))
    parsed: list[tuple[str, int, int]] = []
    # os.scandir: the file type comes with the listing (no stat per file on most file systems);
    # DirEntry.is_file follows symlinks, as Path.is_file does
    # paths are spelled as str(folder / name) was: pathlib drops a leading "./"
    base = "" if str(folder) == "." else str(folder)
    with os.scandir(folder) as listing:
        entries = sorted((entry.name, entry) for entry in listing)
    for name, entry in entries:
        path = os.path.join(base, name)
        if name.startswith(".") or not entry.is_file():
            continue
        report.num_files += 1
        if not name.lower().endswith(IMAGE_EXTENSIONS):
            report.num_other_files += 1  # Thumbs.db, readme files, ...
            continue
        ids = parse_market_name(name)
        if ids is None:
            report.num_unparsed += 1
            if len(report.unparsed_examples) < _EXAMPLES:
                report.unparsed_examples.append(name)
            continue
        pid, camid = ids
        if pid == JUNK_PID:
            report.num_junk += 1
            continue
        if pid == DISTRACTOR_PID:
            if relabel:
                report.num_distractors_dropped += 1
                continue
            report.num_distractors += 1
        parsed.append((path, pid, camid))
    if report.num_unparsed:
        message = (f"{folder}: {report.num_unparsed} image name(s) do not follow the Market-1501 pattern "
                   f"PPPP_cC... and were skipped, e.g. {', '.join(report.unparsed_examples)}")
        warnings.warn(message, stacklevel=2)
        log.warning(message)
    pids = sorted({pid for _, pid, _ in parsed})
    label_of = {pid: i for i, pid in enumerate(pids)} if relabel else {pid: pid for pid in pids}
    records = [ImageRecord(path, pid, camid, label_of[pid]) for path, pid, camid in parsed]
    report.num_images = len(records)
    report.num_ids = len(pids)
    report.num_cams = len({r.camid for r in records})
    return records, report


@dataclass
class ReidDataset:
    """Train, query and gallery records of a Market-layout root (splits not loaded are empty)."""

    root: str
    train: list[ImageRecord] = field(default_factory=list)
    query: list[ImageRecord] = field(default_factory=list)
    gallery: list[ImageRecord] = field(default_factory=list)
    reports: dict[str, SplitReport] = field(default_factory=dict)

    @property
    def num_train_pids(self) -> int:
        return len({r.pid for r in self.train})

    @property
    def num_train_cams(self) -> int:
        return len({r.camid for r in self.train})

    @property
    def num_query_pids(self) -> int:
        return len({r.pid for r in self.query})

    @property
    def num_gallery_pids(self) -> int:
        return len({r.pid for r in self.gallery})

    def summary(self) -> str:
        """The loaded splits, one line each."""
        return "\n".join(f"{name:<8}{report.summary()}" for name, report in self.reports.items())


def load_market(root: str | os.PathLike, splits: Sequence[str] = ("train", "query", "gallery")) -> ReidDataset:
    """Load the named splits of a Market-layout dataset (Market-1501, DukeMTMC-reID, CUHK03-NP).

    Raises :class:`DatasetNotFoundError` for a missing root or split folder and
    :class:`DatasetError` for an unknown split name or a split without usable images.
    """
    root_path = Path(root)
    unknown = [s for s in splits if s not in SPLIT_FOLDERS]
    if unknown or not splits:
        raise DatasetError(f"unknown split(s) {unknown or list(splits)}; choose from {list(SPLIT_FOLDERS)}")
    if not root_path.is_dir():
        raise DatasetNotFoundError(f"dataset root {root_path} does not exist or is not a folder")
    dataset = ReidDataset(root=str(root_path))
    for split in splits:
        folder = root_path / SPLIT_FOLDERS[split]
        if not folder.is_dir():
            hint = ""
            if (root_path / "detected").is_dir() or (root_path / "labeled").is_dir():
                hint = f"; for CUHK03-NP pass {root_path / 'detected'} or {root_path / 'labeled'} as the root"
            raise DatasetNotFoundError(
                f"{folder}: missing {split} folder; a Market-layout root holds "
                f"{', '.join(SPLIT_FOLDERS[s] + '/' for s in splits)}{hint}"
            )
        records, report = load_split(folder, relabel=split == "train")
        if not records:
            raise DatasetError(f"{folder}: the {split} split has no usable images ({report.num_files} files: "
                               f"{report.num_junk} junk, {report.num_distractors_dropped} distractors dropped, "
                               f"{report.num_unparsed} unparsed names, {report.num_other_files} non-images)")
        setattr(dataset, split, records)
        dataset.reports[split] = report
        log.info("%s", report.summary())
    return dataset


class ImageDataset(Dataset):
    """Images of a list of records: item ``i`` is ``(image_tensor, label, camid, i)``.

    Images are opened with PIL and converted to RGB (:func:`casn_core.images.load_rgb`); a file that
    cannot be read raises :class:`casn_core.images.ImageInputError` naming it. Without a
    ``transform`` the image becomes a float tensor in [0, 1].
    """

    def __init__(self, records: Sequence[ImageRecord], transform: Callable | None = None) -> None:
        self.records = list(records)
        if transform is None:
            from torchvision import transforms as T

            transform = T.ToTensor()
        self.transform = transform

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int, int, int]:
        record = self.records[index]
        return self.transform(read_image(record.path)), record.label, record.camid, index


def read_image(path: str | os.PathLike):
    """An RGB PIL image; errors name the file."""
    from casn_core.images import load_rgb

    return load_rgb(path)
