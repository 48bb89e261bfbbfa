"""Gallery features and maps, extracted once and cached outside the user's folder.

The backbone runs once per gallery image (docs/design.md, sec. 4); the maps ``A`` and features ``f``
go into the project's on-disk map store (:func:`casn_core.engine.store_build.open_or_build_store`) under
``<cache-dir>/gallery-<hash of the folder>-<dtype>/``, keyed by the checkpoint's sha256, the input
size, the map dtype and the file list (relative path, size, modification time): any change
re-extracts, a damaged or stale store is rebuilt with a logged reason, never trusted. Messages go
to this module's logger and the store builder's (``casn search`` shows them on stderr).

Which candidates decode at all is found once per file list and remembered beside the store in
``<cache-dir>/checked/<hash of the file list>.json`` (written atomically, read as plain JSON and
checked against the list), so a later start neither decodes nor extracts anything.

:func:`load_or_extract_gallery` is the one place that knows how the features are stored.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Sequence

import torch

from casn_core.atomic import write_json_atomic
from casn_core.models.casn import CASN
from casn_core.search.scan import GalleryImage, SearchError, SkippedFile, check_images
from casn_core.engine.extraction import ExtractionConfig
from casn_core.engine.store_build import StoreSource, open_or_build_store
from casn_core.store import float32_map_bytes, resolve_map_dtype, store_path

CHECKED_FORMAT = "casn-search-checked"
CHECKED_VERSION = 1
DEFAULT_CACHE_DIR = Path(".cache") / "search"
"""Default cache folder, relative to the working directory."""

log = logging.getLogger(__name__)

__all__ = ["DEFAULT_CACHE_DIR", "GalleryFeatures", "check_cache_location", "file_list_key",
           "load_or_extract_gallery"]


@dataclass
class GalleryFeatures:
    """Features and maps of the readable gallery images (row ``i`` is ``images[i]``).

    ``maps`` is indexable like an (N, K, H, W) tensor (``maps[i]``, ``maps[indices]``) and has a
    ``dtype``; with the map store it reads rows from disk (:class:`casn_core.store.StoredMaps`).
    """

    images: list[GalleryImage]
    maps: object
    features: torch.Tensor
    unreadable: list[SkippedFile] = field(default_factory=list)
    cache_file: Path | None = None
    cache_hit: bool = False


def file_list_key(images: Sequence[GalleryImage]) -> str:
    """Hash of the candidate file list: relative path, size and modification time of each."""
    digest = hashlib.sha256(f"{CHECKED_FORMAT} v{CHECKED_VERSION}\n".encode())
    for image in images:
        digest.update(f"{image.relpath}\t{image.size}\t{image.mtime_ns}\n".encode())
    return digest.hexdigest()[:32]


def check_cache_location(cache_dir: str | os.PathLike, gallery: str | os.PathLike) -> Path:
    """The resolved cache folder; a :class:`SearchError` when it lies inside the gallery folder."""
    cache, root = Path(cache_dir).resolve(), Path(gallery).resolve()
    if cache == root or root in cache.parents:
        raise SearchError(f"cache folder {cache_dir} is inside the gallery folder {gallery}; nothing is written "
                          f"there: pass --cache-dir (cache_dir=) outside it")
    return cache


def _read_checked(path: Path, key: str, images: Sequence[GalleryImage]) -> tuple[list[GalleryImage], list[SkippedFile]]:
    """The remembered decode check of ``images``; a ``ValueError`` when it does not fit them."""
    data = json.loads(path.read_text())
    if not isinstance(data, dict) or data.get("format") != CHECKED_FORMAT or data.get("version") != CHECKED_VERSION:
        raise ValueError("not a decode-check record of this version")
    if data.get("key") != key:
        raise ValueError("its key does not match its name")
    readable, unreadable = data.get("readable"), data.get("unreadable")
    if not isinstance(readable, list) or not isinstance(unreadable, list) or not all(
            isinstance(item, list) and len(item) == 2 and all(isinstance(v, str) for v in item) for item in unreadable):
        raise ValueError("malformed lists")
    by_path = {image.relpath: image for image in images}
    if sorted(readable + [p for p, _ in unreadable]) != sorted(by_path):
        raise ValueError("its file list differs from the folder's")
    return [by_path[p] for p in readable], [SkippedFile(p, r) for p, r in unreadable]


def checked_images(images: Sequence[GalleryImage], cache_dir: Path,
                   progress: bool = True) -> tuple[list[GalleryImage], list[SkippedFile]]:
    """``(readable, unreadable)`` of ``images``: remembered per file list, else decoded once and recorded."""
    key = file_list_key(images)
    record = cache_dir / "checked" / f"{key}.json"
    if record.is_file():
        try:
            return _read_checked(record, key, images)
        except (OSError, ValueError) as exc:  # json errors are ValueErrors
            log.warning("decode-check record %s unusable (%s: %s); checking again", record, type(exc).__name__, exc)
    good, bad = check_images(images, progress=progress)
    write_json_atomic(record, {"format": CHECKED_FORMAT, "version": CHECKED_VERSION, "key": key,
                               "readable": [i.relpath for i in good], "unreadable": [[s.path, s.reason] for s in bad]})
    return good, bad


def load_or_extract_gallery(model: CASN, images: Sequence[GalleryImage], checkpoint: str | os.PathLike,
                            cache_dir: str | os.PathLike, gallery: str | os.PathLike,
                            config: ExtractionConfig) -> GalleryFeatures:
    """Features and maps of the readable ``images`` of folder ``gallery``, extracted once per checkpoint and file list.

    ``config``: the extraction (docs/design.md, sec. 4): ``input_size`` (required), batching, AMP,
    progress, and ``map_dtype``: ``auto`` (the store's rule: float32 while the folder's float32 maps
    take <= 4 GiB, else bfloat16), ``float32``, ``float16`` or ``bfloat16``. Its ``store_dir`` is not
    read: the store lives under ``cache_dir``. Unreadable candidates are returned in ``unreadable`` with reasons.
    """
    from casn_core.data import ImageRecord

    if config.input_size is None:
        raise ValueError("load_or_extract_gallery needs ExtractionConfig.input_size (the checkpoint's)")
    cache_dir = Path(cache_dir)
    good, bad = checked_images(list(images), cache_dir, config.progress)
    if not good:
        return GalleryFeatures(images=[], maps=torch.zeros(0, 0, 0, 0), features=torch.zeros(0, 0), unreadable=bad)
    records = [ImageRecord(i.path, -1 if i.pid is None else i.pid, -1 if i.camid is None else i.camid, 0) for i in good]
    root = Path(gallery).resolve()
    float32_bytes = float32_map_bytes(model, config.input_size, len(records)) if config.map_dtype == "auto" else None
    dtype = resolve_map_dtype(config.map_dtype, next(model.parameters()).device, float32_bytes=float32_bytes)
    path = store_path(cache_dir, root, "gallery", dtype)  # the store keys itself (checkpoint, files, size, dtype)
    store_config = replace(config, input_size=tuple(config.input_size), map_dtype=dtype)
    store = open_or_build_store(model, records, path, store_config, source=StoreSource(checkpoint, root),
                                desc="gallery features")  # its messages: casn_core.engine.store_build's logger
    hit = not store.built_now
    if hit:
        log.info("gallery features: loaded from cache %s (%d images)", path, len(store))
    if len(store) != len(good) or [str(p) for p in store.paths] != [r.path for r in records]:
        raise SearchError(f"map store {path} does not hold the images of {gallery} in order")
    return GalleryFeatures(images=good, maps=store.maps, features=store.features, unreadable=bad, cache_file=path,
                           cache_hit=hit)
