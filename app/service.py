"""The app's request logic, free of Gradio: every request the page or an API client makes.

:class:`AppService` answers with plain data (dicts for the JSON API, view dataclasses with numpy
pictures for the page, :mod:`app.views`) and fails with plain errors:
:class:`app.validation.RequestError` (a ``ValueError``) for bad indices, choices or ranking settings,
:class:`app.uploads.UploadError` for refused uploads, :class:`ExplainError` when an accepted upload
still cannot be explained. The UI modules map these to ``gr.Error``. It is thread-safe: the state
is read-only and the memos are locked.

Every ranking request takes an optional ranking (:mod:`app.presets`: w and K); without one it is the
app's default ranking, computed by the same code as before rankings could be chosen.
"""
from __future__ import annotations

import functools
from pathlib import Path

import numpy as np

from app import explain, figures, markdown, plots, presets, similarity, strip
from app.core import RankingSpec
from app.domain import domain_note
from app.exports import export_view
from app.lru import LRUCache
from app.ranking import QueryRanking, rank_query, rank_with, ranking_dict
from app.reranking import QueryAttention
from app.scoring import DatasetSummary, QueryStats
from app.state import AppState
from app.summaries import Summaries
from app.summary import SummaryJob
from app.uploads import MAX_UPLOAD_BYTES, aspect_warning, read_upload, upload_name
from app.validation import RequestError, choice, index_in
from app.verdict import verdict
from app.views import CorrespondenceView, PairRef, QueryView, UploadView, WhyView

SORTS = ("file order", "AP: worst first", "AP: best first")
MAX_PICKER = 240
"""Thumbnails shown in the query picker at once (the query-index box reaches every query)."""


class ExplainError(RuntimeError):
    """An accepted input could not be explained (the message says why)."""


