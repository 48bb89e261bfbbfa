"""The Gradio page and its API: layout only; the logic is :class:`app.service.AppService`.

Tabs: *Rankings* (query picker, ranked strip, pair explanation, export on request), *Why did a
wrong match rank first?* (paper fig. 8a), *Upload a pair*, *Dataset* (rank-1/mAP/mINP and CMC).

API endpoints for ``gradio_client`` (stable ``api_name``s; every index is 0-based; names are paths
relative to the dataset folder, never server paths):

- ``/rank_query(query_index)`` -> ranking JSON (top entries with the score split into parts)
- ``/explain_pair(query_index, gallery_index)`` -> explanation JSON (same keys as
  ``python -m casn_core explain --json`` plus the ranking-score decomposition)
- ``/why_wrong(query_index)`` -> ``{"failed", "message", "rank1_wrong", "best_true"}``
- ``/explain_upload(file1, file2)`` -> explanation JSON of two uploaded images
- ``/list_queries(failures_only, sort)`` and ``/dataset_summary()``
- ``/correspondence(query_index, gallery_index, x, y, direction)`` -> one row (``direction="query"``:
  (x, y) is a pixel of the shown query image) or column (``"gallery"``) of the exact similarity
  correspondence C, as the other image's map, with the clicked feature cell

Selection events (``.select``) cannot be called by clients; they share their logic with these.
The service raises plain errors; :func:`user_errors` turns them into ``gr.Error`` messages.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import app.offline  # noqa: F401  (before gradio)
import gradio as gr

from app import figures, markdown
from app.explain import PairView
from app.service import SORTS, AppService, ExplainError, PairRef
from app.uploads import UploadError

PRIVATE = {"api_visibility": "private"}

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


def user_errors(fn: Callable, *args):
    """``fn(*args)``, with the service's plain errors shown to the user as ``gr.Error``."""
    try:
        return fn(*args)
    except UploadError as exc:
        raise gr.Error(str(exc), title="Upload refused") from None
    except (ValueError, IndexError, ExplainError) as exc:
        raise gr.Error(str(exc)) from None


def _selected(evt: gr.SelectData) -> int:
    return int(evt.index if isinstance(evt.index, int) else evt.index[0])


def _picture(elem_id: str, label: str, **kwargs) -> gr.Image:
    return gr.Image(label=label, show_label=False, type="numpy", format="png", interactive=False, elem_id=elem_id,
                    buttons=["fullscreen"], **kwargs)


@dataclass
class PairPanel:
    """The components that show one pair explanation: numbers; the paper's Siamese attention (overlays,
    vector plots); beside it the exact similarity decomposition (maps, row contributions)."""

    numbers: gr.Markdown
    overlays: gr.Image
    vectors: gr.Image
    similarity: gr.Image
    similarity_rows: gr.Image

    @classmethod
    def build(cls, prefix: str) -> "PairPanel":
        numbers = gr.Markdown(elem_id=f"{prefix}-metrics")
        with gr.Row(equal_height=False):
            with gr.Column(scale=3):
                gr.Markdown("**Siamese attention** (the paper's BCE head: what it compares)")
                overlays = _picture(f"{prefix}-overlays", "Siamese attention maps")
                vectors = _picture(f"{prefix}-vectors", "importance vectors and their alignment")
            with gr.Column(scale=2):
                gr.Markdown("**Similarity decomposition** (exact: what makes d_f, the ranking distance, small)")
                similarity = _picture(f"{prefix}-similarity", "similarity maps")
                similarity_rows = _picture(f"{prefix}-similarity-rows", "row contributions to the similarity")
        return cls(numbers, overlays, vectors, similarity, similarity_rows)

    @property
    def outputs(self) -> list:
        return [self.numbers, self.overlays, self.vectors, self.similarity, self.similarity_rows]

    @staticmethod
    def values(view: PairView | None) -> list:
        if view is None:
            return ["*(nothing to show)*"] + [gr.update(value=None, visible=False)] * 4
        return [view.markdown] + [gr.update(value=image, visible=image is not None) for image in
                                  (view.overlays, view.vectors, view.similarity, view.similarity_rows)]


@dataclass
class ExportControls:
    button: gr.Button
    files: gr.File

    @classmethod
    def build(cls, prefix: str) -> "ExportControls":
        with gr.Row():
            button = gr.Button("Export PNG + JSON", elem_id=f"{prefix}-button", size="sm", interactive=False)
            files = gr.File(label="exported files", file_count="multiple", interactive=False, elem_id=f"{prefix}-files",
                            height=90)
        return cls(button, files)

    def wire(self, service: AppService, ref: gr.State) -> None:
        def export(current: PairRef | None):
            return [str(p) for p in user_errors(service.export, current)]

        self.button.click(export, ref, self.files, **PRIVATE)


