"""The dataset summary off the start path: scored in query blocks, cached on disk, computed in the background.

:func:`app.scoring.score_dataset` scores every query's CASN ranking (paper sec. 4, "Evaluation
Protocol") and feature ranking. At Market size that is ~30 s of re-ranking and, done on whole
(query x gallery) matrices, ~1 GB of RAM; doing it before the page is served made the app's warm
start (and its memory) grow with the gallery. Here:

- :func:`app.scoring.score_dataset` computes the same per-query results as ``python -m casn_core eval`` does
  (:func:`casn_core.engine.evaluator.evaluate_rankings`'s way: ``casn_candidates`` and
  ``iter_casn_distmat`` blocks of ~32 MB, each scored by the library's ``RankingEvaluator``
  and dropped), so no query x gallery matrix is held;
- :func:`load_cached` / :func:`save_cached`: the per-query results in one JSON file beside the map
  stores, keyed by both stores' keys (checkpoint hash, file-list hash, input size, map dtype) and
  the ranking settings (K, threshold, w); written atomically (:mod:`casn_core.atomic`); a file whose
  key differs, or that is unreadable, is recomputed, never trusted;
- :class:`SummaryJob`: the cached summary when it matches, else the computation in a background
  thread started after the state is loaded; :meth:`SummaryJob.result` waits for it.
"""
from __future__ import annotations

import hashlib
import json
import logging
import threading
from pathlib import Path

import numpy as np

from app.core import QueryResults, write_json_atomic
from app.scoring import MAX_RANK, DatasetSummary, build_summary, score_dataset
from app.state import AppState

FORMAT = "casn-app-summary"
VERSION = 1
CACHE_FOLDER = "app-summary"

log = logging.getLogger(__name__)


def summary_key(state: AppState) -> dict | None:
    """What the summary depends on: both stores' keys and the ranking settings (None: no stores, no cache)."""
    if state.store_keys is None:
        return None
    return {"format": FORMAT, "version": VERSION, "query_store": state.store_keys[0],
            "gallery_store": state.store_keys[1], "topk": int(state.topk), "threshold": float(state.threshold),
            "attention_weight": float(state.attention_weight), "max_rank": min(MAX_RANK, len(state.gallery))}


def cache_path(state: AppState, key: dict) -> Path:
    """``<store_dir>/app-summary/<hash of the key>.json`` (one file per checkpoint, data and settings)."""
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]
    return Path(state.store_dir) / CACHE_FOLDER / f"{digest}.json"


def _to_json(results: QueryResults) -> dict:
    return {"first_true_rank": results.first_true_rank.astype(np.int64).tolist(), "ap": results.ap.tolist(),
            "inp": results.inp.tolist(), "valid": results.valid.astype(bool).tolist()}


def _from_json(data: dict, num_query: int) -> QueryResults:
    results = QueryResults(np.asarray(data["first_true_rank"], dtype=np.int64), np.asarray(data["ap"], dtype=np.float64),
                           np.asarray(data["inp"], dtype=np.float64), np.asarray(data["valid"], dtype=bool))
    if any(len(v) != num_query for v in (results.first_true_rank, results.ap, results.inp, results.valid)):
        raise ValueError(f"per-query results do not have {num_query} rows")
    return results


def load_cached(state: AppState) -> DatasetSummary | None:
    """The cached summary when its file exists and its key equals this state's; else None (with the reason logged)."""
    key = summary_key(state)
    if key is None:
        return None
    path = cache_path(state, key)
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
        if data.get("key") != key:
            raise ValueError("made for other stores or settings")
        casn = _from_json(data["casn"], len(state.query))
        feature = _from_json(data["feature"], len(state.query))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        log.warning("dataset summary cache %s not used, recomputing: %s", path, exc)
        return None
    return build_summary(state, casn, feature)


def save_cached(state: AppState, casn: QueryResults, feature: QueryResults) -> Path | None:
    """Write the per-query results atomically beside the stores (a failure to write is logged, not raised)."""
    key = summary_key(state)
    if key is None:
        return None
    path = cache_path(state, key)
    try:
        write_json_atomic(path, {"key": key, "casn": _to_json(casn), "feature": _to_json(feature)})
    except OSError as exc:
        log.warning("dataset summary not cached (%s: %s)", path, exc)
        return None
    return path


def compute_summary(state: AppState, progress: bool = False) -> DatasetSummary:
    """Score the dataset (:func:`score_dataset`) and cache the result."""
    casn, feature = score_dataset(state, progress)
    save_cached(state, casn, feature)
    return build_summary(state, casn, feature)


class SummaryJob:
    """The dataset summary: from the cache at once, or computed in a daemon thread (``background=True``)
    or right here. :meth:`result` waits for it and re-raises the computation's error."""

    def __init__(self, state: AppState, background: bool = True, progress: bool = False) -> None:
        self._done = threading.Event()
        self._summary: DatasetSummary | None = load_cached(state)
        self._error: BaseException | None = None
        self.cached = self._summary is not None
        if self.cached:
            self._done.set()
        elif background:
            log.info("dataset summary: computing in the background (the page is served meanwhile)")
            threading.Thread(target=self._run, args=(state, progress), name="dataset-summary",
                             daemon=True).start()
        else:
            self._run(state, progress)

    def _run(self, state: AppState, progress: bool) -> None:
        try:
            self._summary = compute_summary(state, progress)
        except BaseException as exc:  # kept for result(); the server keeps answering the other requests
            self._error = exc
        finally:
            self._done.set()

    @property
    def ready(self) -> bool:
        return self._done.is_set()

    def result(self, timeout: float | None = None) -> DatasetSummary:
        if not self._done.wait(timeout):
            raise TimeoutError("the dataset summary is still being computed")
        if self._error is not None:
            raise RuntimeError(f"the dataset summary could not be computed: {self._error}") from self._error
        return self._summary
