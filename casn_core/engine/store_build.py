"""Building a map store (:mod:`casn_core.store`): extraction into a private folder, then the commit.

:func:`open_or_build_store` opens a split's committed store when its header matches the key
(checkpoint, file list, input size, dtype, AMP), and otherwise extracts the maps once, with one
backbone pass per image (:mod:`casn_core.engine.extraction`), into a ``.tmp-<host>-<pid>-<token>``
folder written row by row with ``pwrite`` (:class:`StoreWriter`); the folder is renamed to
``build-<token>`` when every row is flushed, and only then is the header atomically replaced to point at
it (docs/design.md, sec. 7). :func:`clean_store_dir` removes builds nothing points at and the
temporary folders of dead processes on this host.

Many processes (``torchrun``): rank 0 creates the build folder and preallocates the files, every rank
writes the disjoint row range of its shard (:func:`shard_range`), and rank 0 commits after a barrier.

Messages (a store extracted, rebuilt, a stale folder removed, the map dtype ``auto`` picked) go to this
module's logger at INFO, from rank 0 only; the command layer decides where they show.
"""
from __future__ import annotations

import json
import logging
import os
import secrets
import shutil
import socket
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from casn_core.atomic import write_json_atomic
from casn_core.data import ImageDataset, build_test_transform, load_market
from casn_core.engine.extraction import ExtractionConfig, extract_batches, extract_tensors
from casn_core.models.casn import CASN
from casn_core.store import (
    BUILD_PREFIX, FILES, HEADER, MAP_DTYPES, STORE_FORMAT, STORE_VERSION, TMP_PREFIX, MapStore, StoreKey,
    files_sha256, float32_map_bytes, load_store, model_sha256, resolve_map_dtype, sha256_file, store_path,
    try_open_store,
)

logger = logging.getLogger(__name__)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def clean_store_dir(path: Path) -> None:
    """Remove builds the header does not point at, and temp folders of dead processes on this host."""
    if not path.is_dir():
        return
    try:
        current = json.loads((path / HEADER).read_text()).get("build")
    except (OSError, ValueError, AttributeError):
        current = None
    host = socket.gethostname()
    for entry in path.iterdir():
        if entry.name.startswith(BUILD_PREFIX) and entry.name != current:
            shutil.rmtree(entry, ignore_errors=True)
        elif entry.name.startswith(TMP_PREFIX):
            parts = entry.name[len(TMP_PREFIX):].split("-")
            try:
                owner_host, owner_pid = "-".join(parts[:-2]), int(parts[-2])
            except (ValueError, IndexError):
                continue
            if owner_host == host and not _pid_alive(owner_pid):
                logger.info("removing %s (left by an interrupted extraction)", entry)
                shutil.rmtree(entry, ignore_errors=True)
        elif entry.name.startswith(("." + HEADER + ".", HEADER + ".")) and entry.name.endswith(".tmp"):
            # casn_core.atomic's temp name (and the one of stores written before it was used here)
            try:
                if time.time() - entry.stat().st_mtime > 60:
                    entry.unlink()
            except OSError:
                pass