@dataclass
class RankingsTab:
    failures: gr.Checkbox
    sort: gr.Dropdown
    picker: gr.Gallery
    picker_note: gr.Markdown
    query_index: gr.Number
    rank_button: gr.Button
    query_image: gr.Image
    query_info: gr.Markdown
    strip: gr.Gallery
    table: gr.Markdown
    pair: PairPanel
    export: ExportControls
    pair_ref: gr.State
    correspondence: "CorrespondencePanel"


@dataclass
class CorrespondencePanel:
    """Click a location on either image: the other lights up where that location's features match."""

    query: gr.Image
    gallery: gr.Image
    info: gr.Markdown

    @classmethod
    def build(cls) -> "CorrespondencePanel":
        gr.Markdown("#### Point correspondence: click a location on either image")
        with gr.Row(equal_height=False):
            query = gr.Image(label="query: click a location", type="numpy", format="png", interactive=False,
                             elem_id="corr-query", buttons=[], min_width=140, scale=1)
            gallery = gr.Image(label="gallery: click a location", type="numpy", format="png", interactive=False,
                               elem_id="corr-gallery", buttons=[], min_width=140, scale=1)
            info = gr.Markdown("The clicked point is marked; the other image shows one row of the exact "
                               "correspondence C (Stylianou et al. 2019) of the feature similarity.",
                               elem_id="corr-info")
        return cls(query, gallery, info)

    @property
    def outputs(self) -> list:
        return [self.query, self.gallery, self.info]


def _rankings_tab(service: AppService) -> RankingsTab:
    state = service.state
    with gr.Row(equal_height=False):
        with gr.Column(scale=2, min_width=300):
            gr.Markdown("### 1. Pick a query")
            with gr.Row():
                failures = gr.Checkbox(label="failures only (rank-1 wrong)", value=False, elem_id="failures-only")
                sort = gr.Dropdown(list(SORTS), value=SORTS[0], label="sort", elem_id="sort-by")
            items, note = service.picker(False, SORTS[0], wait=False)
            picker = gr.Gallery(value=items, label="queries: click one", columns=4, height=520, allow_preview=False,
                                object_fit="contain", elem_id="query-gallery", format="png")
            picker_note = gr.Markdown(note, elem_id="picker-note")
            with gr.Row():
                query_index = gr.Number(value=service.first_failure(wait=False), precision=0, minimum=0,
                                        maximum=len(state.query) - 1, label="query index", elem_id="query-index",
                                        scale=2)
                rank_button = gr.Button("Rank", variant="primary", elem_id="rank-button", scale=1)
        with gr.Column(scale=5):
            with gr.Row(equal_height=False):
                query_image = gr.Image(label="query", show_label=False, type="numpy", format="png", interactive=False,
                                       height=200, elem_id="query-image", scale=1, min_width=110, buttons=[])
                with gr.Column(scale=5):
                    query_info = gr.Markdown(elem_id="query-info")
            strip = gr.Gallery(label="2. Ranked gallery: click an image to explain the pair (green = true match, "
                                     "red = wrong; d = ranking score)", columns=min(service.strip_length, 10),
                               height=190, allow_preview=False, object_fit="contain", elem_id="ranked-strip",
                               format="png")
            with gr.Accordion("ranking table: distances and score parts", open=False):
                table = gr.Markdown(elem_id="ranking-table")
            gr.Markdown("### 3. Explain the pair")
            pair = PairPanel.build("pair")
            correspondence = CorrespondencePanel.build()
            export = ExportControls.build("export")
    return RankingsTab(failures, sort, picker, picker_note, query_index, rank_button, query_image, query_info, strip,
                       table, pair, export, gr.State(None), correspondence)


@dataclass
class WhyTab:
    message: gr.Markdown
    contrastive_text: gr.Markdown
    contrastive: gr.Image
    wrong: PairPanel
    true: PairPanel

    @property
    def outputs(self) -> list:
        return [self.message, self.contrastive_text, self.contrastive, *self.wrong.outputs, *self.true.outputs]


def _why_tab() -> WhyTab:
    gr.Markdown("The paper's figure 8a: the query against its **rank-1 wrong match** (left) and against its "
                "**best-ranked true match** (right). Consistent attention with a wrong identity (similar regions, "
                "similar aligned vectors) explains why it ranked first. Follows the query picked in the *Rankings* "
                "tab.")
    message = gr.Markdown(elem_id="why-info")
    with gr.Row(equal_height=False):
        contrastive = _picture("why-contrastive", "contrastive similarity map", height=300)
        contrastive_text = gr.Markdown(elem_id="why-contrastive-info")
    with gr.Row(equal_height=False):
        with gr.Column():
            gr.Markdown("#### query vs rank-1 (wrong)")
            wrong = PairPanel.build("why-wrong")
        with gr.Column():
            gr.Markdown("#### query vs best-ranked true match")
            true = PairPanel.build("why-true")
    return WhyTab(message, contrastive_text, contrastive, wrong, true)


