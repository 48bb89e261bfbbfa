"""An on-disk store of feature maps, one per split, so memory does not grow with the gallery.

CASN's ranking (paper sec. 4) and every explanation (sec. 3.2.2) need each image's whole feature map
``A``, not only its feature vector ``f``. At Market-1501 size (3,368 + 19,732 images) those maps are
13 GB (MobileNetV2, 256 x 128, float32) to 26 GB (ResNet50, 288 x 144), so they live on disk and
only the rows a computation needs are read.

Format (one directory per split)::

    <path>/header.json             written LAST (temp + rename): the commit of a build
    <path>/build-<token>/maps.npy  (N, H, W, K) maps, channels-last, float32 / float16 / uint16 (bf16 bits)
    <path>/build-<token>/features.npy  (N, D) float32 pooled features f
    <path>/build-<token>/pids.npy, camids.npy  (N,) int64
    <path>/build-<token>/paths.json    the N image paths, in row order

Why ``.npy`` (``numpy.lib.format.open_memmap``) rather than a format of our own: it is numpy's own,
documented and versioned format; numpy writes and checks its header (magic, version, dtype, shape,
order) and refuses a file shorter than its header says, and any tool can open it
(``numpy.load(path, mmap_mode="r")``). safetensors' ``safe_open`` was the alternative, but it cannot
be written incrementally (the whole tensor must exist before saving), which is the point here.
numpy has no bfloat16: bf16 maps are stored as their raw uint16 bits and viewed as
``torch.bfloat16`` on reading.

Trust: a build is written into a private ``.tmp-*`` folder, renamed to ``build-<token>`` when every
row is written and flushed, and only then is ``header.json`` (format version, shape, dtype,
checkpoint sha256, file-list hash over relative path + size + mtime, input size, AMP, byte size of
every file) atomically replaced to point at it. A store whose header is missing, unreadable, of
another format version, of another checkpoint / file list / input size / dtype, or whose files do
not have the recorded sizes, is rebuilt with a logged message, never trusted. A process killed
mid-extraction leaves only a ``.tmp-*`` folder, which is never read and is removed by the next build.

Memory: rows are read with explicit ``os.preadv`` calls into fresh buffers (:meth:`StoredMaps.read`),
not through a memory map, because resident pages of a mapping count in the process's RSS and would
make it grow to the whole file; the page cache still serves repeated reads. Writing likewise uses
``os.pwrite`` at each row's offset (``open_memmap`` only lays down the header and the file size).

This module is the format and its reader; building a store (extraction, the writer, the commit, the
clean-up of interrupted builds, many processes) is :mod:`casn_core.engine.store_build`.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from casn_core.maps import FeatureCache

STORE_FORMAT = "casn-map-store"
STORE_VERSION = 1
HEADER = "header.json"
TMP_PREFIX = ".tmp-"
BUILD_PREFIX = "build-"
FILES = ("maps.npy", "features.npy", "pids.npy", "camids.npy", "paths.json")

# name -> (numpy storage dtype, torch dtype)
MAP_DTYPES: dict[str, tuple[np.dtype, torch.dtype]] = {
    "float32": (np.dtype(np.float32), torch.float32),
    "float16": (np.dtype(np.float16), torch.float16),
    "bfloat16": (np.dtype(np.uint16), torch.bfloat16),
}
MAP_DTYPE_CHOICES = ("auto", *MAP_DTYPES)

log = logging.getLogger(__name__)


class StoreError(ValueError):
    """A store that cannot be trusted; the message names the path and the reason."""


AUTO_FLOAT32_MAX_BYTES = 4 << 30
"""``auto`` keeps float32 maps while one split's float32 maps take at most this many bytes (4 GiB)."""


def default_map_dtype(device: torch.device | str = "cpu", float32_bytes: int | None = None) -> str:
    """The map dtype used when the user asks for ``auto``: ``float32`` while the split's float32 maps
    take <= :data:`AUTO_FLOAT32_MAX_BYTES` (4 GiB), ``bfloat16`` above; the same rule on CPU and CUDA.

    float32 is exact: ``eval``'s numbers equal the in-memory float32 path's (the demo set and sets
    up to about 6,000 gallery images with MobileNetV2 at 256 x 128, 655 KB of float32 maps each).
    Above 4 GiB (Market's gallery: 12 GiB with MobileNetV2 at 256 x 128, 24 GiB with ResNet50 at
    288 x 144, both at output stride 16) bfloat16 halves the disk space and the
    page-cache traffic of the re-ranking, which is what bounds it then; float32's exponent range, so
    no overflow; CASN distances move by ~1e-2 relative (BENCHMARKS.md, "Scale"). ``float32_bytes``
    unknown (``None``): the earlier per-device choice, float32 on CUDA and bfloat16 on the CPU.
    """
    if float32_bytes is None:
        return "float32" if torch.device(device).type == "cuda" else "bfloat16"
    return "float32" if int(float32_bytes) <= AUTO_FLOAT32_MAX_BYTES else "bfloat16"


