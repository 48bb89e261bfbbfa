"""Search a gallery with your own image: the request logic of the search views, free of Gradio.

Two sources of a :class:`casn_core.search.SearchIndex`:

- ``python app.py --gallery DIR`` (unlabelled mode): any folder of person crops, scanned and
  extracted by :func:`casn_core.search.build_search_index` (bad files skipped and listed, nothing
  written inside the folder, features cached under the app's cache folder);
- labelled mode ("search this dataset's gallery with my image"): the dataset's gallery as the app
  already holds it (:func:`index_from_state`; no second extraction).

The query is an uploaded file or one of the gallery images (then left out of its own ranking).
Results carry the feature distance ``d_f`` (comparable across queries, so a "no match" threshold
applies to it) and the CASN distance that orders them (paper sec. 4). Answers of ``/search_upload``
are the JSON of ``casn search``; paths are relative to the gallery folder, never server paths.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from app import explain, figures, markdown, plots, similarity
from app.core import (
    CASN, CheckpointError, GalleryFeatures, GalleryImage, GalleryReport, SearchIndex, SearchResult, build_search_index,
    explain_maps, load_model, parse_market_name, unit_distance, unit_features,
)
from app.domain import domain_note
from app.explain import PairView
from app.pair import SEARCH_PAIR, ExplainedPair, ImageRef
from app.settings import AppSettings
from app.state import AppState
from app.uploads import MAX_UPLOAD_BYTES, read_upload, upload_name
from app.validation import RequestError, whole_number
from app.views import CorrespondenceView

MAX_TOPK = 100
DEFAULT_NO_MATCH = 1.0
"""The "no match" threshold on the feature distance d_f of L2-normalised features (range 0..2) when the gallery
is too small to derive one from (:func:`no_match_threshold`)."""
UNLABELLED_PERCENTILE = 2.0
"""Unlabelled galleries: the default threshold is this percentile of the distances between gallery images."""
SAMPLE = 2000
"""Gallery images (evenly spaced) whose pairwise distances the default threshold is derived from."""


@dataclass(frozen=True)
class Threshold:
    """The default no-match threshold on d_f and where it comes from (shown beside the slider)."""

    value: float
    source: str


def no_match_threshold(index: SearchIndex) -> Threshold:
    """A default "no match" threshold from the gallery's own distances, d_f between its images.

    Labelled galleries (Market-style names): the d_f at which as many same-identity pairs lie above it
    as different-identity pairs below it (the equal-error point of the two distributions). Unlabelled
    ones: the :data:`UNLABELLED_PERCENTILE` percentile of all pairs, i.e. results closer than 98% of
    pairs of gallery images count as matches.
    """
    count = len(index.images)
    if count < 3:
        return Threshold(DEFAULT_NO_MATCH, "fixed default (gallery too small to derive one)")
    rows = np.unique(np.linspace(0, count - 1, min(count, SAMPLE)).round().astype(int))
    unit = index.gallery_unit[torch.as_tensor(rows)]
    distances = unit_distance(unit, unit).numpy()
    upper = np.triu_indices(len(rows), k=1)
    values = distances[upper]
    pids = np.array([index.images[r].pid if index.images[r].pid is not None else -1 for r in rows])
    if (pids >= 0).all():
        same = (pids[:, None] == pids[None, :])[upper]
        if same.any() and (~same).any():
            candidates = np.unique(np.quantile(values, np.linspace(0.001, 0.5, 500)))
            miss = np.array([(values[same] > t).mean() for t in candidates])
            false = np.array([(values[~same] <= t).mean() for t in candidates])
            best = int(np.argmin(np.abs(miss - false)))
            return Threshold(float(round(candidates[best], 2)),
                             f"equal-error point of same- vs different-identity gallery pairs (labels from file "
                             f"names; {100 * miss[best]:.0f}% of same-identity pairs lie beyond it, "
                             f"{100 * false[best]:.0f}% of different-identity pairs within it)")
    value = float(round(np.percentile(values, UNLABELLED_PERCENTILE), 2))
    return Threshold(value, f"{UNLABELLED_PERCENTILE:g}th percentile of the d_f between gallery images (a result "
                            f"within it is closer than {100 - UNLABELLED_PERCENTILE:g}% of pairs of gallery images)")


def index_from_state(state: AppState) -> SearchIndex:
    """A search index over the labelled dataset's gallery, reusing the app's features and stored maps."""
    images = []
    for path, pid, camid in zip(state.gallery.paths, state.gallery.pids, state.gallery.camids):
        stat = os.stat(path)
        images.append(GalleryImage(relpath=state.relative(path), path=str(path), size=int(stat.st_size),
                                   mtime_ns=int(stat.st_mtime_ns), pid=int(pid), camid=int(camid)))
    gallery = GalleryFeatures(images=images, maps=state.gallery.maps, features=state.gallery.features,
                              cache_file=state.cache_file, cache_hit=state.cache_hit)
    report = GalleryReport(folder=str(state.data_root), num_images=len(images))
    return SearchIndex(model=state.model, info=state.info, checkpoint=state.checkpoint_path, folder=state.data_root,
                       gallery=gallery, report=report, threshold=state.threshold,
                       attention_weight=state.attention_weight, rerank_k=state.topk)


def open_gallery(checkpoint: str | os.PathLike, gallery: str | os.PathLike, cache_dir: str | os.PathLike,
                 settings: AppSettings) -> tuple[SearchIndex, dict]:
    """Load the checkpoint (``settings.arch``: a torchreid checkpoint) and index any folder of images
    (unlabelled mode): the index and the checkpoint's payload."""
    model, payload = load_model(checkpoint, "cpu", arch=settings.arch, input_size=settings.input_size)
    if getattr(model, "explain_refusal", None):  # a torchreid head that cannot be folded: no exact maps to show
        raise CheckpointError(f"{model.explain_refusal}; the app needs exact maps (casn search ranks it)")
    from app.core import ExtractionConfig, RankingChoice

    extraction = ExtractionConfig(map_dtype=settings.map_dtype, progress=settings.progress)
    ranking = RankingChoice(attention_weight=settings.attention_weight, rerank_k=settings.topk,
                            threshold=settings.threshold)
    index = build_search_index(model, payload, checkpoint, gallery, Path(cache_dir) / "search", extraction, ranking)
    return index, payload


