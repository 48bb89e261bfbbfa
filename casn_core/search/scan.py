"""Scanning a user's folder of person crops: no naming convention needed, nothing written there.

The folder is searched recursively for ``.jpg .jpeg .png .bmp .webp`` files (any case), in sorted
order of their relative paths, so the gallery order is the same on every run. Market-1501 style
names (``PPPP_cC...``, :func:`casn_core.data.parse_market_name`) give person id and camera when
present; otherwise the image is unlabelled. Files with other extensions, hidden entries aside, are
skipped and reported; images that cannot be decoded are found by :func:`check_images`. Symbolic
links are never followed out of the folder (their targets are resolved and checked for
containment), and links to folders are not followed at all (their targets, when inside, are
scanned as themselves).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

from tqdm import tqdm

from casn_core.data.market import parse_market_name

SEARCH_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
"""Image file extensions a gallery folder is searched for (compared case-insensitively)."""
LISTED = 5
"""How many skipped files a summary names (all of them are counted)."""


class SearchError(ValueError):
    """A gallery folder, a query or a cache location cannot be used; the message names it."""


class GalleryNotFoundError(SearchError, FileNotFoundError):
    """The gallery folder does not exist or is not a folder."""


class EmptyGalleryError(SearchError):
    """The gallery folder holds no usable image (empty, or only unreadable/non-image files)."""


@dataclass(frozen=True)
class GalleryImage:
    """One image of a gallery: ``relpath`` (POSIX, relative to the folder) is how it is shown.

    ``path`` is the file actually read (for a link inside the folder, its resolved target);
    ``size`` and ``mtime_ns`` key the feature cache; ``pid``/``camid`` are ``None`` unless the
    file name is Market-style.
    """

    relpath: str
    path: str
    size: int
    mtime_ns: int
    pid: int | None = None
    camid: int | None = None


@dataclass(frozen=True)
class SkippedFile:
    """A file of the gallery folder that is not searched, and why."""

    path: str
    reason: str


@dataclass
class GalleryReport:
    """What a scan found: usable images, and every skipped file with its reason."""

    folder: str
    num_images: int = 0
    skipped: list[SkippedFile] = field(default_factory=list)
    num_hidden: int = 0

    @property
    def num_skipped(self) -> int:
        return len(self.skipped)

    def skipped_text(self) -> str:
        """``"3 file(s) skipped: a.txt (reason); ..."`` naming the first few, or ``""``."""
        if not self.num_skipped:
            return ""
        names = "; ".join(f"{s.path} ({s.reason})" for s in self.skipped[:LISTED])
        more = f"; and {self.num_skipped - LISTED} more" if self.num_skipped > LISTED else ""
        return f"{self.num_skipped} file(s) skipped: {names}{more}"

    def summary(self) -> str:
        """One line naming the first few skipped files, e.g. for the log and the app page."""
        skipped = self.skipped_text()
        return f"gallery {self.folder}: {self.num_images} images" + (f", {skipped}" if skipped else "")

    def to_json(self) -> dict:
        """``{"folder", "num_images", "num_skipped", "skipped": [{"path", "reason"}, ... first few]}``."""
        return {
            "folder": self.folder,
            "num_images": self.num_images,
            "num_skipped": self.num_skipped,
            "skipped": [{"path": s.path, "reason": s.reason} for s in self.skipped[:LISTED]],
        }


def _inside(path: Path, root: Path) -> bool:
    return path == root or root in path.parents


def _image_entry(relpath: str, path: Path) -> GalleryImage:
    stat = path.stat()
    ids = parse_market_name(relpath)
    pid, camid = ids if ids is not None else (None, None)
    return GalleryImage(relpath=relpath, path=str(path), size=int(stat.st_size), mtime_ns=int(stat.st_mtime_ns),
                        pid=pid, camid=camid)


def scan_gallery(folder: str | os.PathLike) -> tuple[list[GalleryImage], GalleryReport]:
    """Candidate images of ``folder`` (recursive, sorted by relative path) and the scan's report.

    Only names and ``stat`` are read here; decoding is :func:`check_images`. Raises
    :class:`GalleryNotFoundError` for a missing folder or a file given as folder. The candidate list
    may be empty; :func:`require_images` turns that into an error naming the folder.
    """
    given = Path(folder)
    if not given.exists():
        raise GalleryNotFoundError(f"gallery folder {given} does not exist")
    if not given.is_dir():
        raise GalleryNotFoundError(f"gallery {given} is not a folder")
    root = given.resolve()
    report = GalleryReport(folder=str(given))
    images: list[GalleryImage] = []

    def walk(directory: Path, prefix: str) -> None:
        try:
            entries = sorted(os.scandir(directory), key=lambda e: e.name)
        except OSError as exc:
            report.skipped.append(SkippedFile(prefix.rstrip("/") or ".", f"folder cannot be listed ({exc.strerror})"))
            return
        for entry in entries:
            rel = prefix + entry.name
            if entry.name.startswith("."):
                report.num_hidden += 1
                continue
            path = Path(entry.path)
            if entry.is_symlink():
                target = path.resolve()
                if not target.exists():
                    report.skipped.append(SkippedFile(rel, "broken symbolic link"))
                elif not _inside(target, root):
                    report.skipped.append(SkippedFile(rel, "symbolic link to outside the gallery folder, not followed"))
                elif target.is_dir():
                    report.skipped.append(SkippedFile(rel, "symbolic link to a folder, not followed "
                                                           "(its target inside the gallery is scanned itself)"))
                elif not rel.lower().endswith(SEARCH_EXTENSIONS):
                    report.skipped.append(SkippedFile(rel, "not an image file (extension)"))
                else:
                    images.append(_image_entry(rel, target))
                continue
            if entry.is_dir(follow_symlinks=False):
                walk(path, rel + "/")
            elif not entry.is_file(follow_symlinks=False):
                report.skipped.append(SkippedFile(rel, "not a regular file"))
            elif not entry.name.lower().endswith(SEARCH_EXTENSIONS):
                report.skipped.append(SkippedFile(rel, "not an image file (extension)"))
            else:
                images.append(_image_entry(rel, path))

    walk(root, "")
    images.sort(key=lambda image: image.relpath)
    report.skipped.sort(key=lambda s: s.path)
    report.num_images = len(images)
    return images, report


def check_images(images: Iterable[GalleryImage], progress: bool = True,
                 reader: Callable | None = None) -> tuple[list[GalleryImage], list[SkippedFile]]:
    """Decode every image once with the project's safe reader; ``(readable, skipped with reasons)``.

    The reader is :func:`casn_core.images.load_rgb` (size limits, truncation, non-images are an
    :class:`~casn_core.images.ImageInputError`); unreadable files (permissions) are skipped too.
    """
    from casn_core.images import ImageInputError, load_rgb

    read = reader or load_rgb
    good, bad = [], []
    images = list(images)
    for image in tqdm(images, desc="check images", disable=not progress, unit="image"):
        try:
            read(image.path, name=image.relpath)
        except ImageInputError as exc:
            reason = str(exc)
            prefix = f"{image.relpath}: "
            bad.append(SkippedFile(image.relpath, reason[len(prefix):] if reason.startswith(prefix) else reason))
        except OSError as exc:
            bad.append(SkippedFile(image.relpath, f"cannot be read ({exc.strerror or exc})"))
        else:
            good.append(image)
    return good, bad


def require_images(images: list[GalleryImage], report: GalleryReport) -> None:
    """Raise :class:`EmptyGalleryError` naming the folder when no usable image is left."""
    if images:
        return
    if not report.skipped:
        raise EmptyGalleryError(f"gallery folder {report.folder} holds no images "
                                f"(searched recursively for {', '.join(SEARCH_EXTENSIONS)})")
    raise EmptyGalleryError(f"gallery folder {report.folder} holds no usable image: {report.skipped_text()}")