def float32_map_bytes(model: torch.nn.Module, input_size: tuple[int, int], num_images: int) -> int:
    """Bytes of ``num_images`` float32 feature maps of ``model`` at ``input_size`` (one probe pass of a zero image)."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    with torch.no_grad():
        per_image = model.feature_map(torch.zeros(1, 3, int(input_size[0]), int(input_size[1]), device=device))[0].numel()
    model.train(was_training)
    return int(per_image) * 4 * int(num_images)


def resolve_map_dtype(map_dtype: str | torch.dtype, device: torch.device | str = "cpu",
                      float32_bytes: int | None = None, report: bool = True) -> str:
    """A name of :data:`MAP_DTYPES` from a name, ``auto`` or a torch dtype; a clear error otherwise.

    ``auto``: :func:`default_map_dtype` of ``float32_bytes`` (the float32 maps of the split); when
    that gives bfloat16 because the maps exceed 4 GiB, it is logged (unless ``report`` is false, as on
    the other ranks of a sharded extraction).
    """
    if isinstance(map_dtype, torch.dtype):
        for name, (_, tdtype) in MAP_DTYPES.items():
            if tdtype == map_dtype:
                return name
        raise ValueError(f"map dtype {map_dtype} not supported; choose from {list(MAP_DTYPES)}")
    if map_dtype == "auto":
        name = default_map_dtype(device, float32_bytes)
        if report and float32_bytes is not None and name != "float32":
            log.info("map dtype auto: %s (float32 maps would take %.1f GiB > %.0f GiB; pass --map-dtype float32 "
                     "to keep them exact)", name, float32_bytes / 2**30, AUTO_FLOAT32_MAX_BYTES / 2**30)
        return name
    if map_dtype not in MAP_DTYPES:
        raise ValueError(f"--map-dtype {map_dtype!r} not supported; choose from {list(MAP_DTYPE_CHOICES)}")
    return map_dtype


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes (the checkpoint's identity)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


def model_sha256(model: torch.nn.Module) -> str:
    """Hex sha256 of a model's state dict (names, shapes, dtypes, bytes): a checkpoint identity for models not from a file."""
    digest = hashlib.sha256()
    module = model.module if hasattr(model, "module") else model
    for name, tensor in sorted(module.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        digest.update(f"{name}\t{tuple(t.shape)}\t{t.dtype}\n".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()


def files_sha256(records: Sequence, root: str | os.PathLike | None = None) -> str:
    """Hash of the file list: for each record its path (relative to ``root``), pid, camid, size and mtime."""
    digest = hashlib.sha256()
    prefix = None if root is None else os.path.join(os.path.abspath(root), "")
    for record in records:
        path = os.fspath(record.path)
        stat = os.stat(path)
        if root is None:
            rel = str(Path(path))
        elif path.startswith(prefix) and os.path.normpath(path) == path:
            rel = path[len(prefix):]  # what os.path.relpath gives here, without its two abspath calls per file
        else:
            rel = os.path.relpath(path, root)
        digest.update(f"{rel}\t{record.pid}\t{record.camid}\t{stat.st_size}\t{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


@dataclass(frozen=True)
class StoreKey:
    """What a store's content depends on; a header that differs in any field is stale.

    The device that extracted is deliberately not part of it: a store built by ``eval`` on a GPU is
    opened by the app on the CPU (one extraction for both), although GPU maps differ from CPU ones
    in their low bits (cuDNN's default TF32 convolutions keep a 10-bit mantissa; ``tests/test_cuda.py``
    compares the two with TF32 off)."""

    checkpoint_sha256: str
    files_sha256: str
    input_size: tuple[int, int]
    map_dtype: str
    amp: str = "none"
    num_images: int = 0

    def to_dict(self) -> dict:
        return {"checkpoint_sha256": self.checkpoint_sha256, "files_sha256": self.files_sha256,
                "input_size": [int(v) for v in self.input_size], "map_dtype": self.map_dtype, "amp": self.amp,
                "num_images": int(self.num_images)}


def store_path(store_dir: str | os.PathLike, data_root: str | os.PathLike, split: str, map_dtype: str) -> Path:
    """The folder of one split's store: ``<store_dir>/<split>-<hash of the data root>-<dtype>``.

    The checkpoint is not part of the name: a store of another checkpoint at the same place is
    detected from its header and rebuilt (so old stores do not pile up), while other datasets and
    dtypes get their own folders (so ``eval`` in float32 and the app in bf16 do not evict each other).
    """
    root_hash = hashlib.sha256(str(Path(data_root).resolve()).encode()).hexdigest()[:12]
    return Path(store_dir) / f"{split}-{root_hash}-{map_dtype}"


class StoredMaps:
    """Read-only row access to a store's ``maps.npy`` with explicit reads (no resident mapping).

    ``maps[i]`` (K, H, W), ``maps[indices]`` / ``maps[a:b]`` (n, K, H, W), channels-last tensors in the
    stored torch dtype, as :func:`casn_core.engine.extraction.extract` keeps them in memory; so a
    :class:`casn_core.maps.FeatureCache` holding a ``StoredMaps`` works with the
    ranking and explanation code unchanged.
    """

    def __init__(self, path: str | os.PathLike, map_dtype: str) -> None:
        self.path = Path(path)
        self.map_dtype = map_dtype
        array = np.lib.format.open_memmap(self.path, mode="r")  # numpy checks magic, header and file length
        self._offset = int(array.offset)
        self._np_dtype = array.dtype
        n, h, w, k = array.shape
        del array
        self.shape = torch.Size((n, k, h, w))
        self.dtype = MAP_DTYPES[map_dtype][1]
        self.row_bytes = h * w * k * self._np_dtype.itemsize
        self._fd: int | None = None

    def __len__(self) -> int:
        return self.shape[0]

    @property
    def nbytes(self) -> int:
        return self.row_bytes * self.shape[0]

    def _file(self) -> int:
        if self._fd is None:
            self._fd = os.open(self.path, os.O_RDONLY)
        return self._fd

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __del__(self) -> None:  # pragma: no cover - best effort
        try:
            self.close()
        except Exception:
            pass

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_fd": None}

    def read(self, indices: Sequence[int] | np.ndarray | torch.Tensor) -> torch.Tensor:
        """Rows ``indices`` (any order, repeats allowed) as an (n, K, H, W) channels-last tensor."""
        idx = np.asarray(indices.cpu() if isinstance(indices, torch.Tensor) else indices, dtype=np.int64).reshape(-1)
        n, k, h, w = self.shape
        if idx.size and (idx.min() < -n or idx.max() >= n):
            raise IndexError(f"{self.path}: row index out of range for {n} rows")
        idx = np.where(idx < 0, idx + n, idx)
        out = np.empty((idx.size, h, w, k), dtype=self._np_dtype)
        if idx.size:
            fd = self._file()
            unique = np.unique(idx)
            buffer = np.empty((unique.size, h, w, k), dtype=self._np_dtype)
            flat = buffer.reshape(unique.size, -1).view(np.uint8)
            # contiguous runs of rows are one read each
            breaks = np.flatnonzero(np.diff(unique) != 1) + 1
            for run in np.split(np.arange(unique.size), breaks):
                start, count = int(unique[run[0]]), len(run)
                view = memoryview(flat[run[0]:run[0] + count].reshape(-1))
                done = 0
                while done < len(view):
                    got = os.preadv(fd, [view[done:]], self._offset + start * self.row_bytes + done)
                    if got <= 0:
                        raise StoreError(f"{self.path}: file ended while reading row {start} (truncated store)")
                    done += got
            in_order = unique.size == idx.size and bool(np.all(unique == idx))
            out = buffer if in_order else buffer[np.searchsorted(unique, idx)]
        array = torch.from_numpy(out)
        if self.map_dtype == "bfloat16":
            array = array.view(torch.bfloat16)
        return array.permute(0, 3, 1, 2)  # (n, K, H, W) with channels-last strides

    def __getitem__(self, key) -> torch.Tensor:
        n = self.shape[0]
        if isinstance(key, slice):
            return self.read(np.arange(n)[key])
        if isinstance(key, (int, np.integer)) or (isinstance(key, torch.Tensor) and key.ndim == 0):
            return self.read([int(key)])[0]
        if isinstance(key, torch.Tensor) and key.dtype == torch.bool:
            key = torch.nonzero(key).flatten()
        return self.read(key)

    def to(self, device: torch.device | str) -> torch.Tensor:
        """All maps as one tensor on ``device`` (read in chunks; for callers that decided they fit)."""
        device = torch.device(device)
        n, k, h, w = self.shape
        out = torch.empty((n, h, w, k), dtype=self.dtype, device=device).permute(0, 3, 1, 2)
        chunk = max(1, (256 << 20) // max(1, self.row_bytes))
        for start in range(0, n, chunk):
            out[start:start + chunk] = self.read(np.arange(start, min(n, start + chunk))).to(device)
        return out


@dataclass
class MapStore:
    """One split's committed store: features and labels in RAM (small), maps on disk (:class:`StoredMaps`).

    Use :meth:`read_maps` for rows, :meth:`as_cache` for a
    :class:`casn_core.maps.FeatureCache` that the ranking code (``casn_distmat``,
    ``rank_query_casn``) and the app accept as is.
    """

    path: Path
    header: dict
    maps: StoredMaps
    features: torch.Tensor
    pids: np.ndarray
    camids: np.ndarray
    paths: list[str]
    built_now: bool = False
    """True when :func:`casn_core.engine.store_build.open_or_build_store` extracted it in this call, False when it opened a build."""

    def __len__(self) -> int:
        return self.features.shape[0]

    @property
    def map_dtype(self) -> str:
        return self.header["key"]["map_dtype"]

    def read_maps(self, indices: Sequence[int] | np.ndarray | torch.Tensor) -> torch.Tensor:
        """Only rows ``indices``: (n, K, H, W) channels-last, in the stored dtype."""
        return self.maps.read(indices)

    def as_cache(self) -> FeatureCache:
        """A :class:`casn_core.maps.FeatureCache` whose ``maps`` reads rows from disk on indexing."""
        return FeatureCache(maps=self.maps, features=self.features, pids=self.pids, camids=self.camids,
                            paths=self.paths)

    def close(self) -> None:
        self.maps.close()


def _read_header(path: Path) -> dict:
    header_file = path / HEADER
    if not header_file.is_file():
        raise StoreError(f"{path}: no {HEADER} (never completed, or interrupted)")
    try:
        header = json.loads(header_file.read_text())
    except (OSError, ValueError) as exc:
        raise StoreError(f"{header_file}: unreadable header ({exc})") from exc
    if not isinstance(header, dict) or header.get("format") != STORE_FORMAT:
        raise StoreError(f"{header_file}: not a {STORE_FORMAT} header")
    if header.get("version") != STORE_VERSION:
        raise StoreError(f"{header_file}: format version {header.get('version')}, this code reads {STORE_VERSION}")
    return header


def load_store(path: str | os.PathLike, key: StoreKey | None = None) -> MapStore:
    """Open a committed store, checking it against ``key``; :class:`StoreError` says why it is not trusted."""
    path = Path(path)
    header = _read_header(path)
    stored_key = header.get("key", {})
    if key is not None:
        wanted = key.to_dict()
        names = {"checkpoint_sha256": "checkpoint", "files_sha256": "file list", "input_size": "input size",
                 "map_dtype": "map dtype", "amp": "AMP setting", "num_images": "number of images"}
        for name, value in wanted.items():
            if stored_key.get(name) != value:
                raise StoreError(f"{path}: stale store, other {names[name]} "
                                 f"({str(stored_key.get(name))[:16]} != {str(value)[:16]})")
    build = path / str(header.get("build", ""))
    if not header.get("build") or not build.is_dir():
        raise StoreError(f"{path}: build folder {header.get('build')} missing")
    sizes = header.get("file_bytes", {})
    for name in FILES:
        file = build / name
        if not file.is_file():
            raise StoreError(f"{file}: missing")
        if file.stat().st_size != sizes.get(name):
            raise StoreError(f"{file}: {file.stat().st_size} bytes, header says {sizes.get(name)} (truncated or rewritten)")
    map_dtype = stored_key.get("map_dtype")
    if map_dtype not in MAP_DTYPES:
        raise StoreError(f"{path}: unknown map dtype {map_dtype!r}")
    try:
        maps = StoredMaps(build / "maps.npy", map_dtype)
        features = torch.from_numpy(np.load(build / "features.npy"))
        pids, camids = np.load(build / "pids.npy"), np.load(build / "camids.npy")
        paths = json.loads((build / "paths.json").read_text())
    except (OSError, ValueError) as exc:
        raise StoreError(f"{build}: unreadable ({exc})") from exc
    n = int(header.get("num_images", -1))
    expected_shape = [n, *header.get("map_shape", [])]
    if list(maps.shape) != expected_shape or maps._np_dtype != MAP_DTYPES[map_dtype][0]:
        raise StoreError(f"{build / 'maps.npy'}: shape {list(maps.shape)} / {maps._np_dtype}, header says "
                         f"{expected_shape} / {map_dtype}")
    if features.shape[0] != n or len(pids) != n or len(camids) != n or len(paths) != n:
        raise StoreError(f"{build}: features/labels/paths do not have {n} rows")
    return MapStore(path=path, header=header, maps=maps, features=features, pids=pids, camids=camids, paths=paths)


def try_open_store(path: str | os.PathLike, key: StoreKey) -> MapStore | None:
    """:func:`load_store`, or ``None`` with a logged reason when the store is absent or not trusted."""
    path = Path(path)
    if not path.exists():
        return None
    try:
        return load_store(path, key)
    except StoreError as exc:
        log.info("map store not used, rebuilding: %s", exc)
        return None


