"""How the app is loaded and served, in one frozen object instead of long argument lists.

:func:`app.state.load_state`, :func:`app.server.build`, :func:`app.server.build_service`,
:func:`app.server.build_gallery` and :func:`app.search.open_gallery` take an :class:`AppSettings`
(and, for callers that set one or two fields, keyword overrides of it: :func:`resolve`).
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass

from app.uploads import MAX_UPLOAD_BYTES


@dataclass(frozen=True)
class AppSettings:
    """Every setting of a start (``python app.py``'s options; :mod:`app.server` documents each).

    ``topk`` / ``attention_weight``: with neither, the checkpoint's stored (w, K) pair, else the paper's
    (w = 1, K = all); with one, the other is the paper's (:func:`casn_core.rankings.chosen_ranking`).
    ``arch`` / ``input_size``: a torchreid checkpoint. ``background_summary=False`` scores the dataset
    before the service is returned (tests, benchmarks). Start-up messages go to the ``app`` loggers
    (``logging.getLogger(__name__)`` in each module; ``python app.py`` shows them on stderr).
    """

    topk: int | str | None = None
    threshold: float | None = None
    attention_weight: float | None = None
    store_dir: str | os.PathLike | None = None
    map_dtype: str = "auto"
    batch_size: int = 32
    arch: str | None = None
    input_size: str | None = None
    max_upload_bytes: int = MAX_UPLOAD_BYTES
    ranking_cache: int = 512
    background_summary: bool = True
    progress: bool = True


def resolve(settings: AppSettings | None = None, **overrides) -> AppSettings:
    """``settings`` (default: all defaults) with the fields named in ``overrides`` replaced (an unknown
    name is a ``TypeError``, as for any function)."""
    return dataclasses.replace(settings or AppSettings(), **overrides)
