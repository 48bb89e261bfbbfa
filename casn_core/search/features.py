"""Gallery features and maps, extracted once and cached outside the user's folder.

The backbone runs once per gallery image (DESIGN.md sec. 4): the maps ``A`` and features ``f``
are stored in ``<cache-dir>/<key>.pt``, where the key hashes the checkpoint's bytes (sha256), the
input size, the map dtype and the candidate file list (relative path, size, modification time).
Any change of those re-extracts; a damaged or mismatching cache file is rebuilt, never trusted.
The file holds only tensors, strings and numbers: it is written atomically (temporary file in the
same folder, fsync, rename) and read with ``torch.load(weights_only=True)``.

:func:`load_or_extract_gallery` is the one place that knows how the features are stored, so that
it can be backed by the project's map store later without touching its callers.
"""
from __future__ import annotations

import hashlib
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from casn_core.engine.inference import FeatureCache, extract
from casn_core.models.casn import CASN
from casn_core.search.scan import GalleryImage, SearchError, SkippedFile, check_images

CACHE_FORMAT = "casn-search-features"
CACHE_VERSION = 1
DEFAULT_CACHE_DIR = Path(".cache") / "search"
"""Default cache folder, relative to the working directory."""
MAP_BYTES_BF16 = 2 * 2**30
"""Above this many bytes of float32 maps, maps are kept in bfloat16 (half the memory)."""


@dataclass
class GalleryFeatures:
    """Features and maps of the readable gallery images (row ``i`` is ``images[i]``)."""

    images: list[GalleryImage]
    maps: torch.Tensor
    features: torch.Tensor
    unreadable: list[SkippedFile] = field(default_factory=list)
    cache_file: Path | None = None
    cache_hit: bool = False

    def as_feature_cache(self) -> FeatureCache:
        """The :class:`~casn_core.engine.inference.FeatureCache` view (pid/camid -1 where unlabelled)."""
        return FeatureCache(
            maps=self.maps, features=self.features,
            pids=np.asarray([-1 if i.pid is None else i.pid for i in self.images]),
            camids=np.asarray([-1 if i.camid is None else i.camid for i in self.images]),
            paths=[i.path for i in self.images],
        )


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


def cache_key(checkpoint_sha256: str, input_size: tuple[int, int], map_dtype: str,
              images: Sequence[GalleryImage]) -> str:
    """Hash of the checkpoint digest, input size, map dtype and file list (path, size, mtime)."""
    digest = hashlib.sha256()
    digest.update(f"{CACHE_FORMAT} v{CACHE_VERSION}\n{checkpoint_sha256}\n".encode())
    digest.update(f"{input_size[0]}x{input_size[1]} {map_dtype}\n".encode())
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


def choose_map_dtype(model: CASN, input_size: tuple[int, int], count: int) -> torch.dtype:
    """float32, or bfloat16 when float32 maps of ``count`` images would exceed :data:`MAP_BYTES_BF16`."""
    device = next(model.parameters()).device
    with torch.no_grad():
        probe = model.feature_map(torch.zeros(1, 3, *input_size, device=device))
    return torch.bfloat16 if probe[0].numel() * 4 * count > MAP_BYTES_BF16 else torch.float32


def _atomic_save(obj: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            torch.save(obj, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _read_cache(path: Path, key: str, images: Sequence[GalleryImage]) -> GalleryFeatures:
    """Read and validate a cache file; any mismatch is a ``ValueError``."""
    data = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(data, dict) or data.get("format") != CACHE_FORMAT or data.get("version") != CACHE_VERSION:
        raise ValueError("not a search feature cache of this version")
    if data.get("key") != key:
        raise ValueError("its key does not match its name")
    by_path = {image.relpath: image for image in images}
    good, bad, reasons = list(data["paths"]), list(data["unreadable_paths"]), list(data["unreadable_reasons"])
    maps, features = data["maps"], data["features"]
    if sorted(good + bad) != sorted(by_path) or len(bad) != len(reasons):
        raise ValueError("its file list differs from the folder's")
    if not (isinstance(maps, torch.Tensor) and isinstance(features, torch.Tensor) and maps.ndim == 4
            and features.ndim == 2 and maps.shape[0] == features.shape[0] == len(good)):
        raise ValueError("its tensors do not fit its file list")
    return GalleryFeatures(images=[by_path[p] for p in good], maps=maps, features=features,
                           unreadable=[SkippedFile(p, str(r)) for p, r in zip(bad, reasons)],
                           cache_file=path, cache_hit=True)


def extract_gallery(model: CASN, images: Sequence[GalleryImage], input_size: tuple[int, int],
                    map_dtype: torch.dtype = torch.float32, batch_size: int = 64, amp: str = "none",
                    progress: bool = True) -> FeatureCache:
    """Run the backbone over readable gallery images (:func:`casn_core.engine.inference.extract`)."""
    from casn_core.data import ImageDataset, ImageRecord, build_test_transform

    records = [ImageRecord(i.path, -1 if i.pid is None else i.pid, -1 if i.camid is None else i.camid, 0)
               for i in images]
    dataset = ImageDataset(records, build_test_transform(*input_size))
    return extract(model, dataset, records, batch_size=batch_size, amp=amp, map_dtype=map_dtype,
                   progress=progress, desc="gallery features")


def load_or_extract_gallery(model: CASN, images: Sequence[GalleryImage], input_size: tuple[int, int],
                            checkpoint_sha256: str, cache_dir: str | os.PathLike, map_dtype: torch.dtype | None = None,
                            batch_size: int = 64, amp: str = "none", progress: bool = True,
                            log: Callable[[str], None] = print) -> GalleryFeatures:
    """Features and maps of ``images`` from ``cache_dir``, decoding and extracting them once on a miss.

    On a miss every candidate is decoded (:func:`~casn_core.search.scan.check_images`); the
    unreadable ones are recorded in the cache with their reasons, so a hit needs no decoding.
    ``map_dtype`` ``None`` chooses float32 unless that would be large (:func:`choose_map_dtype`).
    """
    images = list(images)
    dtype = map_dtype or choose_map_dtype(model, input_size, len(images))
    dtype_name = "bf16" if dtype == torch.bfloat16 else "fp32"
    key = cache_key(checkpoint_sha256, input_size, dtype_name, images)
    cache_file = Path(cache_dir) / f"{key}.pt"
    if cache_file.is_file():
        try:
            cached = _read_cache(cache_file, key, images)
        except Exception as exc:  # a damaged or foreign cache is rebuilt, never trusted
            log(f"search cache {cache_file} unusable ({type(exc).__name__}: {exc}); extracting again")
        else:
            log(f"gallery features: loaded from cache {cache_file} ({len(cached.images)} images)")
            return cached
    good, bad = check_images(images, progress=progress)
    log(f"gallery features: extracting {len(good)} images at {input_size[0]}x{input_size[1]} "
        f"(once; cached in {cache_file.parent})")
    if good:
        extracted = extract_gallery(model, good, input_size, dtype, batch_size, amp, progress)
        maps, features = extracted.maps, extracted.features
    else:
        maps, features = torch.zeros(0, 0, 0, 0, dtype=dtype), torch.zeros(0, 0)
    _atomic_save({"format": CACHE_FORMAT, "version": CACHE_VERSION, "key": key,
                  "paths": [i.relpath for i in good], "maps": maps, "features": features,
                  "unreadable_paths": [s.path for s in bad], "unreadable_reasons": [s.reason for s in bad]},
                 cache_file)
    return GalleryFeatures(images=good, maps=maps, features=features, unreadable=bad, cache_file=cache_file,
                           cache_hit=False)