@dataclass
class UploadTab:
    file1: gr.File
    file2: gr.File
    button: gr.Button
    status: gr.Markdown
    pair: PairPanel
    export: ExportControls
    pair_ref: gr.State


def _upload_tab(service: AppService) -> UploadTab:
    gr.Markdown(f"Two images of your own (any size; grayscale, RGBA, 16-bit, CMYK, animated: first frame). Files over "
                f"{service.max_upload_bytes / 2**20:.0f} MiB or 25 megapixels are refused. Both are resized to the "
                f"model's input size.")
    with gr.Row():
        file1 = gr.File(label="image 1", type="filepath", elem_id="upload-1", height=140)
        file2 = gr.File(label="image 2", type="filepath", elem_id="upload-2", height=140)
    button = gr.Button("Explain this pair", variant="primary", elem_id="upload-button")
    status = gr.Markdown(elem_id="upload-status")
    pair = PairPanel.build("upload")
    export = ExportControls.build("upload-export")
    return UploadTab(file1, file2, button, status, pair, export, gr.State(None))


def _dataset_tab(service: AppService) -> tuple[gr.Markdown, gr.Image]:
    summary = service.summary_if_ready()
    with gr.Row():
        with gr.Column():
            text = gr.Markdown(markdown.summary_markdown(summary, service.state.topk), elem_id="dataset-summary")
            gr.Markdown(markdown.model_info(service.state), elem_id="model-info")
        plot = gr.Image(value=None if summary is None else figures.cmc_figure(summary), label="CMC curve",
                        type="numpy", format="png", interactive=False, elem_id="cmc-plot")
    return text, plot


def _wire_summary(service: AppService, demo: gr.Blocks, model_line: gr.Markdown, rankings: "RankingsTab",
                  dataset: tuple[gr.Markdown, gr.Image]) -> None:
    """The page was built before the background summary was there: each page load fills in the parts
    that need it (header numbers, picker captions, Dataset tab) once it is (app.summary.SummaryJob)."""
    cmc: list = []

    def fill(failures_only, sort):
        summary = service.summary  # waits in a queue worker, not in the page
        if not cmc:
            cmc.append(figures.cmc_figure(summary))
        items, note = user_errors(service.picker, failures_only, sort)
        return (markdown.model_line(service.state, summary), items, note,
                markdown.summary_markdown(summary, service.state.topk), cmc[0])

    demo.load(fill, [rankings.failures, rankings.sort],
              [model_line, rankings.picker, rankings.picker_note, *dataset], **PRIVATE)


def _wire_rankings(service: AppService, tab: RankingsTab, why: WhyTab, demo: gr.Blocks) -> None:
    query_outputs = [tab.query_image, tab.query_info, tab.strip, tab.table]
    corr = tab.correspondence
    pair_outputs = [*tab.pair.outputs, tab.export.button, tab.pair_ref, corr.query, corr.gallery]

    def show_query(query_index):
        view = user_errors(service.query_view, query_index)
        return view.thumbnail, view.markdown, view.strip, view.table

    def show_pair_at(query_index, position: int = 0):
        gallery = user_errors(service.gallery_at, query_index, position)
        view, ref = user_errors(service.pair_view, query_index, gallery)
        shown = user_errors(service.shown_pair, ref.query_index, ref.gallery_index)
        return [*PairPanel.values(view), gr.update(interactive=True), ref, *shown]

    def show_strip_pick(query_index, evt: gr.SelectData):
        return show_pair_at(query_index, _selected(evt))

    def show_why(query_index):
        view = user_errors(service.why_view, query_index)
        return [view.message, view.contrastive_text, gr.update(value=view.contrastive,
                                                               visible=view.contrastive is not None),
                *PairPanel.values(view.wrong), *PairPanel.values(view.true)]

    def clicked(direction: str):
        def show(ref: PairRef | None, evt: gr.SelectData):
            if ref is None:
                raise gr.Error("explain a pair first")
            x, y = evt.index
            view = user_errors(service.correspondence_view, ref.query_index, ref.gallery_index, x, y, direction)
            return view.query_image, view.gallery_image, view.markdown
        return show

    def pick(failures_only, sort, evt: gr.SelectData):
        return user_errors(service.picked_query, failures_only, sort, _selected(evt))

    def refresh(event) -> None:
        (event.then(show_query, tab.query_index, query_outputs, **PRIVATE)
              .then(show_pair_at, tab.query_index, pair_outputs, **PRIVATE)
              .then(show_why, tab.query_index, why.outputs, **PRIVATE))

    def same(value):
        return value

    def initial(value):
        """The query a page opens on: the first failure once the summary is there."""
        return service.first_failure(wait=False) if service.summary_ready else value

    for control in (tab.failures, tab.sort):
        control.change(lambda f, s: user_errors(service.picker, f, s), [tab.failures, tab.sort],
                       [tab.picker, tab.picker_note], **PRIVATE)
    refresh(tab.picker.select(pick, [tab.failures, tab.sort], tab.query_index, **PRIVATE))
    refresh(tab.rank_button.click(same, tab.query_index, tab.query_index, **PRIVATE))
    refresh(tab.query_index.submit(same, tab.query_index, tab.query_index, **PRIVATE))
    refresh(demo.load(initial, tab.query_index, tab.query_index, **PRIVATE))
    tab.strip.select(show_strip_pick, tab.query_index, pair_outputs, **PRIVATE)
    tab.export.wire(service, tab.pair_ref)
    corr.query.select(clicked("query"), tab.pair_ref, corr.outputs, **PRIVATE)
    corr.gallery.select(clicked("gallery"), tab.pair_ref, corr.outputs, **PRIVATE)