class StoreWriter:
    """Writes one build: preallocated files, rows written at their offsets (any process, disjoint rows)."""

    def __init__(self, path: Path, build: str) -> None:
        self.path, self.build = Path(path), build
        self.tmp = self.path / build
        self._maps_meta: tuple[int, int] | None = None  # (offset, row bytes)
        self._feat_meta: tuple[int, int] | None = None

    @classmethod
    def create(cls, path: str | os.PathLike) -> "StoreWriter":
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        build = f"{TMP_PREFIX}{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(6)}"
        (path / build).mkdir()
        return cls(path, build)

    def allocate(self, num_images: int, map_shape: tuple[int, int, int], feature_dim: int, map_dtype: str) -> None:
        """Create ``maps.npy`` (N, H, W, K) and ``features.npy`` (N, D) of full size (sparse until written)."""
        k, h, w = map_shape
        maps = np.lib.format.open_memmap(self.tmp / "maps.npy", mode="w+", dtype=MAP_DTYPES[map_dtype][0],
                                         shape=(num_images, h, w, k))
        offset = int(maps.offset)
        del maps
        feats = np.lib.format.open_memmap(self.tmp / "features.npy", mode="w+", dtype=np.float32,
                                          shape=(num_images, feature_dim))
        foffset = int(feats.offset)
        del feats
        (self.tmp / "layout.json").write_text(json.dumps(
            {"num_images": num_images, "map_shape": [k, h, w], "feature_dim": feature_dim, "map_dtype": map_dtype,
             "maps_offset": offset, "features_offset": foffset}))

    def _layout(self) -> dict:
        return json.loads((self.tmp / "layout.json").read_text())

    def write_rows(self, start: int, maps: torch.Tensor, features: torch.Tensor) -> None:
        """Write rows ``start .. start + n`` from maps (n, K, H, W) in the store dtype and features (n, D)."""
        layout = self._layout() if self._maps_meta is None else None
        if layout is not None:
            k, h, w = layout["map_shape"]
            self._maps_meta = (layout["maps_offset"], h * w * k * MAP_DTYPES[layout["map_dtype"]][0].itemsize)
            self._feat_meta = (layout["features_offset"], layout["feature_dim"] * 4)
        rows = maps.detach().cpu().permute(0, 2, 3, 1).contiguous()  # (n, H, W, K)
        if rows.dtype == torch.bfloat16:
            rows = rows.view(torch.int16)  # the raw bf16 bits (read back as uint16 and viewed as bf16)
        data = rows.numpy().tobytes()
        feats = features.detach().cpu().float().contiguous().numpy().tobytes()
        for name, (offset, row_bytes), blob in (("maps.npy", self._maps_meta, data),
                                                ("features.npy", self._feat_meta, feats)):
            fd = os.open(self.tmp / name, os.O_WRONLY)
            try:
                done = 0
                while done < len(blob):
                    done += os.pwrite(fd, memoryview(blob)[done:], offset + start * row_bytes + done)
            finally:
                os.close(fd)

    def commit(self, key: StoreKey, records: Sequence, root: str | os.PathLike | None) -> MapStore:
        """Write labels, flush, rename the build into place, then write the header (the commit)."""
        layout = self._layout()
        n = layout["num_images"]
        np.save(self.tmp / "pids.npy", np.asarray([r.pid for r in records], dtype=np.int64))
        np.save(self.tmp / "camids.npy", np.asarray([r.camid for r in records], dtype=np.int64))
        (self.tmp / "paths.json").write_text(json.dumps([str(r.path) for r in records]))
        for name in FILES:
            with open(self.tmp / name, "rb+") as handle:
                os.fsync(handle.fileno())
        final = BUILD_PREFIX + self.build.rsplit("-", 1)[-1]
        os.replace(self.tmp, self.path / final)
        header = {
            "format": STORE_FORMAT, "version": STORE_VERSION, "build": final, "num_images": n,
            "map_shape": layout["map_shape"], "feature_dim": layout["feature_dim"], "layout": "NHWC",
            "storage_dtype": MAP_DTYPES[layout["map_dtype"]][0].str, "key": key.to_dict(),
            "file_bytes": {name: (self.path / final / name).stat().st_size for name in FILES},
            "data_root": None if root is None else str(root), "created_unix": time.time(),
        }
        write_json_atomic(self.path / HEADER, header, indent=1)
        clean_store_dir(self.path)
        return load_store(self.path, key)


def shard_range(num_images: int, rank: int, world_size: int) -> tuple[int, int]:
    """Rows ``[start, stop)`` extracted by ``rank`` of ``world_size`` (contiguous, sizes differ by <= 1)."""
    base, extra = divmod(num_images, world_size)
    start = rank * base + min(rank, extra)
    return start, start + base + (1 if rank < extra else 0)


def build_key(model: torch.nn.Module, records: Sequence, *, checkpoint: str | os.PathLike | None,
              root: str | os.PathLike | None, input_size: tuple[int, int], map_dtype: str, amp: str) -> StoreKey:
    """The :class:`StoreKey` of extracting ``records`` with ``model`` (or the checkpoint file it came from)."""
    ckpt = sha256_file(checkpoint) if checkpoint is not None else "model:" + model_sha256(model)
    return StoreKey(ckpt, files_sha256(records, root), (int(input_size[0]), int(input_size[1])), map_dtype, amp,
                    len(records))


@dataclass(frozen=True)
class StoreSource:
    """What keys a store besides its images: the ``checkpoint`` file the model came from (its sha256;
    ``None`` hashes the model's weights) and the dataset ``root`` the file list is relative to."""

    checkpoint: str | os.PathLike | None = None
    root: str | os.PathLike | None = None


@dataclass(frozen=True)
class Shard:
    """This process's part of a build under torchrun: ``rank`` of ``world_size`` in process ``group``
    (gloo works everywhere; ``None``: the default group)."""

    rank: int = 0
    world_size: int = 1
    group: object = None


