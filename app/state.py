"""What the app serves: a checkpoint, a Market-layout dataset, and the cached feature maps of it.

The backbone runs once per image (DESIGN.md sec. 4). The maps ``A`` and features ``f`` of every
query and gallery image are stored on disk under ``<cache-dir>/features/<key>.pt``, where the key
hashes the checkpoint's bytes, the dataset's file list (relative path, size, modification time),
the input size and the map dtype; so a second start with the same checkpoint and data is fast and
any change re-extracts. The file holds only tensors, strings and numbers and is read back with
``torch.load(weights_only=True)``.
"""
from __future__ import annotations

import hashlib
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import torch

from app.core import (
    CASN, CheckpointInfo, FeatureCache, ImageDataset, build_test_transform, checkpoint_info, extract, feature_distance,
    load_market, load_model,
)

CACHE_FORMAT = 1
MAP_BYTES_BF16 = 2 * 2**30
"""Above this many bytes of float32 maps, maps are cached in bfloat16 (half the memory)."""


class DatasetError(ValueError):
    """The dataset folder cannot be served; the message says why."""


@dataclass
class AppState:
    """Everything a request needs; read-only after :func:`load_state`."""

    model: CASN
    payload: dict
    info: CheckpointInfo
    checkpoint_path: Path
    data_root: Path
    cache_dir: Path
    query: FeatureCache
    gallery: FeatureCache
    input_size: tuple[int, int]
    threshold: float
    topk: int
    attention_weight: float = 1.0
    feature_distances: torch.Tensor = field(default=None)  # (num_query, num_gallery)
    cache_file: Path | None = None
    cache_hit: bool = False

    @property
    def backbone(self) -> str:
        return str(self.model.config.backbone)

    def relative(self, path: str) -> str:
        """A dataset path as shown to users and API clients: relative to the dataset root."""
        try:
            return str(Path(path).resolve().relative_to(self.data_root))
        except ValueError:
            return Path(path).name


def _sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