class AppService:
    """Request handlers over one loaded :class:`AppState` (rankings memoised in LRUs)."""

    def __init__(self, state: AppState, summary: DatasetSummary | SummaryJob, max_upload_bytes: int = MAX_UPLOAD_BYTES,
                 ranking_cache: int = 512) -> None:
        self.state = state
        self.summaries = Summaries(state, summary)
        self.max_upload_bytes = int(max_upload_bytes)
        self.strip_length = int(min(strip.PAGE, len(state.gallery)))
        self.rankings: LRUCache[QueryRanking] = LRUCache(ranking_cache)
        self.other_rankings: LRUCache[QueryRanking] = LRUCache(ranking_cache)
        self.attention = QueryAttention(state)

    @property
    def summary(self) -> DatasetSummary:
        """The default ranking's dataset summary; waits while it is computed in the background."""
        return self.summaries.default

    @property
    def summary_ready(self) -> bool:
        return self.summaries.default_ready

    def summary_if_ready(self) -> DatasetSummary | None:
        """The summary when it is there (never waits): what the page is built with."""
        return self.summary if self.summary_ready else None

    @property
    def served_folders(self) -> list[Path]:
        """Folders the server may serve files from: the dataset (thumbnails) and the app's cache (exports)."""
        return [self.state.data_root, self.state.cache_dir]

    @functools.cached_property
    def domain_note(self) -> str:
        """The warning shown next to explanations of uploads when the model learned from generated people."""
        return domain_note(self.state.checkpoint_path, self.state.payload)

    # ---- validation -----------------------------------------------------------------------------
    def query_index(self, value) -> int:
        return index_in(value, len(self.state.query), "query index")

    def gallery_index(self, value) -> int:
        return index_in(value, len(self.state.gallery), "gallery index")

    def spec(self, attention_weight=None, topk=None) -> RankingSpec:
        """The ranking a request asks for (:func:`app.presets.resolve`)."""
        return presets.resolve(self.state, attention_weight, topk)

    # ---- rankings ---------------------------------------------------------------------------------
    def ranking(self, query_index, spec: RankingSpec | None = None) -> QueryRanking:
        """One query's ranking: the default one (``spec`` None or equal to it), else ``spec``'s (w, K)."""
        index = self.query_index(query_index)
        if spec is None or presets.is_default(self.state, spec):
            return self.rankings.get_or_compute(index, lambda: rank_query(self.state, index))
        return self.other_rankings.get_or_compute((index, presets.key(self.state, spec)),
                                                  lambda: rank_with(self.state, index, spec, self.attention))

    def stats(self, spec: RankingSpec | None = None) -> tuple[list[QueryStats], str]:
        """Every query's (first true rank, AP) under ``spec``, and a note when the default's stand in for it
        (a summary too costly to compute here)."""
        try:
            return self.summaries.get(spec).per_query, ""
        except RequestError as exc:
            return self.summary.per_query, f"(first true ranks and APs of the default ranking: {exc})"

    def picker_indices(self, failures_only: bool, sort: str, spec: RankingSpec | None = None) -> list[int]:
        sort = choice(sort, SORTS, "sort")
        if not failures_only and sort == SORTS[0]:
            return list(range(len(self.state.query)))  # file order: no need to wait for the summary
        stats, _ = self.stats(spec)
        indices = list(range(len(stats)))
        if failures_only:
            indices = [i for i in indices if stats[i].first_true_rank is not None and stats[i].first_true_rank > 1]
        if sort != SORTS[0]:
            valid = [i for i in indices if stats[i].ap is not None]
            valid.sort(key=lambda i: stats[i].ap, reverse=sort == SORTS[2])
            indices = valid + [i for i in indices if stats[i].ap is None]
        return indices

    def picker(self, failures_only: bool, sort: str, wait: bool = True,
               spec: RankingSpec | None = None) -> tuple[list[tuple[str, str]], str]:
        """Picker thumbnails ``(path, caption)`` and a note saying how many queries are listed.

        ``wait=False`` while the summary is computed: the first queries in file order, captioned by
        index only (what the page is built with; it is refreshed when the summary is there).
        """
        if not wait and not self.summaries.ready(spec):
            shown = list(range(min(MAX_PICKER, len(self.state.query))))
            items = [(self.state.query.paths[i], markdown.query_caption(i, None)) for i in shown]
            return items, (f"{len(self.state.query)} queries; showing the first {len(shown)} in file order "
                           f"(first true ranks and APs are being computed)")
        indices = self.picker_indices(failures_only, sort, spec)
        stats, fallback = self.stats(spec)
        shown = indices[:MAX_PICKER]
        items = [(self.state.query.paths[i], markdown.query_caption(i, stats[i])) for i in shown]
        note = f"{len(indices)} of {len(self.state.query)} queries"
        if failures_only:
            note += " fail at rank 1"
        if len(shown) < len(indices):
            note += f"; showing the first {len(shown)} (type any index below)"
        return items, note + (f" {fallback}" if fallback else "")

    def picker_position(self, failures_only: bool, sort: str, query_index, spec: RankingSpec | None = None) -> int | None:
        """Where query ``query_index`` sits among the picker's thumbnails (None: not listed)."""
        index = self.query_index(query_index)
        indices = self.picker_indices(failures_only, sort, spec)[:MAX_PICKER]
        return indices.index(index) if index in indices else None

    def picked_query(self, failures_only: bool, sort: str, position: int, spec: RankingSpec | None = None) -> int:
        """The query index of the ``position``-th picker thumbnail."""
        indices = self.picker_indices(failures_only, sort, spec)[:MAX_PICKER]
        if not 0 <= position < len(indices):
            raise RequestError("that thumbnail is no longer in the list; pick again")
        return indices[position]

    def failures(self, spec: RankingSpec | None = None) -> list[int]:
        """Queries whose rank-1 image is a wrong identity under ``spec``, worst AP first."""
        return self.picker_indices(True, SORTS[1], spec)

    def first_failure(self, wait: bool = True) -> int:
        """The first query whose rank-1 image is wrong (0 when none, or when ``wait=False`` and the summary is
        still being computed)."""
        if not wait and not self.summary_ready:
            return 0
        return next((i for i, s in enumerate(self.summary.per_query)
                     if s.first_true_rank is not None and s.first_true_rank > 1), 0)

    def query_view(self, query_index, spec: RankingSpec | None = None, page=0,
                   previous: tuple | None = None) -> QueryView:
        """The Rankings tab for one query: ``page`` of its strip (``"first true"``: the page holding the first
        true match); ``previous``: ``(query, ranking description, first true rank)`` shown before, to say
        where the first true match moved."""
        ranking = self.ranking(query_index, spec)
        state, q = self.state, ranking.query_index
        if page == "first true":
            page = strip.page_of_rank(ranking.first_true_rank, self.strip_length)
        shown = strip.strip_page(ranking, page, lambda g: explain.input_image(state.gallery.paths[g], state),
                                 self.strip_length)
        thumbnail = figures.bordered(explain.input_image(state.query.paths[q], state), None, height=192)
        described = presets.describe(state, ranking.ranking)
        moved = markdown.moved_text(previous, q, described, ranking.first_true_rank)
        return QueryView(ranking, thumbnail, markdown.query_markdown(state, ranking, moved), shown.tiles,
                         markdown.ranking_table(state, ranking, shown.start, shown.stop), shown, moved)

    # ---- pair explanations ------------------------------------------------------------------------
    def gallery_at(self, query_index, position: int, spec: RankingSpec | None = None) -> int:
        """The gallery index at 0-based ``position`` of the query's ranking (clamped to its length)."""
        ranking = self.ranking(query_index, spec)
        if not len(ranking.order):
            raise RequestError("the gallery is empty for this query")
        return int(ranking.order[min(max(int(position), 0), len(ranking.order) - 1)])

    def pair_view(self, query_index, gallery_index, spec: RankingSpec | None = None) -> tuple[explain.PairView, PairRef]:
        ranking = self.ranking(query_index, spec)
        g = self.gallery_index(gallery_index)
        view = explain.view_cached(self.state, ranking.query_index, g, ranking)
        return view, PairRef("dataset", ranking.query_index, g, ranking=spec)

    def why_view(self, query_index, spec: RankingSpec | None = None) -> WhyView:
        ranking = self.ranking(query_index, spec)
        state, q = self.state, ranking.query_index
        case = explain.failure_case(state, q, ranking)
        views = []
        for gallery_index, labels in ((case.wrong_index, ("query", "rank-1 (wrong)")),
                                      (case.true_index, ("query", "best true match"))):
            views.append(None if gallery_index is None else
                         explain.view_cached(state, q, gallery_index, ranking, labels))
        view = WhyView(markdown.why_message(q, ranking.failed, case.message,
                                            presets.describe(state, ranking.ranking)), *views)
        if ranking.failed:
            view.verdict = verdict(state, ranking, case.wrong_index, case.true_index, self.attention)
            result = similarity.contrastive(state, q, case.wrong_index, case.true_index)
            images = [explain.input_image(path, state) for path in (
                state.query.paths[q], state.gallery.paths[case.wrong_index], state.gallery.paths[case.true_index])]
            view.contrastive = plots.contrastive_figure(*images, np.asarray(result["map"]), result["similarity_gap"],
                                                          ranks=(1, ranking.first_true_rank))
            view.contrastive_text = markdown.contrastive_markdown(result["similarity_gap"])
        return view

    # ---- point correspondence -----------------------------------------------------------------------
    def shown_pair(self, query_index, gallery_index) -> tuple[np.ndarray, np.ndarray]:
        """The two images the correspondence view shows (model input, magnified), before any click."""
        q, g = self.query_index(query_index), self.gallery_index(gallery_index)
        scale = similarity.shown_scale(self.state)
        return (figures.magnified(explain.input_image(self.state.query.paths[q], self.state), scale),
                figures.magnified(explain.input_image(self.state.gallery.paths[g], self.state), scale))

    def api_correspondence(self, query_index, gallery_index, x, y, direction: str = "query") -> dict:
        q, g = self.query_index(query_index), self.gallery_index(gallery_index)
        found = similarity.point_correspondence(self.state, q, g, x, y, direction)
        return found.to_json(q, g, similarity.shown_size(self.state))

    def correspondence_view(self, query_index, gallery_index, x, y, direction: str = "query") -> CorrespondenceView:
        q, g = self.query_index(query_index), self.gallery_index(gallery_index)
        found = similarity.point_correspondence(self.state, q, g, x, y, direction)
        query_image, gallery_image = self.shown_pair(q, g)
        query_image, gallery_image = figures.correspondence_pair(query_image, gallery_image, found)
        return CorrespondenceView(query_image, gallery_image, markdown.correspondence_markdown(found),
                                  found.to_json(q, g, similarity.shown_size(self.state)))

    # ---- uploads ------------------------------------------------------------------------------------
    def _read_pair(self, file1, file2):
        images = [read_upload(upload, label, self.max_upload_bytes)
                  for upload, label in ((file1, "image 1"), (file2, "image 2"))]
        return images, (upload_name(file1), upload_name(file2))

    def upload_view(self, file1, file2) -> UploadView:
        """Status line (with aspect-ratio and training-domain warnings), view, reference and previews of two uploads."""
        images, names = self._read_pair(file1, file2)
        try:
            view = explain.view_images(self.state, images[0], images[1], names)
        except Exception as exc:  # keep serving whatever happens
            raise ExplainError(f"could not explain this pair: {type(exc).__name__}: {exc}") from None
        height, width = self.state.input_size
        status = (f"Explained `{names[0]}` ({images[0].width} x {images[0].height}) vs `{names[1]}` "
                  f"({images[1].width} x {images[1].height}); both resized to the model's {width} x {height} "
                  f"(width x height) input.")
        warnings = [aspect_warning(image, self.state.input_size, f"`{name}`") for image, name in zip(images, names)]
        warnings = [f"⚠ {text}" for text in warnings if text] + ([self.domain_note] if self.domain_note else [])
        previews = tuple(figures.preview(image) for image in images)
        scale = similarity.shown_scale(self.state)
        shown = tuple(figures.magnified(explain.input_image(image, self.state), scale) for image in images)
        return UploadView("\n\n".join([status, *warnings]), view, PairRef("upload", files=(str(file1), str(file2))),
                          previews, shown)

    def upload_correspondence(self, ref: PairRef, x, y, direction: str = "query") -> CorrespondenceView:
        """Point correspondence of the uploaded pair ``ref`` (both images through the backbone again: uploads
        are not stored)."""
        images, _ = self._read_pair(*ref.files)
        maps, features = explain.pair_tensors(self.state.model, self.state.input_size, *images)
        found = similarity.correspondence_of_maps(self.state.model, (maps[0], maps[1]), (features[0], features[1]),
                                                  self.state.input_size, x, y, direction)
        scale = similarity.shown_scale(self.state)
        shown = [figures.magnified(explain.input_image(image, self.state), scale) for image in images]
        first, second = figures.correspondence_pair(*shown, found)
        return CorrespondenceView(first, second, markdown.correspondence_markdown(found, ("image 1", "image 2")),
                                  found.to_json(-1, -1, similarity.shown_size(self.state)))

    def export(self, ref: PairRef | None) -> tuple[Path, Path]:
        """Write the PNG and JSON of the pair on screen (only when the user asks); their paths."""
        if ref is None:
            raise RequestError("nothing to export yet: explain a pair first")
        if ref.kind == "dataset":
            view, _ = self.pair_view(ref.query_index, ref.gallery_index, ref.ranking)
        else:
            view = self.upload_view(*ref.files).pair
        return export_view(self.state, view)

    # ---- JSON API ---------------------------------------------------------------------------------
    def api_rank_query(self, query_index, attention_weight=None, topk=None) -> dict:
        spec = self.spec(attention_weight, topk)
        return ranking_dict(self.state, self.ranking(query_index, spec), limit=self.strip_length)

    def api_explain_pair(self, query_index, gallery_index, attention_weight=None, topk=None) -> dict:
        ranking = self.ranking(query_index, self.spec(attention_weight, topk))
        return explain.explain_cached(self.state, ranking.query_index, self.gallery_index(gallery_index),
                                      ranking).to_json()

    def api_why_wrong(self, query_index, attention_weight=None, topk=None) -> dict:
        spec = self.spec(attention_weight, topk)
        ranking = self.ranking(query_index, spec)
        state, q = self.state, ranking.query_index
        case = explain.failure_case(state, q, ranking)
        out = {"query_index": q, "failed": ranking.failed, "message": case.message,
               "first_true_rank": ranking.first_true_rank, "ap": ranking.ap,
               "ranking_settings": presets.settings(state, ranking.ranking)}
        for key, index in (("rank1_wrong", case.wrong_index), ("best_true", case.true_index)):
            out[key] = None if index is None else explain.explain_cached(state, q, index, ranking).to_json()
        out["contrastive"] = out["verdict"] = None
        if ranking.failed:
            out["contrastive"] = similarity.contrastive(state, q, case.wrong_index, case.true_index)
            found = verdict(state, ranking, case.wrong_index, case.true_index, self.attention)
            out["verdict"] = {"text": found.line, **found.data}
        return out

    def api_explain_upload(self, file1, file2) -> dict:
        images, names = self._read_pair(file1, file2)
        try:
            result = explain.explain_images(self.state, images[0], images[1], names).to_json()
        except Exception as exc:
            raise ExplainError(f"could not explain this pair: {type(exc).__name__}: {exc}") from None
        result["warnings"] = [text for text in (aspect_warning(image, self.state.input_size, name)
                                                for image, name in zip(images, names)) if text]
        if self.domain_note:
            result["warnings"].append(self.domain_note)
        return result

    def api_list_queries(self, failures_only: bool = False, sort: str = SORTS[0], attention_weight=None,
                         topk=None) -> list:
        spec = self.spec(attention_weight, topk)
        stats, _ = self.stats(spec)
        out = []
        for i in self.picker_indices(failures_only, sort, spec):
            out.append({"index": i, "name": self.state.relative(self.state.query.paths[i]),
                        "pid": int(self.state.query.pids[i]), "camid": int(self.state.query.camids[i]),
                        "first_true_rank": stats[i].first_true_rank, "ap": stats[i].ap})
        return out

    def api_dataset_summary(self, attention_weight=None, topk=None) -> dict:
        spec = self.spec(attention_weight, topk)
        s, state = self.summaries.get(spec), self.state
        return {"num_query": s.num_query, "num_gallery": s.num_gallery, "num_valid_queries": s.num_valid,
                "casn": s.casn, "feature": s.feature, "topk_attention": presets.effective_topk(state, spec.topk),
                "threshold": state.threshold, "attention_weight": float(spec.attention_weight),
                "ranking_settings": presets.settings(state, spec), "backbone": state.backbone,
                "checkpoint": state.checkpoint_path.name, "input_size": list(state.input_size)}