@dataclass
class SearchView:
    """What the page shows of one search."""

    result: SearchResult
    strip: list[tuple[np.ndarray, str]]
    distances_plot: np.ndarray
    markdown: str
    query_ref: tuple[str, str, tuple[str, ...]]
    """``(kind, value, shown)``: the query (``"upload"`` or ``"gallery"`` and the file) and the gallery
    names in the strip, in order, so a click on the strip needs no second search."""
    query_preview: np.ndarray | None = None
    """The query as the user gave it (its own aspect ratio), shown above the results."""


class SearchService:
    """Search requests over one :class:`SearchIndex` (thread-safe: read-only after construction)."""

    def __init__(self, index: SearchIndex, cache_dir: str | os.PathLike,
                 max_upload_bytes: int = MAX_UPLOAD_BYTES, payload: dict | None = None) -> None:
        self.index = index
        self.domain_note = domain_note(index.checkpoint, payload or {})
        self.cache_dir = Path(cache_dir).resolve()
        self.max_upload_bytes = int(max_upload_bytes)
        self.labelled = sum(image.pid is not None for image in index.images)
        self.no_match = no_match_threshold(index)

    @property
    def served_folders(self) -> list[Path]:
        """Folders the server may serve files from: the gallery (thumbnails) and the app's cache."""
        return [Path(self.index.folder).resolve(), self.cache_dir]

    @property
    def model(self) -> CASN:
        return self.index.rank_model

    # ---- queries --------------------------------------------------------------------------------------
    def gallery_position(self, name: str) -> int:
        """Row of the gallery image named ``name`` (relative to the gallery folder)."""
        row = self.index.gallery_index(str(name)) if name else None
        if row is None or Path(str(name)).is_absolute():
            raise RequestError(f"no gallery image named {name!r} (use a name relative to the gallery folder, "
                               f"as results show them)")
        return row

    def _query(self, kind: str, value: str):
        """``(query for SearchIndex.search: a gallery path or the decoded upload, name shown)``."""
        if kind == "gallery":
            image = self.index.images[self.gallery_position(value)]
            return image.path, image.relpath
        if kind != "upload":
            raise RequestError(f"a query is an upload or a gallery image, got {kind!r}")
        return read_upload(value, "query", self.max_upload_bytes), upload_name(value)

    def _tensors(self, kind: str, value: str, query) -> tuple[torch.Tensor, torch.Tensor]:
        """The query's map (K, H, W) and feature: cached for a gallery image, one backbone pass for an upload."""
        if kind == "gallery":
            row = self.gallery_position(value)
            return self.index.gallery.maps[row], self.index.gallery.features[row]
        qmap, qfeat, _ = self.index.query_tensors(query)
        return qmap, qfeat

    def search(self, kind: str, value: str, topk) -> SearchResult:
        return self._ranked(kind, value, topk)[0]

    def _ranked(self, kind: str, value: str, topk) -> tuple[SearchResult, torch.Tensor]:
        """The search result and the query's feature: an upload is decoded and passed through the backbone once."""
        topk = whole_number(topk, "topk")
        if not 1 <= topk <= MAX_TOPK:
            raise RequestError(f"topk must be between 1 and {MAX_TOPK}, got {topk}")
        query, name = self._query(kind, value)
        tensors = self.index.query_tensors(query) if kind == "upload" else None
        result = self.index.search(query, topk, tensors=tensors)
        result.query = name  # the user's file name or the gallery name, never a server path
        result.gallery = Path(result.gallery).name
        if kind == "upload":
            labels = parse_market_name(name)
            result.query_pid, result.query_camid = (None, None) if labels is None else labels
            return result, tensors[1]
        return result, self.index.gallery.features[self.gallery_position(value)]

    def api_search_upload(self, file, topk) -> dict:
        """The JSON of ``casn search`` for an uploaded query, each result's gallery path (relative to the
        folder) under ``"name"``: ``gradio_client`` takes any ``{"path": ...}`` object in an answer for a file
        to download, and would fetch (and be refused) every result."""
        answer = self.search("upload", file, topk).to_json()
        for entry in answer["results"]:
            entry["name"] = entry.pop("path")
        return answer

    # ---- page -----------------------------------------------------------------------------------------
    def search_view(self, kind: str, value: str, topk, no_match: float) -> SearchView:
        result, qfeat = self._ranked(kind, value, topk)
        name = result.query
        distances = unit_distance(unit_features(qfeat[None]), self.index.gallery_unit)[0].numpy()
        if kind == "gallery":
            distances = np.delete(distances, self.gallery_position(value))
        strip = []
        for hit in result.results:
            thumb = explain.input_image(str(self.index.folder / hit.path), self.index.info)
            beyond = hit.feature_distance > no_match
            if beyond:
                colour, mark = figures.DARK, "no match"
            elif hit.pid is None or result.query_pid is None:
                colour, mark = figures.GREY, ""
            else:
                same = hit.pid == result.query_pid
                colour, mark = (figures.GREEN, "✓") if same else (figures.RED, "✗")
            strip.append((figures.bordered(thumb, colour, height=128),
                          f"#{hit.rank} {mark} d_f {hit.feature_distance:.2f}".replace("  ", " ")))
        within = int((distances <= no_match).sum())
        text = (f"**{name}**: top {len(result.results)} of {result.num_gallery} gallery images (feature + Siamese "
                f"attention on the top {result.rerank_k}, w = {result.attention_weight:g}). {within} of "
                f"{len(distances)} gallery images are within the no-match threshold d_f ≤ {no_match:.2f}; results "
                f"beyond it are marked *no match*.")
        if abs(float(no_match) - self.no_match.value) < 1e-9:
            text += f" (The default threshold {self.no_match.value:.2f} is the {self.no_match.source}.)"
        plot = plots.distance_histogram(distances, no_match, [h.feature_distance for h in result.results])
        query, _ = self._query(kind, value)
        preview = figures.preview(query if isinstance(query, Image.Image) else Image.open(query))
        return SearchView(result, strip, plot, text, (kind, str(value), tuple(hit.path for hit in result.results)),
                          preview)

    # ---- explanations ---------------------------------------------------------------------------------
    def explain(self, kind: str, value: str, gallery_name: str) -> tuple[ExplainedPair, np.ndarray, np.ndarray, str]:
        """Explanation of (query, gallery image), both images at the model input size, the query's name."""
        query, name = self._query(kind, value)
        qmap, qfeat = self._tensors(kind, value, query)
        row = self.gallery_position(gallery_name)
        gmap, gfeat = self.index.gallery.maps[row], self.index.gallery.features[row]
        result = ExplainedPair(explain_maps(self.model, qmap, gmap, self.index.threshold, qfeat, gfeat), SEARCH_PAIR,
                               query=ImageRef(name=name), gallery=ImageRef(name=self.index.images[row].relpath))
        image1 = explain.input_image(query, self.index.info)
        image2 = explain.input_image(self.index.images[row].path, self.index.info)
        return result, image1, image2, name

    def api_explain_search(self, query_file, gallery_name: str) -> dict:
        result, *_ = self.explain("upload", query_file, gallery_name)
        return result.to_json()

    def pair_view(self, kind: str, value: str, gallery_name: str) -> PairView:
        result, image1, image2, name = self.explain(kind, value, gallery_name)
        view = explain.render(result, image1, image2, ("query", "gallery"),
                              f"{Path(name).stem}_vs_{Path(gallery_name).stem}")
        view.markdown = f"**query** `{name}` vs **gallery** `{gallery_name}`\n\n" + markdown.pair_markdown(result)
        if kind == "upload" and self.domain_note:
            view.markdown = f"{self.domain_note}\n\n{view.markdown}"
        return view

    # ---- point correspondence ---------------------------------------------------------------------------
    def shown_pair(self, kind: str, value: str, gallery_name: str) -> tuple[np.ndarray, np.ndarray]:
        """The query and a gallery image at the model input, magnified (where correspondences are clicked)."""
        query, _ = self._query(kind, value)
        row = self.gallery_position(gallery_name)
        scale = similarity.scale_for(self.index.info.input_size)
        return (figures.magnified(explain.input_image(query, self.index.info), scale),
                figures.magnified(explain.input_image(self.index.images[row].path, self.index.info), scale))

    def correspondence_view(self, kind: str, value: str, gallery_name: str, x, y,
                            direction: str = "query") -> CorrespondenceView:
        """Where the features at a clicked pixel of one image match in the other (one row or column of C)."""
        query, _ = self._query(kind, value)
        qmap, qfeat = self._tensors(kind, value, query)
        row = self.gallery_position(gallery_name)
        input_size = self.index.info.input_size
        found = similarity.correspondence_of_maps(self.model, (qmap, self.index.gallery.maps[row]),
                                                  (qfeat, self.index.gallery.features[row]), input_size, x, y,
                                                  direction)
        first, second = figures.correspondence_pair(*self.shown_pair(kind, value, gallery_name), found)
        return CorrespondenceView(first, second, markdown.correspondence_markdown(found),
                                  found.to_json(-1, row, similarity.size_for(input_size)))
