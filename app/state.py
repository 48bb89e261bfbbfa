"""What the app serves: a checkpoint, a Market-layout dataset, and the feature maps of it on disk.

The backbone runs once per image (docs/design.md, sec. 4). The maps ``A`` and features ``f`` of the query
and gallery images live in the library's map store (:mod:`casn_core.store`: one ``.npy`` store per
split, keyed by the checkpoint's bytes, the file list, the input size and the map dtype, rebuilt
when stale or truncated, never trusted otherwise). It is the same store ``python -m casn_core eval``
builds for the same checkpoint and data (same ``--store-dir`` and ``--map-dtype``): whichever runs
first extracts, the other opens it. Features and labels are held in RAM (small); maps are read
from disk only for the rows a request needs, so the app's memory does not grow with the gallery.
Feature distances are computed per query on demand (no query x gallery matrix is kept).
"""
from __future__ import annotations

import functools
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from app.core import CASN, CheckpointError, CheckpointInfo, ExtractionConfig, FeatureCache, checkpoint_info, \
    chosen_ranking, load_market, load_model, split_stores, unit_distance, unit_features
from app.settings import AppSettings, resolve

log = logging.getLogger(__name__)


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
    store_paths: tuple[Path, Path] | None = None
    map_dtype: str = "float32"
    cache_hit: bool = False
    store_dir: Path | None = None
    store_keys: tuple[dict, dict] | None = None
    """The query and gallery stores' header keys (what the dataset summary cache is keyed by)."""

    @property
    def backbone(self) -> str:
        return str(self.model.config.backbone)

    @property
    def cache_file(self) -> Path | None:
        """The gallery's map store folder (what the Dataset tab names)."""
        return None if self.store_paths is None else self.store_paths[1]

    @functools.cached_property
    def gallery_unit(self) -> torch.Tensor:
        """The gallery's L2-normalised features, normalised once (each request needs them)."""
        return unit_features(self.gallery.features)

    def feature_row(self, query_index: int) -> torch.Tensor:
        """Feature distances (num_gallery,) of one query: Euclidean distance of L2-normalised ``f``
        (:func:`casn_core.distances.feature_distance`, the gallery's half kept)."""
        return unit_distance(unit_features(self.query.features[query_index:query_index + 1]), self.gallery_unit)[0]

    def relative(self, path: str) -> str:
        """A dataset path as shown to users and API clients: relative to the dataset root."""
        text = str(path)
        prefix = str(self.data_root) + os.sep
        if text.startswith(prefix) and f"{os.sep}.." not in text and f"{os.sep}.{os.sep}" not in text:
            return text[len(prefix):]  # the store's paths are under the resolved root: no file system look-up
        try:
            return str(Path(path).resolve().relative_to(self.data_root))
        except ValueError:
            return Path(path).name


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


SLOW_PAIRS_PER_QUERY = 2000
"""Pair attentions per ranked query above which the start-up says how to bound K (a CPU ranks ~20-50 k a second)."""


def warn_if_slow(ranking, num_query: int, num_gallery: int) -> None:
    """Say at start-up when the default ranking re-ranks so many gallery images per query (the paper's K =
    all on a large gallery) that every ranking and the background dataset summary take long on a CPU."""
    k = ranking.effective_topk(num_gallery)
    if ranking.attention_weight > 0 and k > SLOW_PAIRS_PER_QUERY:
        log.warning("ranking %s: %d pair attentions per query and %.1f M for the dataset summary; seconds per "
                    "query on a CPU. --topk 100 (or a (w, K) validated with casn tune) keeps it interactive",
                    ranking.label(), k, num_query * k / 1e6)


def load_state(checkpoint: str | os.PathLike, data: str | os.PathLike, cache_dir: str | os.PathLike,
               settings: AppSettings | None = None, **overrides) -> AppState:
    """Load the model and dataset, and open (or build once) the query and gallery map stores.

    ``settings`` (:class:`app.settings.AppSettings`; keyword ``overrides`` replace its fields) says:

    ``store_dir``: where the stores live (default ``<cache_dir>/store``; ``python app.py`` passes the
    folder ``eval`` uses by default, so the two share them when their dtypes agree). ``map_dtype``:
    ``auto`` (the store's rule, as ``eval``'s: float32 while the gallery's float32 maps take <= 4 GiB,
    else bfloat16, so the two share a store by default), ``float32``, ``float16`` or ``bfloat16``.
    ``topk`` / ``attention_weight``: with neither, the checkpoint's stored (w, K) pair, else the paper's
    (w = 1, K = all); with one, the other is the paper's (:func:`casn_core.rankings.chosen_ranking`).
    """
    config = resolve(settings, **overrides)
    topk, threshold, attention_weight = config.topk, config.threshold, config.attention_weight
    checkpoint, root, cache_dir = Path(checkpoint).resolve(), Path(data).resolve(), Path(cache_dir).resolve()
    model, payload = load_model(checkpoint, "cpu", arch=config.arch,  # arch: a torchreid checkpoint
                                input_size=config.input_size)
    if getattr(model, "explain_refusal", None):  # a torchreid head that cannot be folded: no exact maps to show
        raise CheckpointError(f"{model.explain_refusal}; the app needs exact maps (casn eval/search rank it)")
    info = checkpoint_info(payload)
    ranking = chosen_ranking(info.default_ranking(), attention_weight, topk, threshold)
    query_records, gallery_records = load_dataset(root)  # a clear DatasetError before any extraction
    store_dir = Path(config.store_dir).resolve() if config.store_dir is not None else cache_dir / "store"
    extraction = ExtractionConfig(tuple(info.input_size), batch_size=config.batch_size, map_dtype=config.map_dtype,
                                  store_dir=store_dir, progress=config.progress)
    # the store's messages (extracting, rebuilding) go to casn_core.engine.store_build's logger
    query_store, gallery_store = split_stores(model, str(root), extraction, checkpoint=checkpoint,
                                              records=(query_records, gallery_records))
    built = query_store.built_now or gallery_store.built_now
    log.info("features: %d query and %d gallery images (%s; map store %s in %s)", len(query_store),
             len(gallery_store), "extracted now" if built else "opened", query_store.map_dtype, store_dir)
    warn_if_slow(ranking, len(query_store), len(gallery_store))
    return AppState(model=model, payload=payload, info=info, checkpoint_path=checkpoint, data_root=root,
                    cache_dir=cache_dir, query=query_store.as_cache(), gallery=gallery_store.as_cache(),
                    input_size=info.input_size, threshold=ranking.threshold,
                    topk=ranking.effective_topk(len(gallery_store)),
                    attention_weight=ranking.attention_weight, store_paths=(query_store.path, gallery_store.path),
                    map_dtype=query_store.map_dtype, cache_hit=not built, store_dir=store_dir,
                    store_keys=(dict(query_store.header["key"]), dict(gallery_store.header["key"])))
