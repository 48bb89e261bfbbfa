"""The Gradio page and its API.

Tabs: *Rankings* (query picker, ranked strip, pair explanation with export), *Why did a wrong match
rank first?* (paper fig. 8a), *Upload a pair*, *Dataset* (rank-1/mAP table and CMC curve).

API endpoints for ``gradio_client`` (stable ``api_name``s; every index is 0-based; names are paths
relative to the dataset folder, never server paths):

- ``/rank_query(query_index)`` -> ranking JSON (top entries with the score split into parts)
- ``/explain_pair(query_index, gallery_index)`` -> explanation JSON (same keys as
  ``python -m casn_core explain --json`` plus the ranking-score decomposition)
- ``/why_wrong(query_index)`` -> ``{"failed", "message", "rank1_wrong", "best_true"}``
- ``/explain_upload(file1, file2)`` -> explanation JSON of two uploaded images
- ``/list_queries(failures_only, sort)`` and ``/dataset_summary()``

Selection events (``.select``) cannot be called by clients; they share their logic with these.
"""
from __future__ import annotations

import threading
from collections import OrderedDict
from pathlib import Path

import app.offline  # noqa: F401  (before gradio)
import gradio as gr
import numpy as np

from app import explain, figures
from app.ranking import DatasetSummary, QueryRanking, rank_query, ranking_dict
from app.state import AppState
from app.uploads import MAX_UPLOAD_BYTES, UploadError, read_upload

SORTS = ("file order", "AP: worst first", "AP: best first")
MAX_PICKER = 240
"""Thumbnails shown in the query picker at once (the query-index box reaches every query)."""

CSS = """
#header h1 {margin-bottom: 0.2em;}
#query-info table, #pair-metrics table, #why-wrong-metrics table, #why-true-metrics table,
#upload-metrics table {font-size: 0.9em;}
#ranked-strip .grid-container, #query-gallery .grid-container {
  grid-template-columns: repeat(var(--grid-cols), minmax(50px, 1fr)) !important;
  grid-template-rows: none !important; grid-auto-rows: auto !important;}
#ranked-strip .thumbnail-item, #query-gallery .thumbnail-item {height: auto !important; aspect-ratio: 9 / 16 !important;}
#ranked-strip .caption-label, #query-gallery .caption-label {font-size: 0.72em; white-space: normal !important;
  overflow: visible !important; text-overflow: clip !important; max-width: 100% !important; line-height: 1.15;}
.legend-dot {display:inline-block; width:0.8em; height:0.8em; border-radius:2px; margin:0 0.25em 0 0.6em;}
"""


