"""The JSON endpoints of the labelled app for ``gradio_client`` (stable ``api_name``s; indices 0-based; names
are paths relative to the dataset folder, never server paths, and never under a ``"path"`` key, which
``gradio_client`` would take for a file to download).

Every ranking endpoint takes the ranking controls of the page: ``attention_weight`` (w, 0 to 100) and
``topk`` (K: an integer or ``"all"``); with neither, the app's default ranking; with one, the other is
the paper's (:func:`casn_core.rankings.chosen_ranking`). Answers carry ``ranking_settings`` (name,
w, K, threshold).

- ``/rank_query(query_index, attention_weight, topk)`` -> ranking JSON (top entries, score parts)
- ``/explain_pair(query_index, gallery_index, attention_weight, topk)`` -> explanation JSON
- ``/why_wrong(query_index, attention_weight, topk)`` -> the failure, both pairs, contrastive map, verdict
- ``/list_queries(failures_only, sort, attention_weight, topk)`` and ``/dataset_summary(attention_weight, topk)``
- ``/correspondence(query_index, gallery_index, x, y, direction)`` -> one row or column of C
- ``/explain_upload(file1, file2)`` (:mod:`app.upload_ui`), ``/search_upload`` and ``/explain_search``
  (:mod:`app.search_ui`)
"""
from __future__ import annotations

import app.offline  # noqa: F401  (before gradio)
import gradio as gr

from app.service import SORTS, AppService
from app.widgets import user_errors


def register(service: AppService) -> None:
    """The JSON endpoints (typed wrappers so that clients see the parameter types)."""

    def rank_query(query_index: int, attention_weight: float | None = None, topk: str | None = None) -> dict:
        """The ranked gallery of one query (first 10 entries) under the ranking (w, K)."""
        return user_errors(service.api_rank_query, query_index, attention_weight, topk)

    def explain_pair(query_index: int, gallery_index: int, attention_weight: float | None = None,
                     topk: str | None = None) -> dict:
        """Both explainers of a (query, gallery image) pair, with its score under the ranking (w, K)."""
        return user_errors(service.api_explain_pair, query_index, gallery_index, attention_weight, topk)

    def why_wrong(query_index: int, attention_weight: float | None = None, topk: str | None = None) -> dict:
        """The rank-1 wrong match and the best true match of a query, the contrastive map and the verdict."""
        return user_errors(service.api_why_wrong, query_index, attention_weight, topk)

    def list_queries(failures_only: bool = False, sort: str = SORTS[0], attention_weight: float | None = None,
                     topk: str | None = None) -> list:
        """Every query (or the failures) with its first true rank and AP under the ranking (w, K)."""
        return user_errors(service.api_list_queries, failures_only, sort, attention_weight, topk)

    def dataset_summary(attention_weight: float | None = None, topk: str | None = None) -> dict:
        """Rank-k, mAP, mINP and CMC of the ranking (w, K) and of the feature ranking."""
        return user_errors(service.api_dataset_summary, attention_weight, topk)

    def correspondence(query_index: int, gallery_index: int, x: int, y: int, direction: str = "query") -> dict:
        """Where the features at pixel (x, y) of the shown query (or gallery) image match in the other image."""
        return user_errors(service.api_correspondence, query_index, gallery_index, x, y, direction)

    for fn in (rank_query, explain_pair, why_wrong, list_queries, dataset_summary, correspondence):
        gr.api(fn, api_name=fn.__name__)