def cache_key(checkpoint: Path, root: Path, records: list, input_size: tuple[int, int], map_dtype: str) -> str:
    """Hash of the checkpoint bytes, the file list (path, size, mtime), the input size and map dtype."""
    digest = hashlib.sha256()
    digest.update(f"casn-app-cache v{CACHE_FORMAT}\n".encode())
    digest.update(_sha256_file(checkpoint).encode())
    digest.update(f"{input_size[0]}x{input_size[1]} {map_dtype}\n".encode())
    for split, split_records in records:
        for record in split_records:
            path = Path(record.path)
            stat = path.stat()
            rel = os.path.relpath(path, root)
            digest.update(f"{split}\t{rel}\t{record.pid}\t{record.camid}\t{stat.st_size}\t{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:32]


def _cache_to_dict(prefix: str, cache: FeatureCache, root: Path) -> dict:
    return {
        f"{prefix}_maps": cache.maps, f"{prefix}_features": cache.features,
        f"{prefix}_pids": torch.as_tensor(cache.pids, dtype=torch.long),
        f"{prefix}_camids": torch.as_tensor(cache.camids, dtype=torch.long),
        f"{prefix}_paths": [os.path.relpath(p, root) for p in cache.paths],
    }


def _cache_from_dict(prefix: str, data: dict, root: Path) -> FeatureCache:
    return FeatureCache(
        maps=data[f"{prefix}_maps"], features=data[f"{prefix}_features"],
        pids=data[f"{prefix}_pids"].numpy(), camids=data[f"{prefix}_camids"].numpy(),
        paths=[str(root / p) for p in data[f"{prefix}_paths"]],
    )


def _atomic_save(obj: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            torch.save(obj, handle)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_dataset(root: Path) -> tuple[list, list]:
    """Query and gallery records of a Market-layout folder, with a clear error when unusable."""
    if not root.is_dir():
        raise DatasetError(f"dataset folder {root} does not exist")
    try:
        dataset = load_market(str(root), splits=("query", "gallery"))
    except (FileNotFoundError, ValueError) as exc:  # casn_core.data's DatasetError is a ValueError
        raise DatasetError(str(exc)) from None
    query, gallery = list(dataset.query), list(dataset.gallery)
    if not query or not gallery:
        raise DatasetError(f"{root}: found {len(query)} query and {len(gallery)} gallery images; need both")
    return query, gallery


def extract_features(model: CASN, records: list, input_size: tuple[int, int], map_dtype: torch.dtype,
                     batch_size: int, desc: str, progress: bool) -> FeatureCache:
    dataset = ImageDataset(records, build_test_transform(*input_size))
    return extract(model, dataset, records, batch_size=batch_size, map_dtype=map_dtype, progress=progress, desc=desc)


def load_state(checkpoint: str | os.PathLike, data: str | os.PathLike, cache_dir: str | os.PathLike, topk: int = 10,
               threshold: float | None = None, attention_weight: float | None = None, batch_size: int = 32,
               progress: bool = True, log=print) -> AppState:
    """Load the model and dataset, and the features from the disk cache (extracting them once)."""
    checkpoint, root, cache_dir = Path(checkpoint).resolve(), Path(data).resolve(), Path(cache_dir).resolve()
    model, payload = load_model(checkpoint, "cpu")
    info = checkpoint_info(payload)
    input_size = info.input_size
    if threshold is None:
        threshold = info.threshold
    if attention_weight is None:
        attention_weight = info.attention_weight
    query_records, gallery_records = load_dataset(root)

    # maps: float32 unless that would be large (full Market-1501 at 256x128 with ResNet50 is ~50 GB)
    with torch.no_grad():
        probe = model.feature_map(torch.zeros(1, 3, *input_size))
    per_image = probe[0].numel() * 4
    total = per_image * (len(query_records) + len(gallery_records))
    map_dtype = torch.bfloat16 if total > MAP_BYTES_BF16 else torch.float32
    dtype_name = "bf16" if map_dtype == torch.bfloat16 else "fp32"

    key = cache_key(checkpoint, root, [("query", query_records), ("gallery", gallery_records)], input_size, dtype_name)
    cache_file = cache_dir / "features" / f"{key}.pt"
    hit = False
    if cache_file.is_file():
        try:
            stored = torch.load(cache_file, map_location="cpu", weights_only=True)
            query = _cache_from_dict("query", stored, root)
            gallery = _cache_from_dict("gallery", stored, root)
            hit = len(query) == len(query_records) and len(gallery) == len(gallery_records)
        except Exception as exc:  # a corrupted cache is rebuilt, never trusted
            log(f"feature cache {cache_file} unreadable ({type(exc).__name__}: {exc}); extracting again")
    if hit:
        log(f"features: loaded from cache {cache_file.name} ({len(query)} query, {len(gallery)} gallery)")
    else:
        log(f"features: extracting {len(query_records)} query and {len(gallery_records)} gallery images "
            f"at {input_size[0]}x{input_size[1]} (once; cached in {cache_file.parent})")
        query = extract_features(model, query_records, input_size, map_dtype, batch_size, "query", progress)
        gallery = extract_features(model, gallery_records, input_size, map_dtype, batch_size, "gallery", progress)
        _atomic_save({"format": "casn-app-features", "version": CACHE_FORMAT,
                      **_cache_to_dict("query", query, root), **_cache_to_dict("gallery", gallery, root)}, cache_file)
    state = AppState(model=model, payload=payload, info=info, checkpoint_path=checkpoint, data_root=root, cache_dir=cache_dir,
                     query=query, gallery=gallery, input_size=input_size, threshold=float(threshold),
                     topk=int(topk), attention_weight=float(attention_weight), cache_file=cache_file, cache_hit=hit)
    state.feature_distances = feature_distance(query.features, gallery.features)
    return state

