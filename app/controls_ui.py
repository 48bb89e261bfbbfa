"""The ranking controls: which ranking the Rankings, Why and Dataset tabs show (layout and its small handlers).

A named ranking (``feature``, ``paper``, the checkpoint's ``tuned`` pair; :mod:`app.presets`, paper
sec. 4) or any w and K. Picking a name sets w and K; moving w or K selects the name the result
equals (none for a custom pair; the line below says ``custom``). The tabs re-rank from ``(w, K)``;
the logic is in the service.
"""
from __future__ import annotations

from dataclasses import dataclass

import app.offline  # noqa: F401  (before gradio)
import gradio as gr

from app import presets
from app.core import RankingSpec, topk_to_json
from app.service import AppService
from app.widgets import PRIVATE, or_cleared, user_errors

K_CHOICES = ("5", "10", "20", "50", "100", "200", "all")
MAX_SLIDER_WEIGHT = 3.0
"""The slider's range (the API takes w up to :data:`app.presets.MAX_WEIGHT`)."""


def _k_text(spec: RankingSpec) -> str:
    return str(topk_to_json(spec.topk))


def explain_text(service: AppService, spec: RankingSpec) -> str:
    """The line under the controls: what the chosen ranking is."""
    k = presets.effective_topk(service.state, spec.topk)
    if spec.attention_weight == 0:
        what = "w = 0 ranks by d_f alone (the feature ranking); d_a is still shown"
    else:
        what = f"d = norm(d_f) + {spec.attention_weight:g}·norm(d_a) on the top {k} by d_f, the rest in d_f order"
    return f"**{presets.describe(service.state, spec)}**: {what}."


def _radio_value(spec: RankingSpec) -> str | None:
    """The radio's selection for ``spec``: its name, or none for a custom (w, K)."""
    return None if spec.name == presets.CUSTOM else spec.name


@dataclass
class RankingControls:
    """Radio of named rankings, the w slider, the K box, and a line saying what the choice means."""

    box: gr.Group
    preset: gr.Radio
    weight: gr.Slider
    topk: gr.Dropdown
    note: gr.Markdown

    @classmethod
    def build(cls, service: AppService) -> "RankingControls":
        state = service.state
        default = presets.default_spec(state)
        options = [c for c in presets.choices(state) if c.name != presets.CUSTOM]
        with gr.Group(elem_id="ranking-controls") as box:
            with gr.Row(equal_height=True):
                preset = gr.Radio([(c.label, c.name) for c in options], value=_radio_value(default),
                                  label="ranking (Rankings, Why and Dataset tabs)", elem_id="ranking-preset", scale=5)
                weight = gr.Slider(0.0, MAX_SLIDER_WEIGHT, value=float(default.attention_weight), step=0.05,
                                   label="attention weight w", elem_id="ranking-weight", scale=3, min_width=200)
                choices_k = list(K_CHOICES) if _k_text(default) in K_CHOICES else [_k_text(default), *K_CHOICES]
                topk = gr.Dropdown(choices_k, value=_k_text(default), allow_custom_value=True,
                                   label="re-ranking depth K", elem_id="ranking-topk", scale=1, min_width=110)
            note = gr.Markdown(explain_text(service, default), elem_id="ranking-note", elem_classes=["compact-note"])
        return cls(box, preset, weight, topk, note)

    @property
    def inputs(self) -> list:
        """What a re-ranking handler reads: ``(w, K)``."""
        return [self.weight, self.topk]

    def wire(self, service: AppService, refresh) -> None:
        """Picking a name sets w and K; then (and after w or K is changed by hand) ``refresh(event)`` chains the
        tabs' updates. The radio and the note follow what w and K name."""
        def pick(name: str):
            spec = user_errors(presets.preset, service.state, name)
            return float(spec.attention_weight), _k_text(spec)

        def named(weight, topk):
            spec = user_errors(service.spec, weight, topk)
            return _radio_value(spec), explain_text(service, spec)

        # the first link of every re-ranking: the one that says (once) when w or K cannot be used
        named = or_cleared(named, lambda message: (None, message), toast=True)

        picked = self.preset.input(pick, self.preset, [self.weight, self.topk], **PRIVATE)
        # "input" (the user's changes only: a picked name setting w and K does not fire it), the last of a drag
        moved = self.weight.input(lambda *a: None, None, None, trigger_mode="always_last", **PRIVATE)
        typed = self.topk.input(lambda *a: None, None, None, trigger_mode="always_last", **PRIVATE)
        for event in (picked, moved, typed):
            refresh(event.then(named, self.inputs, [self.preset, self.note], **PRIVATE))
