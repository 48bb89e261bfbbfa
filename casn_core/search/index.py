"""Search a scanned, extracted gallery with query images: feature ranking, then CASN on the top K.

The ranking is the paper's (sec. 4, "Evaluation Protocol"; docs/design.md, sec. 3): gallery images are
ordered by the Euclidean distance of L2-normalised features, and the ``rerank_k`` nearest are
re-scored by ``d = norm(d_f) + w norm(d_a)`` with ``d_a`` the consistency distance of the pair's
Siamese attention (:func:`casn_core.engine.inference.rank_query_casn`). The combined distance is
min-max normalised over one query's candidates, so it orders one query's results; the feature
distance is the one comparable across queries (e.g. for a "no match" threshold).

Nothing here depends on Gradio: errors are plain exceptions naming the file or folder; messages go to
the module loggers of :mod:`casn_core.search` (``casn search`` shows them on stderr).
"""
from __future__ import annotations

import copy
import functools
import io
import logging
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Union

import numpy as np
import torch
from PIL import Image

from casn_core.checkpoint import CheckpointInfo, checkpoint_info, load_model
from casn_core.rankings import RankingSpec, chosen_ranking, parse_topk
from casn_core.data.market import parse_market_name
from casn_core.engine.extraction import ExtractionConfig
from casn_core.engine.inference import extract_tensors, rank_query_casn, resolve_device, unit_distance, unit_features
from casn_core.models.casn import CASN
from casn_core.search.features import DEFAULT_CACHE_DIR, GalleryFeatures, check_cache_location, load_or_extract_gallery
from casn_core.search.scan import GalleryImage, GalleryReport, SearchError, require_images, scan_gallery

QueryInput = Union[str, os.PathLike, bytes, Image.Image, np.ndarray]
"""A query: a file path, the bytes of an image file, a PIL image, or an RGB uint8 array (H, W, 3)."""
DEFAULT_TOPK = 20
"""Results shown per query by ``casn search``."""

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RankingChoice:
    """What the user asks of a search's ranking: ``attention_weight`` (w), ``rerank_k`` (K) and the
    alignment ``threshold`` of ``d_a`` (paper sec. 4; docs/design.md, sec. 3).

    ``None`` leaves a setting to the checkpoint: with neither w nor K, its default pair (the stored
    (w, K), else the paper's w = 1 on every gallery image); with either, the other is the paper's
    (:func:`casn_core.rankings.chosen_ranking`); the threshold defaults to the checkpoint's. A bad K
    is a :class:`SearchError` here, before any extraction.
    """

    attention_weight: float | None = None
    rerank_k: int | str | None = None  # a positive int, or "all" (as None with w given)
    threshold: float | None = None

    def __post_init__(self) -> None:
        try:
            parse_topk(self.rerank_k)
        except ValueError as exc:
            raise SearchError(f"rerank_k: {exc}") from None

    def resolve(self, default: RankingSpec) -> RankingSpec:
        """The ranking this choice makes of a checkpoint's ``default``."""
        return chosen_ranking(default, self.attention_weight, self.rerank_k, self.threshold)


@dataclass(frozen=True)
class SearchHit:
    """One ranked gallery image. ``distance`` is the combined CASN distance of the re-ranked
    candidates; ``attention_distance`` is ``d_a`` before normalisation."""

    path: str
    rank: int
    feature_distance: float
    distance: float
    attention_distance: float
    pid: int | None = None
    camid: int | None = None

    def to_json(self) -> dict:
        out = {"path": self.path, "rank": self.rank, "feature_distance": self.feature_distance,
               "distance": self.distance, "attention_distance": self.attention_distance}
        if self.pid is not None:
            out.update(pid=self.pid, camid=self.camid)
        return out


@dataclass
class SearchResult:
    """The ranked gallery for one query (best first)."""

    query: str
    results: list[SearchHit]
    gallery: str
    num_gallery: int
    rerank_k: int
    attention_weight: float
    threshold: float
    query_pid: int | None = None
    query_camid: int | None = None
    excluded: str | None = None

    def to_json(self) -> dict:
        """``{"query", "results": [{"path", "rank", "feature_distance", "distance", ...}], ...}``."""
        out = {"query": self.query, "results": [hit.to_json() for hit in self.results], "gallery": self.gallery,
               "num_gallery": self.num_gallery, "rerank_k": self.rerank_k,
               "attention_weight": self.attention_weight, "threshold": self.threshold}
        if self.query_pid is not None:
            out.update(query_pid=self.query_pid, query_camid=self.query_camid)
        if self.excluded is not None:
            out["excluded"] = self.excluded
        return out