class App:
    """Request handlers over one loaded :class:`AppState` (thread-safe; rankings are memoised)."""

    def __init__(self, state: AppState, summary: DatasetSummary, max_upload_bytes: int = MAX_UPLOAD_BYTES) -> None:
        self.state = state
        self.summary = summary
        self.max_upload_bytes = max_upload_bytes
        self.strip_length = int(min(max(state.topk, 10), 20, len(state.gallery)))
        self._rankings: OrderedDict[int, QueryRanking] = OrderedDict()
        self._lock = threading.Lock()

    # ---- shared logic -------------------------------------------------------------------------
    def _query_index(self, value) -> int:
        try:
            index = int(value)
        except (TypeError, ValueError):
            raise gr.Error(f"query index must be a whole number, got {value!r}") from None
        if not 0 <= index < len(self.state.query):
            raise gr.Error(f"query index {index} is out of range: pick 0 to {len(self.state.query) - 1}")
        return index

    def ranking(self, query_index) -> QueryRanking:
        index = self._query_index(query_index)
        with self._lock:
            cached = self._rankings.get(index)
            if cached is not None:
                self._rankings.move_to_end(index)
                return cached
        result = rank_query(self.state, index)
        with self._lock:
            self._rankings[index] = result
            while len(self._rankings) > 512:
                self._rankings.popitem(last=False)
        return result

    def picker_indices(self, failures_only: bool, sort: str) -> list[int]:
        stats = self.summary.per_query
        indices = list(range(len(stats)))
        if failures_only:
            indices = [i for i in indices if stats[i].first_true_rank is not None and stats[i].first_true_rank > 1]
        if sort in SORTS[1:]:
            valid = [i for i in indices if stats[i].ap is not None]
            valid.sort(key=lambda i: stats[i].ap, reverse=sort == SORTS[2])
            indices = valid + [i for i in indices if stats[i].ap is None]
        return indices

    def _query_caption(self, index: int) -> str:
        s = self.summary.per_query[index]
        if s.first_true_rank is None:
            return f"q{index} · no match"
        mark = "✓" if s.first_true_rank == 1 else f"✗{s.first_true_rank}"
        return f"q{index} {mark} AP {s.ap:.2f}"

    # ---- UI handlers --------------------------------------------------------------------------
    def picker(self, failures_only: bool, sort: str):
        indices = self.picker_indices(failures_only, sort)
        shown = indices[:MAX_PICKER]
        items = [(self.state.query.paths[i], self._query_caption(i)) for i in shown]
        note = f"{len(indices)} of {len(self.state.query)} queries"
        if failures_only:
            note += " fail at rank 1"
        if len(shown) < len(indices):
            note += f"; showing the first {len(shown)} (type any index below)"
        return items, note

    def pick(self, failures_only: bool, sort: str, evt: gr.SelectData):
        indices = self.picker_indices(failures_only, sort)[:MAX_PICKER]
        position = evt.index if isinstance(evt.index, int) else evt.index[0]
        if not 0 <= position < len(indices):
            raise gr.Error("that thumbnail is no longer in the list; pick again")
        return indices[position]

    def show_query(self, query_index):
        ranking = self.ranking(query_index)
        state, q = self.state, ranking.query_index
        strip = []
        for pos in range(min(self.strip_length, len(ranking.order))):
            g = int(ranking.order[pos])
            match = bool(ranking.matches[pos])
            thumb = figures.bordered(explain.input_image(state.gallery.paths[g], state), figures.GREEN if match else
                                     figures.RED, height=128)
            value = ranking.score[pos] if ranking.reranked(pos) else ranking.feature_distance[pos]
            label = "d" if ranking.reranked(pos) else "d_f"
            strip.append((thumb, f"#{pos + 1} {'✓' if match else '✗'} c{int(state.gallery.camids[g])} "
                                 f"{label} {value:.2f}"))
        query_thumb = figures.bordered(explain.input_image(state.query.paths[q], state), None, height=192)
        return query_thumb, self.query_markdown(ranking), strip, self.ranking_table(ranking)

    def query_markdown(self, ranking: QueryRanking) -> str:
        state, q = self.state, ranking.query_index
        head = (f"### Query q{q}: `{state.relative(state.query.paths[q])}`\n"
                f"identity **{int(state.query.pids[q])}**, camera **{int(state.query.camids[q])}**\n\n")
        if ranking.first_true_rank is None:
            body = "No true match of this identity from another camera is in the gallery: no AP for this query."
        else:
            verdict = ('<span style="color:#22a03c">correct at rank 1</span>' if ranking.first_true_rank == 1
                       else '<span style="color:#d72626">wrong identity at rank 1</span>')
            body = (f"| first true match | AP | matches in gallery | rank-1 |\n|---|---|---|---|\n"
                    f"| **rank {ranking.first_true_rank}** | **{ranking.ap:.3f}** | {int(ranking.matches.sum())} | "
                    f"{verdict} |")
        note = (f"\n\nRanked by d = norm(d_f) + {state.attention_weight:g}·norm(d_a) on the top {ranking.topk} by "
                f"feature distance (paper sec. 4); {ranking.excluded} same-camera image(s) of this identity left out "
                f"(Market-1501 protocol).")
        return head + body + note

    def ranking_table(self, ranking: QueryRanking) -> str:
        state = self.state
        rows = ["| rank | gallery | id | cam | match | d_f | d_a | feature part | attention part | d |",
                "|---:|---|---:|---:|:---:|---:|---:|---:|---:|---:|"]

        def fmt(v):
            return "–" if not np.isfinite(v) else f"{v:.3f}"

        for pos in range(min(self.strip_length, len(ranking.order))):
            g = int(ranking.order[pos])
            total = ranking.score[pos] if ranking.reranked(pos) else float("nan")
            rows.append(f"| {pos + 1} | g{g} `{Path(state.gallery.paths[g]).name}` | {int(state.gallery.pids[g])} | "
                        f"{int(state.gallery.camids[g])} | {'✓' if ranking.matches[pos] else '✗'} | "
                        f"{fmt(ranking.feature_distance[pos])} | {fmt(ranking.attention_distance[pos])} | "
                        f"{fmt(ranking.feature_part[pos])} | {fmt(ranking.attention_part[pos])} | {fmt(total)} |")
        return "\n".join(rows)

    def _pair_outputs(self, view: explain.PairView):
        return (view.markdown, view.overlays, view.vectors, gr.update(value=str(view.png_path), interactive=True),
                gr.update(value=str(view.json_path), interactive=True))

    def explain_rank(self, query_index, position: int = 0):
        ranking = self.ranking(query_index)
        if not len(ranking.order):
            raise gr.Error("the gallery is empty for this query")
        g = int(ranking.order[min(position, len(ranking.order) - 1)])
        return self._pair_outputs(explain.view_cached(self.state, ranking.query_index, g, ranking))

    def explain_strip(self, query_index, evt: gr.SelectData):
        position = evt.index if isinstance(evt.index, int) else evt.index[0]
        return self.explain_rank(query_index, int(position))

    def why(self, query_index):
        ranking = self.ranking(query_index)
        case = explain.failure_case(self.state, ranking.query_index, ranking)
        outputs = []
        for gallery_index, labels in ((case.wrong_index, ("query", "rank-1 (wrong)")),
                                      (case.true_index, ("query", "best true match"))):
            if gallery_index is None:
                outputs += ["*(nothing to show)*", gr.update(value=None, visible=False),
                            gr.update(value=None, visible=False)]
            else:
                view = explain.view_cached(self.state, ranking.query_index, gallery_index, ranking, labels,
                                           export=False)
                outputs += [view.markdown, gr.update(value=view.overlays, visible=True),
                            gr.update(value=view.vectors, visible=True)]
        colour = "#d72626" if ranking.failed else "#555"
        return [f'<span style="color:{colour}">**q{ranking.query_index}**: {case.message}</span>'] + outputs

    def _read_pair(self, file1, file2):
        images = []
        for upload, label in ((file1, "image 1"), (file2, "image 2")):
            try:
                images.append(read_upload(upload, label, self.max_upload_bytes))
            except UploadError as exc:
                raise gr.Error(str(exc), title="Upload refused") from None
        names = tuple(Path(explain_name(f)).name for f in (file1, file2))
        return images, names

    def explain_upload_view(self, file1, file2):
        images, names = self._read_pair(file1, file2)
        try:
            view = explain.view_images(self.state, images[0], images[1], names)
        except Exception as exc:  # keep serving whatever happens
            raise gr.Error(f"could not explain this pair: {type(exc).__name__}: {exc}") from None
        status = (f"Explained `{names[0]}` ({images[0].width}x{images[0].height}) vs `{names[1]}` "
                  f"({images[1].width}x{images[1].height}); both resized to the model's "
                  f"{self.state.input_size[0]}x{self.state.input_size[1]} (HxW) input.")
        return (status,) + self._pair_outputs(view)

    # ---- API (JSON) ---------------------------------------------------------------------------
    def api_rank_query(self, query_index: int) -> dict:
        return ranking_dict(self.state, self.ranking(query_index), limit=self.strip_length)

    def api_explain_pair(self, query_index: int, gallery_index: int) -> dict:
        index = self._query_index(query_index)
        try:
            gallery = int(gallery_index)
        except (TypeError, ValueError):
            raise gr.Error(f"gallery index must be a whole number, got {gallery_index!r}") from None
        if not 0 <= gallery < len(self.state.gallery):
            raise gr.Error(f"gallery index {gallery} is out of range: pick 0 to {len(self.state.gallery) - 1}")
        return explain.explain_cached(self.state, index, gallery, self.ranking(index))

    def api_why_wrong(self, query_index: int) -> dict:
        ranking = self.ranking(query_index)
        case = explain.failure_case(self.state, ranking.query_index, ranking)
        out = {"query_index": ranking.query_index, "failed": ranking.failed, "message": case.message,
               "first_true_rank": ranking.first_true_rank, "ap": ranking.ap}
        for key, index in (("rank1_wrong", case.wrong_index), ("best_true", case.true_index)):
            out[key] = None if index is None else explain.explain_cached(self.state, ranking.query_index, index,
                                                                         ranking)
        return out

    def api_explain_upload(self, file1, file2) -> dict:
        images, names = self._read_pair(file1, file2)
        try:
            result = explain.explain_images(self.state, images[0], images[1])
        except Exception as exc:
            raise gr.Error(f"could not explain this pair: {type(exc).__name__}: {exc}") from None
        result["images"] = list(names)
        return result

    def api_list_queries(self, failures_only: bool = False, sort: str = "file order") -> list:
        if sort not in SORTS:
            raise gr.Error(f"sort must be one of {', '.join(SORTS)}")
        out = []
        for i in self.picker_indices(failures_only, sort):
            s = self.summary.per_query[i]
            out.append({"index": i, "name": self.state.relative(self.state.query.paths[i]),
                        "pid": int(self.state.query.pids[i]), "camid": int(self.state.query.camids[i]),
                        "first_true_rank": s.first_true_rank, "ap": s.ap})
        return out

    def api_dataset_summary(self) -> dict:
        s = self.summary
        return {"num_query": s.num_query, "num_gallery": s.num_gallery, "num_valid_queries": s.num_valid,
                "casn": s.casn, "feature": s.feature, "topk_attention": self.state.topk,
                "threshold": self.state.threshold, "attention_weight": self.state.attention_weight,
                "backbone": self.state.backbone, "checkpoint": self.state.checkpoint_path.name,
                "input_size": list(self.state.input_size)}

    def summary_markdown(self) -> str:
        s = self.summary

        def pct(v):
            return "–" if not np.isfinite(v) else f"{100 * v:.1f}%"

        rows = ["| ranking | rank-1 | rank-5 | rank-10 | mAP |", "|---|---:|---:|---:|---:|"]
        for key, label in (("casn", f"**CASN**: feature + Siamese attention (top {self.state.topk})"),
                           ("feature", "feature distance only")):
            r = getattr(s, key)
            rows.append(f"| {label} | {pct(r['rank1'])} | {pct(r['rank5'])} | {pct(r['rank10'])} | {pct(r['mAP'])} |")
        return (f"**{s.num_query}** queries ({s.num_valid} with a true match), **{s.num_gallery}** gallery images\n\n"
                + "\n".join(rows))


