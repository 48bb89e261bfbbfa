"""The app's request logic, free of Gradio: every request the page or an API client makes.

:class:`AppService` answers with plain data (dicts for the JSON API, view dataclasses with numpy
pictures for the page) and fails with plain errors: :class:`app.validation.RequestError` (a
``ValueError``) for bad indices or choices, :class:`app.uploads.UploadError` for refused uploads,
:class:`ExplainError` when an accepted upload still cannot be explained. :mod:`app.ui` maps these
to ``gr.Error``. It is thread-safe: the state is read-only and the rankings memo is locked.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from app import explain, figures, markdown, similarity
from app.exports import export_view
from app.lru import LRUCache
from app.ranking import DatasetSummary, QueryRanking, rank_query, ranking_dict
from app.state import AppState
from app.summary import SummaryJob
from app.uploads import MAX_UPLOAD_BYTES, read_upload, upload_name
from app.validation import RequestError, choice, index_in

SORTS = ("file order", "AP: worst first", "AP: best first")
MAX_PICKER = 240
"""Thumbnails shown in the query picker at once (the query-index box reaches every query)."""


class ExplainError(RuntimeError):
    """An accepted input could not be explained (the message says why)."""


@dataclass
class QueryView:
    """What the Rankings tab shows of one query."""

    ranking: QueryRanking
    thumbnail: np.ndarray
    markdown: str
    strip: list[tuple[np.ndarray, str]]
    table: str


@dataclass
class WhyView:
    """The failure tab (paper fig. 8a): the rank-1 wrong match and the best-ranked true match."""

    message: str
    wrong: explain.PairView | None
    true: explain.PairView | None
    contrastive: np.ndarray | None = None
    contrastive_text: str = ""


@dataclass
class CorrespondenceView:
    """A clicked location and where its features match: both shown images and the JSON."""

    query_image: np.ndarray
    gallery_image: np.ndarray
    markdown: str
    result: dict


@dataclass(frozen=True)
class PairRef:
    """Which pair is on screen, so that an export can re-create it: a dataset pair or two uploads."""

    kind: str  # "dataset" or "upload"
    query_index: int = -1
    gallery_index: int = -1
    files: tuple[str, str] = ("", "")


class AppService:
    """Request handlers over one loaded :class:`AppState` (rankings memoised in an LRU)."""

    def __init__(self, state: AppState, summary: DatasetSummary | SummaryJob, max_upload_bytes: int = MAX_UPLOAD_BYTES,
                 ranking_cache: int = 512) -> None:
        self.state = state
        self._summary = summary
        self.max_upload_bytes = int(max_upload_bytes)
        self.strip_length = int(min(max(state.topk, 10), 20, len(state.gallery)))
        self.rankings: LRUCache[QueryRanking] = LRUCache(ranking_cache)

    @property
    def summary(self) -> DatasetSummary:
        """The dataset summary; waits while :class:`app.summary.SummaryJob` computes it in the background."""
        return self._summary.result() if isinstance(self._summary, SummaryJob) else self._summary

    @property
    def summary_ready(self) -> bool:
        return not isinstance(self._summary, SummaryJob) or self._summary.ready

    def summary_if_ready(self) -> DatasetSummary | None:
        """The summary when it is there (never waits): what the page is built with."""
        return self.summary if self.summary_ready else None

    @property
    def served_folders(self) -> list[Path]:
        """Folders the server may serve files from: the dataset (thumbnails) and the app's cache (exports)."""
        return [self.state.data_root, self.state.cache_dir]

    # ---- validation -----------------------------------------------------------------------------
    def query_index(self, value) -> int:
        return index_in(value, len(self.state.query), "query index")

    def gallery_index(self, value) -> int:
        return index_in(value, len(self.state.gallery), "gallery index")

    # ---- rankings ---------------------------------------------------------------------------------
    def ranking(self, query_index) -> QueryRanking:
        index = self.query_index(query_index)
        return self.rankings.get_or_compute(index, lambda: rank_query(self.state, index))

    def picker_indices(self, failures_only: bool, sort: str) -> list[int]:
        sort = choice(sort, SORTS, "sort")
        if not failures_only and sort == SORTS[0]:
            return list(range(len(self.state.query)))  # file order: no need to wait for the summary
        stats = self.summary.per_query
        indices = list(range(len(stats)))
        if failures_only:
            indices = [i for i in indices if stats[i].first_true_rank is not None and stats[i].first_true_rank > 1]
        if sort != SORTS[0]:
            valid = [i for i in indices if stats[i].ap is not None]
            valid.sort(key=lambda i: stats[i].ap, reverse=sort == SORTS[2])
            indices = valid + [i for i in indices if stats[i].ap is None]
        return indices

    def picker(self, failures_only: bool, sort: str, wait: bool = True) -> tuple[list[tuple[str, str]], str]:
        """Picker thumbnails ``(path, caption)`` and a note saying how many queries are listed.

        ``wait=False`` while the summary is computed: the first queries in file order, captioned by
        index only (what the page is built with; it is refreshed when the summary is there).
        """
        if not wait and not self.summary_ready:
            shown = list(range(min(MAX_PICKER, len(self.state.query))))
            items = [(self.state.query.paths[i], markdown.query_caption(i, None)) for i in shown]
            return items, (f"{len(self.state.query)} queries; showing the first {len(shown)} in file order "
                           f"(first true ranks and APs are being computed)")
        indices = self.picker_indices(failures_only, sort)
        shown = indices[:MAX_PICKER]
        items = [(self.state.query.paths[i], markdown.query_caption(i, self.summary.per_query[i])) for i in shown]
        note = f"{len(indices)} of {len(self.state.query)} queries"
        if failures_only:
            note += " fail at rank 1"
        if len(shown) < len(indices):
            note += f"; showing the first {len(shown)} (type any index below)"
        return items, note

    def picked_query(self, failures_only: bool, sort: str, position: int) -> int:
        """The query index of the ``position``-th picker thumbnail."""
        indices = self.picker_indices(failures_only, sort)[:MAX_PICKER]
        if not 0 <= position < len(indices):
            raise RequestError("that thumbnail is no longer in the list; pick again")
        return indices[position]

    def first_failure(self, wait: bool = True) -> int:
        """The first query whose rank-1 image is wrong (0 when none, or when ``wait=False`` and the summary is
        still being computed)."""
        if not wait and not self.summary_ready:
            return 0
        return next((i for i, s in enumerate(self.summary.per_query)
                     if s.first_true_rank is not None and s.first_true_rank > 1), 0)

    def query_view(self, query_index) -> QueryView:
        ranking = self.ranking(query_index)
        state, q = self.state, ranking.query_index
        strip = []
        for pos in range(min(self.strip_length, len(ranking.order))):
            g = int(ranking.order[pos])
            match = bool(ranking.matches[pos])
            thumb = figures.bordered(explain.input_image(state.gallery.paths[g], state),
                                     figures.GREEN if match else figures.RED, height=128)
            value = ranking.score[pos] if ranking.reranked(pos) else ranking.feature_distance[pos]
            label = "d" if ranking.reranked(pos) else "d_f"
            strip.append((thumb, f"#{pos + 1} {'✓' if match else '✗'} c{int(state.gallery.camids[g])} "
                                 f"{label} {value:.2f}"))
        thumbnail = figures.bordered(explain.input_image(state.query.paths[q], state), None, height=192)
        return QueryView(ranking, thumbnail, markdown.query_markdown(state, ranking), strip,
                         markdown.ranking_table(state, ranking, self.strip_length))

    # ---- pair explanations ------------------------------------------------------------------------
    def gallery_at(self, query_index, position: int) -> int:
        """The gallery index at 0-based ``position`` of the query's ranking (clamped to its length)."""
        ranking = self.ranking(query_index)
        if not len(ranking.order):
            raise RequestError("the gallery is empty for this query")
        return int(ranking.order[min(max(int(position), 0), len(ranking.order) - 1)])

    def pair_view(self, query_index, gallery_index) -> tuple[explain.PairView, PairRef]:
        ranking = self.ranking(query_index)
        g = self.gallery_index(gallery_index)
        view = explain.view_cached(self.state, ranking.query_index, g, ranking)
        return view, PairRef("dataset", ranking.query_index, g)

    def why_view(self, query_index) -> WhyView:
        ranking = self.ranking(query_index)
        case = explain.failure_case(self.state, ranking.query_index, ranking)
        views = []
        for gallery_index, labels in ((case.wrong_index, ("query", "rank-1 (wrong)")),
                                      (case.true_index, ("query", "best true match"))):
            views.append(None if gallery_index is None else
                         explain.view_cached(self.state, ranking.query_index, gallery_index, ranking, labels))
        view = WhyView(markdown.why_message(ranking.query_index, ranking.failed, case.message), *views)
        if case.wrong_index is not None and case.true_index is not None:
            result = similarity.contrastive(self.state, ranking.query_index, case.wrong_index, case.true_index)
            image = explain.input_image(self.state.query.paths[ranking.query_index], self.state)
            view.contrastive = figures.contrastive_figure(image, np.asarray(result["map"]), result["similarity_gap"])
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
        if direction == "query":
            query_image = figures.marked(query_image, found.x, found.y, found.cell, found.source_map_size)
            gallery_image = figures.heat(gallery_image, found.values)
        else:
            gallery_image = figures.marked(gallery_image, found.x, found.y, found.cell, found.source_map_size)
            query_image = figures.heat(query_image, found.values)
        return CorrespondenceView(query_image, gallery_image, markdown.correspondence_markdown(found),
                                  found.to_json(q, g, similarity.shown_size(self.state)))

    def _read_pair(self, file1, file2):
        images = [read_upload(upload, label, self.max_upload_bytes)
                  for upload, label in ((file1, "image 1"), (file2, "image 2"))]
        return images, (upload_name(file1), upload_name(file2))

    def upload_view(self, file1, file2) -> tuple[str, explain.PairView, PairRef]:
        """Status line, view and reference of two uploaded images."""
        images, names = self._read_pair(file1, file2)
        try:
            view = explain.view_images(self.state, images[0], images[1], names)
        except Exception as exc:  # keep serving whatever happens
            raise ExplainError(f"could not explain this pair: {type(exc).__name__}: {exc}") from None
        status = (f"Explained `{names[0]}` ({images[0].width}x{images[0].height}) vs `{names[1]}` "
                  f"({images[1].width}x{images[1].height}); both resized to the model's "
                  f"{self.state.input_size[0]}x{self.state.input_size[1]} (HxW) input.")
        return status, view, PairRef("upload", files=(str(file1), str(file2)))

    def export(self, ref: PairRef | None) -> tuple[Path, Path]:
        """Write the PNG and JSON of the pair on screen (only when the user asks); their paths."""
        if ref is None:
            raise RequestError("nothing to export yet: explain a pair first")
        if ref.kind == "dataset":
            view, _ = self.pair_view(ref.query_index, ref.gallery_index)
        else:
            _, view, _ = self.upload_view(*ref.files)
        return export_view(self.state, view)

    # ---- JSON API ---------------------------------------------------------------------------------
    def api_rank_query(self, query_index) -> dict:
        return ranking_dict(self.state, self.ranking(query_index), limit=self.strip_length)

    def api_explain_pair(self, query_index, gallery_index) -> dict:
        ranking = self.ranking(query_index)
        return explain.explain_cached(self.state, ranking.query_index, self.gallery_index(gallery_index), ranking)

    def api_why_wrong(self, query_index) -> dict:
        ranking = self.ranking(query_index)
        case = explain.failure_case(self.state, ranking.query_index, ranking)
        out = {"query_index": ranking.query_index, "failed": ranking.failed, "message": case.message,
               "first_true_rank": ranking.first_true_rank, "ap": ranking.ap}
        for key, index in (("rank1_wrong", case.wrong_index), ("best_true", case.true_index)):
            out[key] = None if index is None else explain.explain_cached(self.state, ranking.query_index, index,
                                                                         ranking)
        out["contrastive"] = None
        if case.wrong_index is not None and case.true_index is not None:
            out["contrastive"] = similarity.contrastive(self.state, ranking.query_index, case.wrong_index,
                                                        case.true_index)
        return out

    def api_explain_upload(self, file1, file2) -> dict:
        images, names = self._read_pair(file1, file2)
        try:
            result = explain.explain_images(self.state, images[0], images[1])
        except Exception as exc:
            raise ExplainError(f"could not explain this pair: {type(exc).__name__}: {exc}") from None
        result["images"] = list(names)
        return result

    def api_list_queries(self, failures_only: bool = False, sort: str = SORTS[0]) -> list:
        out = []
        for i in self.picker_indices(failures_only, sort):
            s = self.summary.per_query[i]
            out.append({"index": i, "name": self.state.relative(self.state.query.paths[i]),
                        "pid": int(self.state.query.pids[i]), "camid": int(self.state.query.camids[i]),
                        "first_true_rank": s.first_true_rank, "ap": s.ap})
        return out

    def api_dataset_summary(self) -> dict:
        s, state = self.summary, self.state
        return {"num_query": s.num_query, "num_gallery": s.num_gallery, "num_valid_queries": s.num_valid,
                "casn": s.casn, "feature": s.feature, "topk_attention": state.topk, "threshold": state.threshold,
                "attention_weight": state.attention_weight, "backbone": state.backbone,
                "checkpoint": state.checkpoint_path.name, "input_size": list(state.input_size)}
