"""The *Rankings* tab: query picker, the ranked strip (paged), the pair explanation and its correspondence.

Layout and the handlers of its own controls; the logic is :class:`app.service.AppService`. The page
(:mod:`app.ui`) chains :meth:`RankingsTab.query_steps` after anything that changes the query or the
ranking.
"""
from __future__ import annotations

from dataclasses import dataclass

import app.offline  # noqa: F401  (before gradio)
import gradio as gr

from app import presets
from app.service import SORTS, AppService
from app.views import PairRef
from app.widgets import (
    CORRESPONDENCE_NOTE, PRIVATE, CorrespondencePanel, ExportControls, PairPanel, gallery, or_cleared, scroll_js,
    selected, user_errors,
)

Step = tuple  # (fn, inputs, outputs): one link of an event chain


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
    strip_note: gr.Markdown
    strip: gr.Gallery
    page_text: gr.Markdown
    buttons: tuple[gr.Button, gr.Button, gr.Button]
    table: gr.Markdown
    pair: PairPanel
    correspondence: CorrespondencePanel
    export: ExportControls
    pair_ref: gr.State
    page: gr.State
    previous: gr.State

    @classmethod
    def build(cls, service: AppService) -> "RankingsTab":
        state = service.state
        with gr.Row(equal_height=False):
            with gr.Column(scale=2, min_width=300):
                gr.Markdown("### 1. Pick a query")
                with gr.Row():
                    failures = gr.Checkbox(label="failures only (rank-1 wrong)", value=False, elem_id="failures-only")
                    sort = gr.Dropdown(list(SORTS), value=SORTS[0], label="sort", elem_id="sort-by")
                items, note = service.picker(False, SORTS[0], wait=False)
                gr.Markdown("queries: click one (caption: ✓ rank-1 right, ✗n first true match at rank n; AP)",
                            elem_classes=["compact-note"])
                picker = gallery("query-gallery", "queries: click one", 4, 520, value=items)
                picker_note = gr.Markdown(note, elem_id="picker-note")
                with gr.Row():
                    query_index = gr.Number(value=service.first_failure(wait=False), precision=0, minimum=0,
                                            maximum=len(state.query) - 1, label="query index", elem_id="query-index",
                                            scale=2)
                    rank_button = gr.Button("Rank", variant="primary", elem_id="rank-button", scale=1)
            with gr.Column(scale=5):
                with gr.Row(equal_height=False):
                    query_image = gr.Image(label="query", show_label=False, type="numpy", format="png",
                                           interactive=False, height=170, elem_id="query-image", scale=1,
                                           min_width=110, buttons=[])
                    with gr.Column(scale=5):
                        query_info = gr.Markdown(elem_id="query-info", elem_classes=["casn-table"])
                gr.Markdown("2. Ranked gallery: click an image to explain the pair (green frame = true match, red = "
                            "wrong identity)", elem_classes=["casn-heading"])
                strip_note = gr.Markdown(elem_id="strip-note", elem_classes=["compact-note"])
                strip = gallery("ranked-strip", "ranked gallery", service.strip_length, 215)
                with gr.Row(equal_height=True):
                    previous_button = gr.Button("◀ previous 10", size="sm", elem_id="strip-previous", scale=1)
                    page_text = gr.Markdown(elem_id="strip-page", elem_classes=["compact-note"])
                    next_button = gr.Button("next 10 ▶", size="sm", elem_id="strip-next", scale=1)
                    first_true = gr.Button("jump to the first true match", size="sm", elem_id="strip-first-true",
                                           scale=2)
                with gr.Accordion("ranking table: distances and score parts of this page", open=False):
                    table = gr.Markdown(elem_id="ranking-table", elem_classes=["casn-table"])
                gr.Markdown("### 3. Explain the pair", elem_id="explain-heading")
                pair = PairPanel.build("pair")
                correspondence = CorrespondencePanel.build("corr")
                export = ExportControls.build("export")
        return cls(failures, sort, picker, picker_note, query_index, rank_button, query_image, query_info, strip_note,
                   strip, page_text, (previous_button, next_button, first_true), table, pair, correspondence, export,
                   gr.State(None), gr.State(0), gr.State(None))

    # ---- what a new query or ranking re-draws ------------------------------------------------------------
    @property
    def query_outputs(self) -> list:
        return [self.query_image, self.query_info, self.strip_note, self.strip, self.page_text, self.table, self.page,
                self.previous]

    @property
    def pair_outputs(self) -> list:
        return [*self.pair.outputs, self.export.button, self.pair_ref, self.correspondence.query,
                self.correspondence.gallery, self.correspondence.info]

    def show_query(self, service: AppService):
        """``(query, w, K, page, previous) -> query outputs``: one page of the strip under the chosen ranking."""
        def show(query_index, weight, topk, page, previous):
            spec = user_errors(service.spec, weight, topk)
            view = user_errors(service.query_view, query_index, spec, page, previous)
            shown = view.page
            remember = (view.ranking.query_index, presets.describe(service.state, view.ranking.ranking),
                        view.ranking.first_true_rank)
            return (view.thumbnail, view.markdown, shown.note, gr.update(value=view.strip, selected_index=None),
                    f"**{shown.range_text}** (page {shown.page + 1} of {shown.pages})", view.table, shown.page, remember)
        return or_cleared(show, lambda message: (None, message, "", [], "", "", 0, None))

    def show_pair_at(self, service: AppService):
        """``(query, w, K, position) -> pair outputs``: the pair at 0-based ``position`` of the ranking."""
        def show(query_index, weight, topk, position: int = 0):
            spec = user_errors(service.spec, weight, topk)
            gallery_index = user_errors(service.gallery_at, query_index, position, spec)
            view, ref = user_errors(service.pair_view, query_index, gallery_index, spec)
            shown = user_errors(service.shown_pair, ref.query_index, ref.gallery_index)
            return [*PairPanel.values(view), gr.update(interactive=True), ref, *shown, CORRESPONDENCE_NOTE]
        return or_cleared(show, lambda message: [*PairPanel.values(None, message), gr.update(interactive=False), None,
                                                 None, None, CORRESPONDENCE_NOTE])

    def query_steps(self, service: AppService, controls_inputs: list, page_value=0) -> list[Step]:
        """The links a new query or ranking chains: the strip (page 0) and the rank-1 pair."""
        show = self.show_query(service)

        def first_page(query_index, weight, topk, previous):
            return show(query_index, weight, topk, page_value, previous)

        return [(first_page, [self.query_index, *controls_inputs, self.previous], self.query_outputs),
                (self.show_pair_at(service), [self.query_index, *controls_inputs], self.pair_outputs)]

    def picker_step(self, service: AppService, controls_inputs: list) -> Step:
        """The picker's thumbnails and captions under the chosen ranking, the current query highlighted."""
        def refresh(failures_only, sort, query_index, weight, topk):
            spec = user_errors(service.spec, weight, topk)
            items, note = user_errors(service.picker, failures_only, sort, True, spec)
            position = user_errors(service.picker_position, failures_only, sort, query_index, spec)
            return gr.update(value=items, selected_index=position), note
        refresh = or_cleared(refresh, lambda message: (gr.update(), message))  # the picker stays; its note says why
        return (refresh, [self.failures, self.sort, self.query_index, *controls_inputs], [self.picker, self.picker_note])

    def highlight_step(self, service: AppService, controls_inputs: list) -> Step:
        """Only the highlight of the current query in the picker (its thumbnails unchanged)."""
        def highlight(failures_only, sort, query_index, weight, topk):
            spec = user_errors(service.spec, weight, topk)
            if not service.summaries.ready(spec) and (failures_only or sort != SORTS[0]):
                return gr.update()
            return gr.update(selected_index=user_errors(service.picker_position, failures_only, sort, query_index,
                                                        spec))
        highlight = or_cleared(highlight, lambda message: gr.update())
        return (highlight, [self.failures, self.sort, self.query_index, *controls_inputs], self.picker)

    # ---- its own controls --------------------------------------------------------------------------------
    def wire(self, service: AppService, controls_inputs: list, on_query) -> None:
        """Paging, picking, strip clicks (the explanation scrolls into view), correspondence and export;
        ``on_query(event)`` chains what a new query re-draws (the page's, across tabs)."""
        show = self.show_query(service)
        show_pair = self.show_pair_at(service)
        previous_button, next_button, first_true = self.buttons
        for button, move in ((previous_button, -1), (next_button, 1)):
            button.click(lambda q, w, k, page, prev, move=move: show(q, w, k, int(page or 0) + move, prev),
                         [self.query_index, *controls_inputs, self.page, self.previous], self.query_outputs,
                         **PRIVATE)
        first_true.click(lambda q, w, k, prev: show(q, w, k, "first true", prev),
                         [self.query_index, *controls_inputs, self.previous], self.query_outputs, **PRIVATE)

        def strip_pick(query_index, weight, topk, page, evt: gr.SelectData):
            return show_pair(query_index, weight, topk, int(page or 0) * service.strip_length + selected(evt))

        (self.strip.select(strip_pick, [self.query_index, *controls_inputs, self.page], self.pair_outputs, **PRIVATE)
             .then(None, None, None, js=scroll_js("explain-heading"), **PRIVATE))

        def pick(failures_only, sort, weight, topk, evt: gr.SelectData):
            spec = user_errors(service.spec, weight, topk)
            return user_errors(service.picked_query, failures_only, sort, selected(evt), spec)

        def same(value):
            return value

        picker_step = self.picker_step(service, controls_inputs)
        for control in (self.failures, self.sort):
            control.change(*picker_step, **PRIVATE)
        on_query(self.picker.select(pick, [self.failures, self.sort, *controls_inputs], self.query_index, **PRIVATE))
        on_query(self.rank_button.click(same, self.query_index, self.query_index, **PRIVATE))
        on_query(self.query_index.submit(same, self.query_index, self.query_index, **PRIVATE))

        def correspondence(ref: PairRef, x, y, direction):
            view = service.correspondence_view(ref.query_index, ref.gallery_index, x, y, direction)
            return view.query_image, view.gallery_image, view.markdown

        self.correspondence.wire(correspondence, self.pair_ref)
        self.export.wire(service.export, self.pair_ref)
