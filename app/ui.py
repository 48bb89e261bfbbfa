"""The Gradio page: the header, the ranking controls, the tabs, and the events that tie them together.

Composition only: each tab is its own module (:mod:`app.rankings_ui`, :mod:`app.why_ui`,
:mod:`app.upload_ui`, :mod:`app.search_ui`, :mod:`app.dataset_ui`) over the shared pieces of
:mod:`app.widgets`; the JSON endpoints are :mod:`app.api`; the logic is
:class:`app.service.AppService`. Imports go one way: this module imports the tabs, none imports it.

What re-draws what: a new query (picker, index box, the Why tab's failure picker, page load)
re-draws the strip and its first pair, the picker's highlight and the Why tab; a new ranking (the
controls above the tabs) re-draws those and then the pickers' captions and the Dataset tab.
"""
from __future__ import annotations

import app.offline  # noqa: F401  (before gradio)
import gradio as gr

from app import api, markdown, presets
from app.controls_ui import RankingControls
from app.dataset_ui import DatasetTab
from app.rankings_ui import RankingsTab
from app.search_ui import search_tab
from app.service import AppService
from app.upload_ui import UploadTab
from app.why_ui import WhyTab
from app.widgets import CSS, PRIVATE

__all__ = ["CSS", "build_ui"]



def _chain(event, steps: list) -> None:
    for fn, inputs, outputs in steps:
        event = event.then(fn, inputs, outputs, **PRIVATE)


def build_ui(service: AppService, search=None) -> gr.Blocks:
    """The page: header, ranking controls, the tabs, their events and the API endpoints; ``search`` (an
    :class:`app.search.SearchService` over the dataset's gallery) adds the *Search with your image* tab."""
    state = service.state
    with gr.Blocks(title="CASN explainability", analytics_enabled=False, delete_cache=(3600, 3600)) as demo:
        described = presets.describe(state, presets.default_spec(state))
        with gr.Row(equal_height=False):
            gr.Markdown(markdown.INTRO, elem_id="header", scale=3)
            with gr.Column(scale=1, min_width=280):
                with gr.Accordion("model and settings", open=False, elem_id="model-box"):
                    model_line = gr.Markdown(markdown.model_line(state, service.summary_if_ready(), described),
                                             elem_id="model-line")
                    gr.Markdown(markdown.model_info(state), elem_classes=["casn-info"])
        controls = RankingControls.build(service)
        with gr.Tabs():
            with gr.Tab("Rankings", elem_id="tab-rankings") as rankings_tab:
                rankings = RankingsTab.build(service)
            with gr.Tab("Why did a wrong match rank first?", elem_id="tab-why") as why_tab:
                why = WhyTab.build()
            with gr.Tab("Upload a pair", elem_id="tab-upload") as upload_tab:
                upload = UploadTab.build(service)
            search_page = None
            if search is not None:
                with gr.Tab("Search with your image", elem_id="tab-search") as search_page:
                    gr.Markdown("Search this dataset's gallery with an image of your own (or one of its images).")
                    search_tab(search)
            with gr.Tab("Dataset", elem_id="tab-dataset") as dataset_tab:
                dataset = DatasetTab.build(service)
        _wire(service, demo, controls, rankings, why, dataset, model_line)
        # the controls rank the Rankings, Why and Dataset tabs; elsewhere they would only be in the way
        for tab, visible in ((rankings_tab, True), (why_tab, True), (dataset_tab, True), (upload_tab, False),
                             (search_page, False)):
            if tab is not None:
                tab.select(lambda visible=visible: gr.update(visible=visible), None, controls.box, **PRIVATE)
        upload.wire(service)
        api.register(service)
    return demo


def _wire(service: AppService, demo: gr.Blocks, controls: RankingControls, rankings: RankingsTab, why: WhyTab,
          dataset: DatasetTab, model_line: gr.Markdown) -> None:
    inputs = controls.inputs
    query_steps = [*rankings.query_steps(service, inputs), rankings.highlight_step(service, inputs),
                   why.show_step(service, rankings.query_index, inputs),
                   why.failures_step(service, rankings.query_index, inputs)]
    ranking_steps = [*rankings.query_steps(service, inputs), why.show_step(service, rankings.query_index, inputs),
                     rankings.picker_step(service, inputs), why.failures_step(service, rankings.query_index, inputs),
                     dataset.show_step(service, inputs)]

    def on_query(event) -> None:
        _chain(event, query_steps)

    def on_ranking(event) -> None:
        _chain(event, ranking_steps)

    rankings.wire(service, inputs, on_query)
    why.wire(service, rankings.query_index, inputs, on_query)
    controls.wire(service, on_ranking)

    def initial(value):
        """The query a page opens on: the first failure once the summary is there."""
        return service.first_failure(wait=False) if service.summary_ready else value

    on_query(demo.load(initial, rankings.query_index, rankings.query_index, **PRIVATE))
    if not service.summary_ready:
        # the page was built before the background summary was there: each load fills in what needs it
        described = presets.describe(service.state, presets.default_spec(service.state))

        def fill():
            return markdown.model_line(service.state, service.summary, described)  # waits in a queue worker

        _chain(demo.load(fill, None, model_line, **PRIVATE),
               [rankings.picker_step(service, inputs), dataset.show_step(service, inputs)])