def _wire_upload(service: AppService, tab: UploadTab) -> None:
    def show_upload(file1, file2):
        status, view, ref = user_errors(service.upload_view, file1, file2)
        return [status, *PairPanel.values(view), gr.update(interactive=True), ref]

    tab.button.click(show_upload, [tab.file1, tab.file2],
                     [tab.status, *tab.pair.outputs, tab.export.button, tab.pair_ref], **PRIVATE)
    tab.export.wire(service, tab.pair_ref)
    # the JSON API of uploads needs file inputs: a hidden button carries its endpoint
    api_button, api_json = gr.Button(visible=False), gr.JSON(visible=False)

    def explain_upload_json(file1, file2) -> dict:
        return user_errors(service.api_explain_upload, file1, file2)

    api_button.click(explain_upload_json, [tab.file1, tab.file2], api_json, api_name="explain_upload",
                     api_description="Explain two uploaded images (JSON).")


def _api_endpoints(service: AppService) -> None:
    """The JSON endpoints (stable names): typed wrappers so that clients see the parameter types."""

    def rank_query(query_index: int) -> dict:
        return user_errors(service.api_rank_query, query_index)

    def explain_pair(query_index: int, gallery_index: int) -> dict:
        return user_errors(service.api_explain_pair, query_index, gallery_index)

    def why_wrong(query_index: int) -> dict:
        return user_errors(service.api_why_wrong, query_index)

    def list_queries(failures_only: bool = False, sort: str = SORTS[0]) -> list:
        return user_errors(service.api_list_queries, failures_only, sort)

    def dataset_summary() -> dict:
        return service.api_dataset_summary()

    def correspondence(query_index: int, gallery_index: int, x: int, y: int, direction: str = "query") -> dict:
        """Where the features at pixel (x, y) of the shown query (or gallery) image match in the other image."""
        return user_errors(service.api_correspondence, query_index, gallery_index, x, y, direction)

    for fn in (rank_query, explain_pair, why_wrong, list_queries, dataset_summary, correspondence):
        gr.api(fn, api_name=fn.__name__)


def build_ui(service: AppService, search=None) -> gr.Blocks:
    """The page: header, the tabs, their events and the API endpoints; ``search`` (an
    :class:`app.search.SearchService` over the dataset's gallery) adds the *Search with your image* tab."""
    with gr.Blocks(title="CASN explainability", analytics_enabled=False, delete_cache=(3600, 3600)) as demo:
        gr.Markdown(markdown.INTRO, elem_id="header")
        built_ready = service.summary_ready
        model_line = gr.Markdown(markdown.model_line(service.state, service.summary_if_ready()), elem_id="model-line")
        with gr.Tabs():
            with gr.Tab("Rankings", elem_id="tab-rankings"):
                rankings = _rankings_tab(service)
            with gr.Tab("Why did a wrong match rank first?", elem_id="tab-why"):
                why = _why_tab()
            with gr.Tab("Upload a pair", elem_id="tab-upload"):
                upload = _upload_tab(service)
            if search is not None:
                from app.search_ui import search_tab

                with gr.Tab("Search with your image", elem_id="tab-search"):
                    gr.Markdown("Search this dataset's gallery with an image of your own (or one of its images).")
                    search_tab(search)
            with gr.Tab("Dataset", elem_id="tab-dataset"):
                dataset = _dataset_tab(service)
        _wire_rankings(service, rankings, why, demo)
        if not built_ready:
            _wire_summary(service, demo, model_line, rankings, dataset)
        _wire_upload(service, upload)
        _api_endpoints(service)
    return demo