def _query_image(query: QueryInput) -> tuple[Image.Image, str]:
    """``(RGB PIL image, name)``: paths and bytes go through the project's safe reader."""
    from casn_core.images import ImageInputError, load_rgb

    if isinstance(query, (str, os.PathLike)):
        return load_rgb(query), str(query)
    if isinstance(query, (bytes, bytearray)):
        return load_rgb(bytes(query), name="uploaded query"), "uploaded query"
    if isinstance(query, Image.Image):
        buffer = io.BytesIO()  # through the reader: one set of limits and conversions for every input
        query.save(buffer, format="PNG")
        return load_rgb(buffer.getvalue(), name="query image"), "query image"
    if isinstance(query, np.ndarray):
        array = query
        if array.dtype != np.uint8 or array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] not in (3, 4)):
            raise ImageInputError(f"query array: expected uint8 (H, W), (H, W, 3) or (H, W, 4), "
                                  f"got {array.dtype} {array.shape}")
        return _query_image(Image.fromarray(array))
    raise TypeError(f"query must be a path, bytes, a PIL image or a uint8 array, got {type(query).__name__}")


@dataclass
class SearchIndex:
    """A gallery folder scanned and extracted once; :meth:`search` ranks it for any query image."""

    model: CASN
    info: CheckpointInfo
    checkpoint: Path
    folder: Path
    gallery: GalleryFeatures
    report: GalleryReport
    threshold: float
    attention_weight: float
    rerank_k: int
    rank_model: CASN = field(repr=False, default=None)

    def __post_init__(self) -> None:
        self.model.eval()
        if self.rank_model is None:  # rank_query_casn works on CPU tensors; keep a CPU copy for it
            device = next(self.model.parameters()).device
            self.rank_model = self.model if device.type == "cpu" else copy.deepcopy(self.model).cpu().eval()

    @functools.cached_property
    def _by_path(self) -> dict[str, int]:
        """Gallery position of each image's resolved path: built at the first path look-up, not at start
        (resolving every path of a Market-sized gallery takes about half a second)."""
        return {os.path.normcase(str(Path(i.path).resolve())): n for n, i in enumerate(self.gallery.images)}

    @functools.cached_property
    def gallery_unit(self) -> torch.Tensor:
        """The gallery's L2-normalised features, normalised once for every search."""
        return unit_features(self.gallery.features)

    @property
    def images(self) -> list[GalleryImage]:
        return self.gallery.images

    def __len__(self) -> int:
        return len(self.gallery.images)

    def gallery_index(self, query: QueryInput) -> int | None:
        """Index of ``query`` in the gallery when it is the path of one of its images, else ``None``."""
        if not isinstance(query, (str, os.PathLike)):
            return None
        path = Path(query)
        if not path.is_absolute() and not path.exists():
            path = self.folder / path  # a gallery-relative path, as results show them
        return self._by_path.get(os.path.normcase(str(path.resolve())))

    @torch.no_grad()
    def query_tensors(self, query: QueryInput) -> tuple[torch.Tensor, torch.Tensor, str]:
        """``(map (K, H, W), feature (D,), name)`` of a query image, on the CPU, in the gallery's map dtype."""
        from casn_core.data import build_test_transform

        image, name = _query_image(query)
        tensor = build_test_transform(*self.info.input_size)(image)[None]
        maps, features = extract_tensors(self.model, tensor)
        return maps[0].cpu().to(self.gallery.maps.dtype), features[0].float().cpu(), name

    @torch.no_grad()
    def search(self, query: QueryInput, topk: int | None = DEFAULT_TOPK, exclude_self: bool = True,
               tensors: tuple[torch.Tensor, torch.Tensor, str] | None = None) -> SearchResult:
        """Rank the gallery for ``query`` (path, bytes, PIL image or uint8 array); the best ``topk`` (``None``: all).

        When ``query`` is the path of a gallery image, its cached maps are used, and with
        ``exclude_self`` it is left out of its own ranking ("pick a gallery image as the query").
        ``tensors``: :meth:`query_tensors` of ``query`` when the caller already ran it (one backbone pass).
        """
        if topk is not None and topk < 1:
            raise ValueError(f"topk must be >= 1 (or None for all), got {topk}")
        own = self.gallery_index(query)
        if own is not None:
            qmap, qfeat, name = self.gallery.maps[own], self.gallery.features[own], self.images[own].relpath
        else:
            qmap, qfeat, name = self.query_tensors(query) if tensors is None else tensors
        labels = parse_market_name(name)
        dist = unit_distance(unit_features(qfeat[None]), self.gallery_unit)[0]
        by_feature = torch.argsort(dist, stable=True)
        excluded = None
        if own is not None and exclude_self:
            by_feature = by_feature[by_feature != own]
            excluded = self.images[own].relpath
        shown = len(by_feature) if topk is None else min(topk, len(by_feature))
        k = min(max(self.rerank_k, shown), len(by_feature))
        hits: list[SearchHit] = []
        if k:
            candidates = by_feature[:k]
            ranking = RankingSpec.custom(self.attention_weight, None, self.threshold)  # all k candidates
            ranked = rank_query_casn(self.rank_model, qmap, self.gallery.maps[candidates], dist[candidates], ranking,
                                     query_feature=qfeat, gallery_features=self.gallery.features[candidates])
            for rank, position in enumerate(ranked.order[:shown]):
                index = int(candidates[int(position)])
                image = self.images[index]
                hits.append(SearchHit(path=image.relpath, rank=rank + 1, feature_distance=float(dist[index]),
                                      distance=float(ranked.distance[rank]),
                                      attention_distance=float(ranked.attention_distance[rank]),
                                      pid=image.pid, camid=image.camid))
        return SearchResult(query=name, results=hits, gallery=str(self.folder), num_gallery=len(self),
                            rerank_k=k, attention_weight=self.attention_weight, threshold=self.threshold,
                            query_pid=None if labels is None else labels[0],
                            query_camid=None if labels is None else labels[1], excluded=excluded)

    def to_json(self) -> dict:
        """What was indexed: folder, counts, the first few skipped files, checkpoint settings, cache."""
        return {**self.report.to_json(), "labelled": sum(i.pid is not None for i in self.images),
                "checkpoint": str(self.checkpoint), "backbone": self.info.backbone,
                "input_size": list(self.info.input_size), "threshold": self.threshold,
                "attention_weight": self.attention_weight, "rerank_k": self.rerank_k,
                "cache_file": None if self.gallery.cache_file is None else str(self.gallery.cache_file),
                "cache_hit": self.gallery.cache_hit}


