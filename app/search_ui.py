"""The search views (layout only; the logic is :class:`app.search.SearchService`).

Used as the whole page of ``python app.py --gallery DIR`` (unlabelled mode) and as the *Search with
your image* tab in labelled mode. Endpoints (stable names):

- ``/search_upload(file, topk)`` -> the JSON of ``casn search`` for an uploaded query, each result's
  gallery path (relative to the folder) under ``"name"``
- ``/explain_search(query_file, gallery_name)`` -> explanation JSON (Siamese attention and the
  similarity decomposition) of an uploaded query and a gallery image (name relative to the folder)
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import app.offline  # noqa: F401  (before gradio)
import gradio as gr

from app.search import MAX_TOPK, SearchService
from app.service import MAX_PICKER
from app.widgets import (
    CSS, PRIVATE, CorrespondencePanel, PairPanel, gallery, scroll_js, selected, user_errors,
)

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
    query_preview: gr.Image
    strip: gr.Gallery
    distances: gr.Image
    pair: PairPanel
    correspondence: CorrespondencePanel
    query_ref: gr.State
    pair_ref: gr.State


def _search_panel(service: SearchService) -> SearchPanel:
    threshold = service.no_match
    with gr.Row(equal_height=False):
        with gr.Column(scale=2, min_width=300):
            gr.Markdown("### 1. Your query: upload an image, or click a gallery image")
            upload = gr.File(label="query image", type="filepath", elem_id="search-upload", height=110)
            images = service.index.images[:MAX_PICKER]
            gr.Markdown("or pick a gallery image", elem_classes=["compact-note"])
            picker = gallery("search-picker", "or pick a gallery image", 4, 320,
                             value=[(i.path, Path(i.relpath).name) for i in images])
            topk = gr.Slider(1, min(MAX_TOPK, len(service.index)), value=min(10, len(service.index)), step=1,
                             label="results shown", elem_id="search-topk")
            no_match = gr.Slider(0.0, 2.0, value=threshold.value, step=0.01,
                                 label="no-match threshold on the feature distance d_f",
                                 info=f"default {threshold.value:.2f}: the {threshold.source}",
                                 elem_id="search-threshold")
            button = gr.Button("Search", variant="primary", elem_id="search-button")
        with gr.Column(scale=5):
            with gr.Row(equal_height=False):
                query_preview = gr.Image(label="query", type="numpy", format="png", interactive=False, height=200,
                                         elem_id="search-query-preview", buttons=[], scale=1, min_width=110)
                with gr.Column(scale=5):
                    status = gr.Markdown(elem_id="search-status")
            gr.Markdown("2. Ranked gallery: click an image to explain the pair", elem_classes=["casn-heading"])
            strip = gallery("search-strip", "ranked gallery", 10, 215)
            distances = gr.Image(label="where the threshold falls on this query's distances to the gallery",
                                 show_label=False, type="numpy", format="png", interactive=False,
                                 elem_id="search-distances", buttons=["fullscreen"])
            gr.Markdown("### 3. Explain the pair", elem_id="search-explain-heading")
            pair = PairPanel.build("search-pair")
            correspondence = CorrespondencePanel.build("search-corr")
    return SearchPanel(upload, picker, topk, no_match, button, status, query_preview, strip, distances, pair,
                       correspondence, gr.State(None), gr.State(None))


def _wire_search(service: SearchService, panel: SearchPanel) -> None:
    search_outputs = [panel.status, panel.query_preview, panel.strip, panel.distances, panel.query_ref,
                      panel.pair.numbers]

    def run(ref, topk, no_match):
        if ref is None:
            raise gr.Error("upload a query image or click a gallery image first")
        view = user_errors(service.search_view, ref[0], ref[1], topk, no_match)
        return (view.markdown, view.query_preview, view.strip, view.distances_plot, view.query_ref,
                "*click a result to explain it*")

    def cleared(message: str) -> list:
        return [f'<span style="color:#d72626">**Refused:** {message}</span>', None, [], None, None, ""]

    def from_upload(file, topk, no_match):
        if file is None:
            return [gr.update()] * len(search_outputs)  # the upload was cleared: nothing to search
        try:
            return run(("upload", file), topk, no_match)
        except gr.Error as exc:
            # a refused query clears the results of the last one, so they are not read as this query's
            gr.Warning(str(exc.message), title="Upload refused")
            return cleared(str(exc.message))

    def from_picker(topk, no_match, evt: gr.SelectData):
        return run(("gallery", service.index.images[selected(evt)].relpath), topk, no_match)

    def explain_result(ref, evt: gr.SelectData):
        if ref is None:
            raise gr.Error("search first")
        kind, value, shown = ref
        position = selected(evt)
        if not 0 <= position < len(shown):
            raise gr.Error("that result is no longer shown; search again")
        view = user_errors(service.pair_view, kind, value, shown[position])
        images = user_errors(service.shown_pair, kind, value, shown[position])
        return [*PairPanel.values(view), (kind, value, shown[position]), *images]

    inputs = [panel.topk, panel.no_match]
    panel.upload.upload(from_upload, [panel.upload, *inputs], search_outputs, **PRIVATE)
    panel.button.click(run, [panel.query_ref, *inputs], search_outputs, **PRIVATE)
    for slider in (panel.no_match, panel.topk):  # a changed setting re-runs the search shown
        slider.release(lambda ref, *args: run(ref, *args) if ref is not None else [gr.update()] * len(search_outputs),
                       [panel.query_ref, *inputs], search_outputs, **PRIVATE)
    panel.picker.select(from_picker, inputs, search_outputs, **PRIVATE)
    (panel.strip.select(explain_result, panel.query_ref,
                        [*panel.pair.outputs, panel.pair_ref, panel.correspondence.query, panel.correspondence.gallery],
                        **PRIVATE)
          .then(None, None, None, js=scroll_js("search-explain-heading"), **PRIVATE))

    def correspondence(ref, x, y, direction):
        view = service.correspondence_view(*ref, x, y, direction)
        return view.query_image, view.gallery_image, view.markdown

    panel.correspondence.wire(correspondence, panel.pair_ref)


def search_endpoints(service: SearchService, panel: SearchPanel) -> None:
    """``/search_upload`` and ``/explain_search``: file inputs, so hidden buttons carry them."""
    name = gr.Textbox(visible=False)
    search_button, explain_button, answer = gr.Button(visible=False), gr.Button(visible=False), gr.JSON(visible=False)

    def search_upload(file, topk) -> dict:
        return user_errors(service.api_search_upload, file, topk)

    def explain_search(query_file, gallery_name) -> dict:
        return user_errors(service.api_explain_search, query_file, gallery_name)

    search_button.click(search_upload, [panel.upload, panel.topk], answer, api_name="search_upload",
                        api_description="Rank the gallery for an uploaded query (the JSON of `casn search`, each "
                                        "result's gallery path under 'name').")
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
                    + f". Model `{index.checkpoint.name}` ({index.info.backbone}, input {index.info.input_size[1]} x "
                    f"{index.info.input_size[0]}, width x height).", elem_id="search-folder")
        gr.Markdown(f"⚠ {skipped}" if skipped else "No file was skipped.", elem_id="search-skipped")
        if not service.labelled:
            gr.Markdown(UNLABELLED_NOTE, elem_id="metrics-hidden")
        search_tab(service)
    return demo


__all__ = ["CSS", "build_search_ui", "search_tab"]
