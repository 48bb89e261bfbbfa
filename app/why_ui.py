"""The *Why did a wrong match rank first?* tab (paper fig. 8a): its failure picker, the verdict, the
contrastive map over the query beside the wrong and the true match, and both pair explanations.

Layout and its own handlers; the logic is :meth:`app.service.AppService.why_view`. It follows the
query of the *Rankings* tab; a click in its failure picker sets that query (and the page re-draws both).
"""
from __future__ import annotations

from dataclasses import dataclass

import app.offline  # noqa: F401  (before gradio)
import gradio as gr

from app import markdown
from app.service import AppService
from app.widgets import PRIVATE, PairPanel, gallery, or_cleared, picture, selected, user_errors

INTRO = ("The paper's figure 8a for the query of the *Rankings* tab (or one picked here): the query against its "
         "**rank-1 wrong match** and against its **best-ranked true match**, under the ranking chosen above.")


@dataclass
class WhyTab:
    failures: gr.Gallery
    failures_note: gr.Markdown
    message: gr.Markdown
    verdict: gr.Markdown
    contrastive_text: gr.Markdown
    contrastive: gr.Image
    wrong: PairPanel
    true: PairPanel

    @classmethod
    def build(cls) -> "WhyTab":
        gr.Markdown(INTRO)
        with gr.Row(equal_height=False):
            with gr.Column(scale=2, min_width=300):
                gr.Markdown("### Failures (rank-1 wrong), worst AP first")
                gr.Markdown("click one: it becomes the query of both tabs", elem_classes=["compact-note"])
                failures = gallery("why-failures", "failures: click one", 4, 420)
                failures_note = gr.Markdown(elem_id="why-failures-note", elem_classes=["compact-note"])
            with gr.Column(scale=5):
                message = gr.Markdown(elem_id="why-info")
                verdict = gr.Markdown(elem_id="why-verdict")
                with gr.Row(equal_height=False):
                    with gr.Column(scale=3):
                        contrastive = picture("why-contrastive", "contrastive similarity map")
                    with gr.Column(scale=2):
                        contrastive_text = gr.Markdown(elem_id="why-contrastive-info")
                gr.Markdown("#### query vs rank-1 (wrong)")
                wrong = PairPanel.build("why-wrong")
                gr.Markdown("#### query vs best-ranked true match")
                true = PairPanel.build("why-true")
        return cls(failures, failures_note, message, verdict, contrastive_text, contrastive, wrong, true)

    @property
    def outputs(self) -> list:
        return [self.message, self.verdict, self.contrastive_text, self.contrastive, *self.wrong.outputs,
                *self.true.outputs]

    def show_step(self, service: AppService, query_index: gr.Number, controls_inputs: list) -> tuple:
        """The link that re-draws the tab for the current query and ranking."""
        def show(query, weight, topk):
            spec = user_errors(service.spec, weight, topk)
            view = user_errors(service.why_view, query, spec)
            found = view.verdict
            verdict = ("" if found is None else
                       f"{found.ranked_by}\n\n{found.favours}\n\n{found.attention}")
            return [view.message, verdict, view.contrastive_text,
                    gr.update(value=view.contrastive, visible=view.contrastive is not None),
                    *PairPanel.values(view.wrong, "*(no wrong match at rank 1)*"), *PairPanel.values(view.true)]

        def blank(message: str) -> list:
            return [message, "", "", gr.update(value=None, visible=False), *PairPanel.values(None, ""),
                    *PairPanel.values(None, "")]
        return (or_cleared(show, blank), [query_index, *controls_inputs], self.outputs)

    def failures_step(self, service: AppService, query_index: gr.Number, controls_inputs: list) -> tuple:
        """The link that lists the failures of the chosen ranking, the current query highlighted."""
        def listed(query, weight, topk):
            spec = user_errors(service.spec, weight, topk)
            stats, fallback = user_errors(service.stats, spec)
            indices = user_errors(service.failures, spec)
            shown = indices[:240]
            items = [(service.state.query.paths[i], markdown.query_caption(i, stats[i])) for i in shown]
            position = shown.index(int(query)) if query is not None and int(query) in shown else None
            note = f"{len(indices)} of {len(stats)} queries fail at rank 1 under this ranking. {fallback}".strip()
            return gr.update(value=items, selected_index=position), note
        listed = or_cleared(listed, lambda message: ([], message))
        return (listed, [query_index, *controls_inputs], [self.failures, self.failures_note])

    def wire(self, service: AppService, query_index: gr.Number, controls_inputs: list, on_query) -> None:
        """A click in the failure picker sets the query; ``on_query(event)`` re-draws what depends on it."""
        def pick(weight, topk, evt: gr.SelectData):
            spec = user_errors(service.spec, weight, topk)
            indices = user_errors(service.failures, spec)
            position = selected(evt)
            if not 0 <= position < len(indices):
                raise gr.Error("that query is no longer listed; pick again")
            return indices[position]

        on_query(self.failures.select(pick, controls_inputs, query_index, **PRIVATE))