def open_or_build_store(model: torch.nn.Module, records: Sequence, path: str | os.PathLike,
                        config: ExtractionConfig, *, source: StoreSource = StoreSource(), shard: Shard = Shard(),
                        desc: str = "extract") -> MapStore:
    """The committed store of ``records`` at ``path``: opened when its header matches, else (re)built.

    ``config``: the input size, batching, AMP and ``map_dtype`` (``auto``: :func:`default_map_dtype` of
    these records' float32 maps, float32 up to 4 GiB, else bfloat16; or ``float32``, ``float16``,
    ``bfloat16``) of the extraction. With ``shard.world_size > 1`` every rank of ``shard.group`` must
    call this; each extracts its shard (:func:`shard_range`) into the shared build and rank 0 commits.
    Every rank returns the opened store.
    """
    rank, world_size, group = shard.rank, shard.world_size, shard.group
    input_size, amp = config.input_size, config.amp
    if input_size is None:
        raise ValueError(f"{path}: the extraction needs an input size")
    device = next(model.parameters()).device
    records = list(records)
    if config.map_dtype == "auto" and records:
        dtype_name = resolve_map_dtype("auto", device, float32_map_bytes(model, input_size, len(records)),
                                       report=rank == 0)
    else:
        dtype_name = resolve_map_dtype(config.map_dtype, device)
    if not records:
        raise ValueError(f"{path}: no images to extract")
    path = Path(path)
    key = build_key(model, records, checkpoint=source.checkpoint, root=source.root, input_size=input_size,
                    map_dtype=dtype_name, amp=amp)
    distributed = world_size > 1
    if distributed:
        import torch.distributed as dist

    def broadcast(value):
        if not distributed:
            return value
        box = [value]
        dist.broadcast_object_list(box, src=0, group=group)
        return box[0]

    store = try_open_store(path, key) if rank == 0 else None
    build = broadcast(None if store is not None else "build")
    if build is None:
        return store if store is not None else load_store(path, key)

    writer = None
    if rank == 0:
        clean_store_dir(path)
        writer = StoreWriter.create(path)
        logger.info("map store: extracting %d images into %s (%s%s)", len(records), path, dtype_name,
                    f", {world_size} processes" if distributed else "")
    build_name = broadcast(writer.build if writer is not None else None)
    if writer is None:
        writer = StoreWriter(path, build_name)
    start, stop = shard_range(len(records), rank, world_size) if distributed else (0, len(records))
    transform = build_test_transform(int(input_size[0]), int(input_size[1]))
    dataset = ImageDataset(records[start:stop], transform)
    torch_dtype = MAP_DTYPES[dtype_name][1]
    shapes = None
    if rank == 0:
        # rank 0 learns the map shape from one image and preallocates before anyone writes
        probe_maps, probe_feats = _probe(model, dataset if len(dataset) else ImageDataset(records[:1], transform), amp)
        shapes = (tuple(probe_maps.shape[1:]), int(probe_feats.shape[1]))
        writer.allocate(len(records), shapes[0], shapes[1], dtype_name)
    if distributed:
        dist.barrier(group=group)
    for offset, maps, feats in extract_batches(model, dataset, config, map_dtype=torch_dtype, desc=desc):
        writer.write_rows(start + offset, maps, feats)
    if distributed:
        dist.barrier(group=group)
    if rank == 0:
        store = writer.commit(key, records, source.root)
    if distributed:
        dist.barrier(group=group)
    store = store if store is not None else load_store(path, key)
    store.built_now = True
    return store


@torch.no_grad()
def _probe(model: torch.nn.Module, dataset, amp: str) -> tuple[torch.Tensor, torch.Tensor]:
    model.eval()
    image = dataset[0][0][None]
    return extract_tensors(model, image, amp)


def split_stores(model: CASN, data: str, config: ExtractionConfig, *, checkpoint: str | Path | None = None,
                 shard: Shard = Shard(), records: tuple[list, list] | None = None) -> tuple[MapStore, MapStore]:
    """The query and gallery :class:`casn_core.store.MapStore` of the dataset at ``data`` (built once, then reused).

    ``config.map_dtype="auto"``: float32 while the larger split's float32 maps take <= 4 GiB, else
    bfloat16 (:func:`casn_core.store.default_map_dtype`), one dtype for both splits. Stores live in
    ``store_path(config.store_dir, data, split, dtype)`` and are keyed by the checkpoint's bytes (or
    the model's weights when ``checkpoint`` is None), the file list, the input size, the map dtype and
    AMP; the app and ``eval`` share them. Under torchrun every rank calls this and extracts its shard.
    ``records``: the ``(query, gallery)`` records when the caller has already listed the dataset (the
    app does, for its error messages), so the folders are not listed twice.
    """
    if config.store_dir is None:
        raise ValueError("split_stores needs ExtractionConfig.store_dir")
    if records is None:
        dataset = load_market(data, splits=("query", "gallery"))
        records = (list(dataset.query), list(dataset.gallery))
    query_records, gallery_records = records
    largest = max(len(query_records), len(gallery_records))
    # auto: one dtype for both splits, the rule applied to the larger split (the gallery), so query and
    # gallery maps are multiplied in the same dtype
    float32_bytes = (float32_map_bytes(model, config.input_size, largest)
                     if config.map_dtype == "auto" and largest else None)
    dtype_name = resolve_map_dtype(config.map_dtype, next(model.parameters()).device, float32_bytes,
                                   report=shard.rank == 0)
    split_config = replace(config, map_dtype=dtype_name, progress=config.progress and shard.rank == 0)
    source = StoreSource(checkpoint, data)
    stores = []
    for split, split_records in (("query", query_records), ("gallery", gallery_records)):
        stores.append(open_or_build_store(model, list(split_records), store_path(config.store_dir, data, split, dtype_name),
                                          split_config, source=source, shard=shard, desc=split))
    return stores[0], stores[1]
