"""The search views (layout only; the logic is :class:`app.search.SearchService`).

Used as the whole page of ``python app.py --gallery DIR`` (unlabelled mode) and as the *Search with
your image* tab in labelled mode. Endpoints (stable names):

- ``/search_upload(file, topk)`` -> the JSON of ``casn search`` for an uploaded query
- ``/explain_search(query_file, gallery_name)`` -> explanation JSON (Siamese attention and the
  similarity decomposition) of an uploaded query and a gallery image (name relative to the folder)
"""
from __future__ import annotations

from dataclasses import dataclass

import app.offline  # noqa: F401  (before gradio)
import gradio as gr

from app.search import DEFAULT_NO_MATCH, MAX_TOPK, SearchService
from app.service import MAX_PICKER
from app.ui import CSS, PRIVATE, PairPanel, user_errors


UNLABELLED_NOTE = ("**Metrics views are hidden**: the images in this folder carry no identity labels, so rank-1, "
                   "mAP and CMC cannot be computed (files named like Market-1501, `0001_c1s1_000151_00.jpg`, "
                   "give labels; matches are then framed green and wrong identities red).")


@dataclass
class SearchPanel:
    upload: gr.File
    picker: gr.Gallery
    topk: gr.Slider
    no_match: gr.Slider
    button: gr.Button
    status: gr.Markdown
    strip: gr.Gallery
    distances: gr.Image
    pair: PairPanel
    query_ref: gr.State


def _search_panel(service: SearchService) -> SearchPanel:
    with gr.Row(equal_height=False):
        with gr.Column(scale=2, min_width=280):
            gr.Markdown("### 1. Your query: upload an image, or click a gallery image")
            upload = gr.File(label="query image", type="filepath", elem_id="search-upload", height=120)
            images = service.index.images[:MAX_PICKER]
            picker = gr.Gallery(value=[(i.path, i.relpath) for i in images], label="or pick a gallery image",
                                columns=4, height=320, allow_preview=False, object_fit="contain",
                                elem_id="search-picker", format="png")
            topk = gr.Slider(1, min(MAX_TOPK, len(service.index)), value=min(10, len(service.index)), step=1,
                             label="results shown", elem_id="search-topk")
            no_match = gr.Slider(0.0, 2.0, value=DEFAULT_NO_MATCH, step=0.01,
                                 label="no-match threshold on the feature distance d_f", elem_id="search-threshold")
            button = gr.Button("Search", variant="primary", elem_id="search-button")
        with gr.Column(scale=5):
            status = gr.Markdown(elem_id="search-status")
            strip = gr.Gallery(label="2. Ranked gallery: click an image to explain the pair", columns=10, height=190,
                               allow_preview=False, object_fit="contain", elem_id="search-strip", format="png")
            distances = gr.Image(label="where the threshold falls on this query's distances to the gallery",
                                 type="numpy", format="png", interactive=False, elem_id="search-distances",
                                 buttons=["fullscreen"])
            gr.Markdown("### 3. Explain the pair")
            pair = PairPanel.build("search-pair")
    return SearchPanel(upload, picker, topk, no_match, button, status, strip, distances, pair, gr.State(None))


def _wire_search(service: SearchService, panel: SearchPanel) -> None:
    search_outputs = [panel.status, panel.strip, panel.distances, panel.query_ref, panel.pair.numbers]

    def run(ref, topk, no_match):
        if ref is None:
            raise gr.Error("upload a query image or click a gallery image first")
        view = user_errors(service.search_view, ref[0], ref[1], topk, no_match)
        return view.markdown, view.strip, view.distances_plot, view.query_ref, "*click a result to explain it*"

    def from_upload(file, topk, no_match):
        if file is None:
            raise gr.Error("no query image uploaded")
        return run(("upload", file), topk, no_match)

    def from_picker(topk, no_match, evt: gr.SelectData):
        position = int(evt.index if isinstance(evt.index, int) else evt.index[0])
        return run(("gallery", service.index.images[position].relpath), topk, no_match)

    def explain_result(ref, evt: gr.SelectData):
        if ref is None:
            raise gr.Error("search first")
        kind, value, shown = ref
        position = int(evt.index if isinstance(evt.index, int) else evt.index[0])
        if not 0 <= position < len(shown):
            raise gr.Error("that result is no longer shown; search again")
        view = user_errors(service.pair_view, kind, value, shown[position])
        return PairPanel.values(view)

    inputs = [panel.topk, panel.no_match]
    panel.upload.upload(from_upload, [panel.upload, *inputs], search_outputs, **PRIVATE)
    panel.button.click(run, [panel.query_ref, *inputs], search_outputs, **PRIVATE)
    panel.no_match.release(run, [panel.query_ref, *inputs], search_outputs, **PRIVATE)
    panel.picker.select(from_picker, inputs, search_outputs, **PRIVATE)
    panel.strip.select(explain_result, panel.query_ref, panel.pair.outputs, **PRIVATE)


def search_endpoints(service: SearchService, panel: SearchPanel) -> None:
    """``/search_upload`` and ``/explain_search``: file inputs, so hidden buttons carry them."""
    name = gr.Textbox(visible=False)
    search_button, explain_button, answer = gr.Button(visible=False), gr.Button(visible=False), gr.JSON(visible=False)

    def search_upload(file, topk) -> dict:
        return user_errors(service.api_search_upload, file, topk)

    def explain_search(query_file, gallery_name) -> dict:
        return user_errors(service.api_explain_search, query_file, gallery_name)

    search_button.click(search_upload, [panel.upload, panel.topk], answer, api_name="search_upload",
                        api_description="Rank the gallery for an uploaded query (the JSON of `casn search`).")
    explain_button.click(explain_search, [panel.upload, name], answer, api_name="explain_search",
                         api_description="Explain an uploaded query against a gallery image (name relative to "
                                         "the gallery folder).")


def search_tab(service: SearchService) -> None:
    """The search views and their endpoints, inside the caller's layout."""
    panel = _search_panel(service)
    _wire_search(service, panel)
    search_endpoints(service, panel)


def build_search_ui(service: SearchService) -> gr.Blocks:
    """The page of unlabelled mode: any folder of images, searched with an upload or one of its images."""
    index = service.index
    with gr.Blocks(title="CASN search", analytics_enabled=False, delete_cache=(3600, 3600)) as demo:
        gr.Markdown("# CASN search: find a person in a folder of crops, and see why each result ranks there",
                    elem_id="header")
        skipped = index.report.skipped_text()
        gr.Markdown(f"Folder `{index.folder.name}`: **{len(index)}** images searched"
                    + (f" ({service.labelled} with Market-style labels)" if service.labelled else "")
                    + f". Model `{index.checkpoint.name}` ({index.info.backbone}, input {index.info.input_size[0]}x"
                    f"{index.info.input_size[1]}).", elem_id="search-folder")
        gr.Markdown(f"⚠ {skipped}" if skipped else "No file was skipped.", elem_id="search-skipped")
        if not service.labelled:
            gr.Markdown(UNLABELLED_NOTE, elem_id="metrics-hidden")
        search_tab(service)
    return demo


__all__ = ["CSS", "build_search_ui", "search_tab"]
