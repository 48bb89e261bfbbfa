"""The *Dataset* tab: rank-1 / rank-5 / rank-10 / mAP / mINP and CMC of the chosen ranking beside the
feature ranking (and the app's default one), the model and its settings, and how w was chosen.

Layout and one handler; the numbers are :class:`app.summaries.Summaries`' (paper sec. 4, scored as
``casn eval`` scores them).
"""
from __future__ import annotations

from dataclasses import dataclass

import app.offline  # noqa: F401  (before gradio)
import gradio as gr

from app import markdown, plots, presets
from app.service import AppService
from app.widgets import or_cleared, picture, user_errors


def tuning_plot(service: AppService):
    """The checkpoint's stored validation curve (``casn tune``), or None."""
    ranking = service.state.payload.get("ranking") or {}
    tuned = presets.tuned_spec(service.state)
    chosen = None if tuned is None else (tuned.attention_weight, "all" if tuned.topk is None else tuned.topk)
    return plots.tuning_figure(ranking.get("curve") or [], chosen)


def dataset_values(service: AppService, weight, topk) -> tuple[str, object]:
    """The summary table and the CMC plot of the ranking ``(w, K)``."""
    spec = user_errors(service.spec, weight, topk)
    summary = user_errors(service.summaries.get, spec)
    state = service.state
    label = presets.describe(state, spec)
    others = ()
    if not presets.is_default(state, spec) and service.summary_ready:
        others = ((f"{presets.describe(state, presets.default_spec(state))} (the app's default)", service.summary),)
    return markdown.summary_markdown(summary, label, others), plots.cmc_figure(summary, label)


@dataclass
class DatasetTab:
    text: gr.Markdown
    plot: gr.Image

    @classmethod
    def build(cls, service: AppService) -> "DatasetTab":
        summary = service.summary_if_ready()
        state = service.state
        label = presets.describe(state, presets.default_spec(state))
        with gr.Row(equal_height=False):
            with gr.Column():
                text = gr.Markdown(markdown.summary_markdown(summary, label), elem_id="dataset-summary",
                                   elem_classes=["casn-table"])
                gr.Markdown(markdown.model_info(state), elem_id="model-info", elem_classes=["casn-info"])
            with gr.Column():
                plot = picture("cmc-plot", "CMC curve",
                               value=None if summary is None else plots.cmc_figure(summary, label))
                curve = tuning_plot(service)
                if curve is not None:
                    picture("tuning-plot", "validation curve of w", value=curve)
        return cls(text, plot)

    @property
    def outputs(self) -> list:
        return [self.text, self.plot]

    def show_step(self, service: AppService, controls_inputs: list) -> tuple:
        show = or_cleared(lambda weight, topk: dataset_values(service, weight, topk),
                          lambda message: (message, None))
        return (show, controls_inputs, self.outputs)