def explain_name(upload) -> str:
    """The user's file name of an upload (Gradio keeps it as the basename of the stored file)."""
    if isinstance(upload, dict):
        return str(upload.get("orig_name") or upload.get("path") or "upload")
    return str(getattr(upload, "orig_name", None) or getattr(upload, "name", None) or upload or "upload")


INTRO = """# CASN explainability: why does this gallery image rank here?
Consistent Attentive Siamese Network (Zheng et al., CVPR 2019). Pick a query to see its ranked gallery
(<span class="legend-dot" style="background:#22a03c"></span>true match
<span class="legend-dot" style="background:#d72626"></span>wrong identity), then click any gallery image to see
**where each image looks** (Siamese attention, sec. 3.2.2), the **row max-pooled importance vectors** with the
threshold and kept spans, the **aligned vectors** whose distance is the attention-consistency term of the ranking,
and the **BCE same-person probability**."""


def build_ui(handlers: App) -> gr.Blocks:
    state = handlers.state
    first_failure = next((i for i, s in enumerate(handlers.summary.per_query)
                          if s.first_true_rank is not None and s.first_true_rank > 1), 0)
    private = {"api_visibility": "private"}
    with gr.Blocks(title="CASN explainability", analytics_enabled=False, delete_cache=(3600, 3600)) as demo:
        gr.Markdown(INTRO, elem_id="header")
        gr.Markdown(
            f"model: `{state.checkpoint_path.name}` ({state.backbone}, input {state.input_size[0]}x{state.input_size[1]},"
            f" threshold t = {state.threshold:g}) · data: `{state.data_root.name}` · "
            f"CASN rank-1 **{100 * handlers.summary.casn['rank1']:.1f}%**, mAP "
            f"**{100 * handlers.summary.casn['mAP']:.1f}%** (details in the *Dataset* tab)", elem_id="model-line")
        with gr.Tabs():
            with gr.Tab("Rankings", elem_id="tab-rankings"):
                with gr.Row(equal_height=False):
                    with gr.Column(scale=2, min_width=300):
                        gr.Markdown("### 1. Pick a query")
                        with gr.Row():
                            failures = gr.Checkbox(label="failures only (rank-1 wrong)", value=False,
                                                   elem_id="failures-only")
                            sort = gr.Dropdown(list(SORTS), value=SORTS[0], label="sort", elem_id="sort-by")
                        items, note = handlers.picker(False, SORTS[0])
                        picker = gr.Gallery(value=items, label="queries: click one", columns=4, height=520,
                                            allow_preview=False, object_fit="contain", elem_id="query-gallery",
                                            format="png")
                        picker_note = gr.Markdown(note, elem_id="picker-note")
                        with gr.Row():
                            query_index = gr.Number(value=first_failure, precision=0, minimum=0,
                                                    maximum=len(state.query) - 1, label="query index",
                                                    elem_id="query-index", scale=2)
                            rank_button = gr.Button("Rank", variant="primary", elem_id="rank-button", scale=1)
                    with gr.Column(scale=5):
                        with gr.Row(equal_height=False):
                            query_image = gr.Image(label="query", show_label=False, type="numpy", format="png",
                                                   interactive=False, height=200, elem_id="query-image", scale=1,
                                                   min_width=110, buttons=[])
                            with gr.Column(scale=5):
                                query_info = gr.Markdown(elem_id="query-info")
                        strip = gr.Gallery(label="2. Ranked gallery: click an image to explain the pair "
                                                 "(green = true match, red = wrong; d = ranking score)",
                                           columns=min(handlers.strip_length, 10), height=190,
                                           allow_preview=False, object_fit="contain", elem_id="ranked-strip",
                                           format="png")
                        with gr.Accordion("ranking table: distances and score parts", open=False):
                            table = gr.Markdown(elem_id="ranking-table")
                        gr.Markdown("### 3. Explain the pair")
                        with gr.Row(equal_height=False):
                            pair_overlays = gr.Image(label="Siamese attention maps", show_label=False, type="numpy",
                                                     format="png", interactive=False, elem_id="pair-overlays",
                                                     buttons=["fullscreen"], scale=5, height=300)
                            with gr.Column(scale=4):
                                pair_md = gr.Markdown(elem_id="pair-metrics")
                                with gr.Row():
                                    pair_png = gr.DownloadButton("Export PNG", interactive=False,
                                                                 elem_id="export-png", size="sm")
                                    pair_json = gr.DownloadButton("Export JSON", interactive=False,
                                                                  elem_id="export-json", size="sm")
                        pair_vectors = gr.Image(label="importance vectors and their alignment", show_label=False,
                                                type="numpy", format="png", interactive=False,
                                                elem_id="pair-vectors", buttons=["fullscreen"])
            with gr.Tab("Why did a wrong match rank first?", elem_id="tab-why"):
                gr.Markdown("The paper's figure 8a: the query against its **rank-1 wrong match** (left) and against "
                            "its **best-ranked true match** (right). Consistent attention with a wrong identity "
                            "(similar regions, similar aligned vectors) explains why it ranked first. Follows the "
                            "query picked in the *Rankings* tab.")
                why_md = gr.Markdown(elem_id="why-info")
                with gr.Row(equal_height=False):
                    with gr.Column():
                        gr.Markdown("#### query vs rank-1 (wrong)")
                        wrong_md = gr.Markdown(elem_id="why-wrong-metrics")
                        wrong_overlays = gr.Image(label="attention", show_label=False, type="numpy", format="png", interactive=False,
                                                  elem_id="why-wrong-overlays", buttons=["fullscreen"])
                        wrong_vectors = gr.Image(label="vectors", show_label=False, type="numpy", format="png", interactive=False,
                                                 elem_id="why-wrong-vectors", buttons=["fullscreen"])
                    with gr.Column():
                        gr.Markdown("#### query vs best-ranked true match")
                        true_md = gr.Markdown(elem_id="why-true-metrics")
                        true_overlays = gr.Image(label="attention", show_label=False, type="numpy", format="png", interactive=False,
                                                 elem_id="why-true-overlays", buttons=["fullscreen"])
                        true_vectors = gr.Image(label="vectors", show_label=False, type="numpy", format="png", interactive=False,
                                                elem_id="why-true-vectors", buttons=["fullscreen"])
            with gr.Tab("Upload a pair", elem_id="tab-upload"):
                gr.Markdown(f"Two images of your own (any size; grayscale, RGBA, 16-bit, CMYK, animated: first "
                            f"frame). Files over {handlers.max_upload_bytes / 2**20:.0f} MiB or 25 megapixels are "
                            f"refused. Both are resized to the model's input size.")
                with gr.Row():
                    upload1 = gr.File(label="image 1", type="filepath", elem_id="upload-1", height=140)
                    upload2 = gr.File(label="image 2", type="filepath", elem_id="upload-2", height=140)
                upload_button = gr.Button("Explain this pair", variant="primary", elem_id="upload-button")
                upload_status = gr.Markdown(elem_id="upload-status")
                upload_md = gr.Markdown(elem_id="upload-metrics")
                upload_overlays = gr.Image(label="Siamese attention maps", show_label=False, type="numpy", format="png",
                                           interactive=False, elem_id="upload-overlays", buttons=["fullscreen"])
                upload_vectors = gr.Image(label="importance vectors and their alignment", show_label=False, type="numpy", format="png",
                                          interactive=False, elem_id="upload-vectors", buttons=["fullscreen"])
                with gr.Row():
                    upload_png = gr.DownloadButton("Export PNG", interactive=False, elem_id="upload-export-png",
                                                   size="sm")
                    upload_json = gr.DownloadButton("Export JSON", interactive=False, elem_id="upload-export-json",
                                                    size="sm")
            with gr.Tab("Dataset", elem_id="tab-dataset"):
                with gr.Row():
                    with gr.Column():
                        gr.Markdown(handlers.summary_markdown(), elem_id="dataset-summary")
                        gr.Markdown(
                            f"Checkpoint `{state.checkpoint_path.name}`: backbone **{state.backbone}**, input "
                            f"{state.input_size[0]}x{state.input_size[1]}, alignment threshold t = {state.threshold:g}, "
                            f"attention weight w = {state.attention_weight:g}, attention re-ranking depth "
                            f"K = {state.topk}.\n\nFeatures: {'loaded from the cache' if state.cache_hit else 'extracted at this start and cached'}"
                            f" (`{state.cache_file.name if state.cache_file else '-'}`).", elem_id="model-info")
                    gr.Image(value=figures.cmc_figure(handlers.summary), label="CMC curve", type="numpy",
                             format="png", interactive=False, elem_id="cmc-plot")

        # hidden outputs of the JSON API endpoints that take uploads
        upload_api_button = gr.Button(visible=False)
        upload_api_json = gr.JSON(visible=False)

        query_outputs = [query_image, query_info, strip, table]
        pair_outputs = [pair_md, pair_overlays, pair_vectors, pair_png, pair_json]
        why_outputs = [why_md, wrong_md, wrong_overlays, wrong_vectors, true_md, true_overlays, true_vectors]

        def refresh_query(event):
            (event.then(handlers.show_query, query_index, query_outputs, **private)
                  .then(handlers.explain_rank, query_index, pair_outputs, **private)
                  .then(handlers.why, query_index, why_outputs, **private))

        for control in (failures, sort):
            control.change(handlers.picker, [failures, sort], [picker, picker_note], **private)
        refresh_query(picker.select(handlers.pick, [failures, sort], query_index, **private))
        refresh_query(rank_button.click(lambda v: v, query_index, query_index, **private))
        refresh_query(query_index.submit(lambda v: v, query_index, query_index, **private))
        refresh_query(demo.load(lambda v: v, query_index, query_index, **private))
        strip.select(handlers.explain_strip, query_index, pair_outputs, **private)
        upload_button.click(handlers.explain_upload_view, [upload1, upload2],
                            [upload_status, upload_md, upload_overlays, upload_vectors, upload_png, upload_json],
                            **private)
        upload_api_button.click(handlers.api_explain_upload, [upload1, upload2], upload_api_json,
                                api_name="explain_upload", api_description="Explain two uploaded images (JSON).")

        gr.api(handlers.api_rank_query, api_name="rank_query")
        gr.api(handlers.api_explain_pair, api_name="explain_pair")
        gr.api(handlers.api_why_wrong, api_name="why_wrong")
        gr.api(handlers.api_list_queries, api_name="list_queries")
        gr.api(handlers.api_dataset_summary, api_name="dataset_summary")
    return demo
