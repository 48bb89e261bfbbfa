"""Gradio pieces every page uses: the style sheet, error mapping, and the pair-explanation panels.

The lowest UI layer: tab modules (:mod:`app.rankings_ui`, :mod:`app.why_ui`, :mod:`app.upload_ui`,
:mod:`app.dataset_ui`, :mod:`app.search_ui`) import it; it imports none of them.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import app.offline  # noqa: F401  (before gradio)
import gradio as gr

from app import figures
from app.explain import PairView
from app.uploads import UploadError

PRIVATE = {"api_visibility": "private"}

CSS = """
#header h1 {margin-bottom: 0.1em; font-size: 1.45em;}
#header p {margin: 0.1em 0;}
.casn-gallery .grid-container {
  grid-template-columns: repeat(var(--grid-cols), minmax(50px, 1fr)) !important;
  grid-template-rows: none !important; grid-auto-rows: auto !important;}
.casn-gallery .thumbnail-item {height: auto !important; aspect-ratio: 9 / 17 !important; background: #fff;}
.casn-gallery .thumbnail-item img, .casn-gallery .thumbnail-item > img {object-fit: contain !important;
  width: 100% !important; height: 100% !important;}
.casn-gallery .caption-label {font-size: 0.72em; white-space: normal !important; overflow: visible !important;
  text-overflow: clip !important; max-width: 100% !important; line-height: 1.15; position: static !important;
  word-break: normal; overflow-wrap: anywhere;}
.casn-gallery .thumbnail-item.selected {outline: 3px solid #1f6feb !important; outline-offset: 1px;}
.casn-table table {font-size: 0.88em;}
.casn-table th, .casn-table td {white-space: nowrap; word-break: keep-all; overflow-wrap: normal;}
.casn-table {overflow-x: auto;}
.casn-info table {font-size: 0.88em; table-layout: fixed; width: 100%;}
.casn-info td:first-child, .casn-info th:first-child {width: 32%;}
.casn-info td {white-space: normal; overflow-wrap: anywhere;}
.casn-info td:first-child {white-space: nowrap;}
.legend-dot {display:inline-block; width:0.8em; height:0.8em; border-radius:2px; margin:0 0.25em 0 0.6em;}
#ranking-controls {padding: 0 0.4em;}
#ranking-controls fieldset, #ranking-controls .block {padding-top: 0.25em !important; padding-bottom: 0.25em !important;}
#ranking-note {padding: 0.1em 0.6em 0.3em 0.6em;}
.compact-note p {font-size: 0.88em; margin: 0.15em 0;}
.casn-heading p {font-weight: 600; margin: 0.3em 0 0 0;}
"""



def scroll_js(elem_id: str) -> str:
    """A ``js`` handler that scrolls the element ``elem_id`` into view (the explanation after a click)."""
    return (f"() => {{ const el = document.getElementById('{elem_id}'); "
            f"if (el) el.scrollIntoView({{behavior: 'smooth', block: 'start'}}); }}")


def user_errors(fn: Callable, *args):
    """``fn(*args)``, with the service's plain errors shown to the user as ``gr.Error``."""
    try:
        return fn(*args)
    except UploadError as exc:
        raise gr.Error(str(exc), title="Upload refused") from None
    except (ValueError, IndexError, RuntimeError) as exc:
        raise gr.Error(str(exc)) from None


def or_cleared(fn: Callable, blank: Callable[[str], list], toast: bool = False) -> Callable:
    """``fn``, except that when it fails (a ``gr.Error``, :func:`user_errors`' mapping of the service's plain
    errors) its outputs become ``blank(message)`` (and, with ``toast``, the message pops up): a failed
    request clears what it would have replaced, so nothing earlier stays on screen as if it were the answer.
    A chain of such links toasts once, at the link that checks the request first."""
    def run(*args):
        try:
            return fn(*args)
        except gr.Error as exc:
            if toast:
                gr.Warning(str(exc.message), title="Not shown")
            return blank(f'<span style="color:#d72626">**Not shown:** {exc.message}</span>')
    return run


def selected(evt: gr.SelectData) -> int:
    return int(evt.index if isinstance(evt.index, int) else evt.index[0])


def picture(elem_id: str, label: str, **kwargs) -> gr.Image:
    return gr.Image(label=label, show_label=False, type="numpy", format="png", interactive=False, elem_id=elem_id,
                    buttons=["fullscreen"], **kwargs)


def gallery(elem_id: str, label: str, columns: int, height, **kwargs) -> gr.Gallery:
    """A gallery of whole thumbnails (contain, never cropped) with full captions; its label is for screen readers
    only (a floating label would cover the first row), so the caller writes a heading above it."""
    return gr.Gallery(label=label, show_label=False, columns=columns, height=height, allow_preview=False,
                      object_fit="contain", elem_id=elem_id, elem_classes=["casn-gallery"], format="png", **kwargs)


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
        numbers = gr.Markdown(elem_id=f"{prefix}-metrics", elem_classes=["casn-table"])
        with gr.Row(equal_height=False):
            with gr.Column(scale=3):
                gr.Markdown("**Siamese attention** (the paper's BCE head: what it compares)")
                # hidden until a pair is explained: empty frames would only push the page down
                overlays = picture(f"{prefix}-overlays", "Siamese attention maps", visible=False)
                vectors = picture(f"{prefix}-vectors", "importance vectors and their alignment", visible=False)
            with gr.Column(scale=2):
                gr.Markdown("**Similarity decomposition** (exact: what makes d_f small)")
                similarity = picture(f"{prefix}-similarity", "similarity maps", visible=False)
                similarity_rows = picture(f"{prefix}-similarity-rows", "row contributions to the similarity",
                                          visible=False)
        return cls(numbers, overlays, vectors, similarity, similarity_rows)

    @property
    def outputs(self) -> list:
        return [self.numbers, self.overlays, self.vectors, self.similarity, self.similarity_rows]

    @staticmethod
    def values(view: PairView | None, empty: str = "*(nothing to show)*") -> list:
        if view is None:
            return [empty] + [gr.update(value=None, visible=False)] * 4
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

    def wire(self, export: Callable, ref: gr.State) -> None:
        """``export(ref)`` writes the files of the pair on screen and returns their paths."""
        def run(current):
            return [str(p) for p in user_errors(export, current)]

        self.button.click(run, ref, self.files, **PRIVATE)


CORRESPONDENCE_NOTE = ("The clicked point is marked; the other image shows one row of the exact correspondence C "
                       "(Stylianou et al. 2019) of the feature similarity. "
                       + figures.colour_bar_html("0", "max", "(scaled from 0 to the largest cell of that row)"))


@dataclass
class CorrespondencePanel:
    """Click a location on either image: the other lights up where that location's features match."""

    query: gr.Image
    gallery: gr.Image
    info: gr.Markdown

    @classmethod
    def build(cls, prefix: str = "corr", names: tuple[str, str] = ("query", "gallery")) -> "CorrespondencePanel":
        gr.Markdown("#### Point correspondence: click a location on either image")
        with gr.Row(equal_height=False):
            query = gr.Image(label=f"{names[0]}: click a location", type="numpy", format="png", interactive=False,
                             elem_id=f"{prefix}-query", buttons=[], min_width=140, scale=1)
            gallery = gr.Image(label=f"{names[1]}: click a location", type="numpy", format="png", interactive=False,
                               elem_id=f"{prefix}-gallery", buttons=[], min_width=140, scale=1)
            info = gr.Markdown(CORRESPONDENCE_NOTE, elem_id=f"{prefix}-info")
        return cls(query, gallery, info)

    @property
    def outputs(self) -> list:
        return [self.query, self.gallery, self.info]

    def wire(self, correspondence: Callable, ref: gr.State) -> None:
        """``correspondence(ref, x, y, direction)`` -> ``(query image, gallery image, markdown)`` of a click."""
        def clicked(direction: str):
            def show(current, evt: gr.SelectData):
                if current is None:
                    raise gr.Error("explain a pair first")
                x, y = evt.index
                return user_errors(correspondence, current, x, y, direction)
            return show

        self.query.select(clicked("query"), ref, self.outputs, **PRIVATE)
        self.gallery.select(clicked("gallery"), ref, self.outputs, **PRIVATE)