def build_search_index(model: CASN, payload: dict, checkpoint: str | os.PathLike, gallery: str | os.PathLike,
                       cache_dir: str | os.PathLike = DEFAULT_CACHE_DIR,
                       extraction: ExtractionConfig = ExtractionConfig(),
                       ranking: RankingChoice = RankingChoice()) -> SearchIndex:
    """Scan ``gallery`` and load or extract its features with an already loaded model.

    ``extraction``: batching, AMP, progress and the stored maps' ``map_dtype`` (``auto``:
    :func:`casn_core.store.default_map_dtype`); its input size is the checkpoint's (leave it ``None``).
    ``ranking``: the user's w, K and threshold, ``None`` for the checkpoint's (:class:`RankingChoice`).
    Raises :class:`~casn_core.search.scan.GalleryNotFoundError` / ``EmptyGalleryError`` naming the
    folder, and :class:`SearchError` when ``cache_dir`` lies inside it or the input size is another.
    """
    info = checkpoint_info(payload)
    input_size = tuple(info.input_size)
    if extraction.input_size is not None and tuple(extraction.input_size) != input_size:
        # queries are read at the checkpoint's size (SearchIndex.query_tensors): the gallery must be too
        raise SearchError(f"input size {tuple(extraction.input_size)} is not the checkpoint's {input_size}")
    candidates, report = scan_gallery(gallery)
    cache = check_cache_location(cache_dir, gallery)
    require_images(candidates, report)
    features = load_or_extract_gallery(model, candidates, checkpoint, cache, gallery,
                                       replace(extraction, input_size=input_size))
    report.skipped = sorted(report.skipped + features.unreadable, key=lambda s: s.path)
    report.num_images = len(features.images)
    require_images(features.images, report)
    if report.num_skipped:
        log.warning("warning: %s", report.summary())
    chosen = ranking.resolve(info.default_ranking())
    return SearchIndex(model=model, info=info, checkpoint=Path(checkpoint), folder=Path(gallery), gallery=features,
                       report=report, threshold=chosen.threshold, attention_weight=chosen.attention_weight,
                       rerank_k=chosen.effective_topk(len(features.images)))


def open_search_index(checkpoint: str | os.PathLike, gallery: str | os.PathLike,
                      cache_dir: str | os.PathLike = DEFAULT_CACHE_DIR, device: str = "auto", arch: str | None = None,
                      extraction: ExtractionConfig = ExtractionConfig(),
                      ranking: RankingChoice = RankingChoice()) -> SearchIndex:
    """Load ``checkpoint`` on ``device`` and :func:`build_search_index` of ``gallery``.

    ``arch``: read a torchreid checkpoint of that model at ``extraction.input_size`` (``None``: torchreid's
    256 x 128; :func:`casn_core.checkpoint.load_model`); a CASN checkpoint brings its own input size.
    """
    model, payload = load_model(checkpoint, resolve_device(device), arch=arch,
                                input_size=None if arch is None else extraction.input_size)
    return build_search_index(model, payload, checkpoint, gallery, cache_dir, extraction, ranking)
