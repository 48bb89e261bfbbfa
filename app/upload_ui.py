"""The *Upload a pair* tab: two images of your own (or a one-click example pair of generated people),
their previews, the pair explanation and its point correspondence.

Layout and its handlers; the logic is :meth:`app.service.AppService.upload_view`. A refused upload
clears what the request would have replaced and says why in the status line (and a toast); the
JSON endpoint ``/explain_upload`` answers such a request with an error instead.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import app.offline  # noqa: F401  (before gradio)
import gradio as gr

from app.service import AppService, ExplainError
from app.uploads import MIN_SIDE, UploadError, limit_text
from app.widgets import PRIVATE, CorrespondencePanel, ExportControls, PairPanel, scroll_js, user_errors

EXAMPLES = Path(__file__).resolve().parents[1] / "assets" / "examples"
"""Generated people (``casn_core.data.synth``, unseen identities) for the one-click example pairs."""
EXAMPLE_PAIRS = (("same_person_a.jpg", "same_person_b.jpg"),
                 ("lookalike_a.jpg", "lookalike_b.jpg"),
                 ("different_a.jpg", "different_b.jpg"))


def example_pairs() -> list[list[str]]:
    """The example pairs whose files are present (the page works without them)."""
    return [[str(EXAMPLES / a), str(EXAMPLES / b)] for a, b in EXAMPLE_PAIRS
            if (EXAMPLES / a).is_file() and (EXAMPLES / b).is_file()]


@dataclass
class UploadTab:
    file1: gr.File
    file2: gr.File
    button: gr.Button
    previews: tuple[gr.Image, gr.Image]
    status: gr.Markdown
    pair: PairPanel
    correspondence: CorrespondencePanel
    export: ExportControls
    pair_ref: gr.State

    @classmethod
    def build(cls, service: AppService) -> "UploadTab":
        with gr.Row(equal_height=False):
            with gr.Column(scale=2, min_width=300):
                gr.Markdown(f"Two images of your own: any size from {MIN_SIDE} x {MIN_SIDE} pixels (grayscale, RGBA, "
                            f"16-bit, CMYK; animated: first frame), at most **{limit_text(service.max_upload_bytes)}** "
                            f"and 25 megapixels each. Both are resized to the model's input; a far-off aspect ratio "
                            f"gets a warning.", elem_classes=["compact-note"])
                file1 = gr.File(label="image 1", type="filepath", elem_id="upload-1", height=100)
                file2 = gr.File(label="image 2", type="filepath", elem_id="upload-2", height=100)
                button = gr.Button("Explain this pair", variant="primary", elem_id="upload-button")
                pairs = example_pairs()
                if pairs:
                    gr.Examples(pairs, [file1, file2], label="example pairs of generated people (click one, then "
                                "Explain)", elem_id="upload-examples", examples_per_page=len(pairs))
                with gr.Row():
                    preview1 = gr.Image(label="image 1 as uploaded", type="numpy", format="png", interactive=False,
                                        elem_id="upload-preview-1", height=200, buttons=[], min_width=100,
                                        visible=False)
                    preview2 = gr.Image(label="image 2 as uploaded", type="numpy", format="png", interactive=False,
                                        elem_id="upload-preview-2", height=200, buttons=[], min_width=100,
                                        visible=False)
            with gr.Column(scale=5):
                status = gr.Markdown(elem_id="upload-status")
                pair = PairPanel.build("upload")
                correspondence = CorrespondencePanel.build("upload-corr", ("image 1", "image 2"))
                export = ExportControls.build("upload-export")
        return cls(file1, file2, button, (preview1, preview2), status, pair, correspondence, export, gr.State(None))

    @property
    def outputs(self) -> list:
        return [self.status, *self.pair.outputs, self.export.button, self.pair_ref, *self.previews,
                self.correspondence.query, self.correspondence.gallery]

    def wire(self, service: AppService) -> None:
        def show(file1, file2):
            try:
                view = service.upload_view(file1, file2)
            except (UploadError, ExplainError, ValueError) as exc:
                # what the request would have replaced is cleared, so no earlier pair stays on screen under it
                gr.Warning(str(exc), title="Upload refused" if isinstance(exc, UploadError) else "Not explained")
                cleared = f'<span style="color:#d72626">**Refused:** {exc}</span>'
                hidden = gr.update(value=None, visible=False)
                return [cleared, *PairPanel.values(None, ""), gr.update(interactive=False), None, hidden, hidden,
                        None, None]
            return [view.status, *PairPanel.values(view.pair), gr.update(interactive=True), view.ref,
                    *(gr.update(value=image, visible=True) for image in view.previews), *view.shown]

        (self.button.click(show, [self.file1, self.file2], self.outputs, **PRIVATE)
             .then(None, None, None, js=scroll_js("upload-status"), **PRIVATE))

        def correspondence(ref, x, y, direction):
            view = service.upload_correspondence(ref, x, y, direction)
            return view.query_image, view.gallery_image, view.markdown

        self.correspondence.wire(correspondence, self.pair_ref)
        self.export.wire(service.export, self.pair_ref)
        # the JSON API of uploads needs file inputs: a hidden button carries its endpoint
        api_button, api_json = gr.Button(visible=False), gr.JSON(visible=False)

        def explain_upload(file1, file2) -> dict:
            return user_errors(service.api_explain_upload, file1, file2)

        api_button.click(explain_upload, [self.file1, self.file2], api_json, api_name="explain_upload",
                         api_description="Explain two uploaded images (JSON; 'warnings' lists aspect-ratio and "
                                         "training-domain notes).")
