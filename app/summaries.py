"""The dataset summary of any ranking: the default one from :class:`app.summary.SummaryJob`, others on request.

The app's default ranking is scored at start (from its cache beside the map stores, else in the
background). Another (w, K) is scored when a page or client asks for it (the *Dataset* tab, the
failure picker): the attention distances of every query's top K are computed once per K
(:class:`app.reranking.DatasetAttention`) and every w on that K is then a re-combination. A ranking
whose pair attentions would take minutes on a CPU (more than :data:`MAX_DATASET_PAIRS`) is refused
with the ``casn eval`` command that computes it instead.
"""
from __future__ import annotations

import threading

from app import presets
from app.core import RankingSpec
from app.lru import LRUCache
from app.reranking import DatasetAttention
from app.scoring import DatasetSummary, build_summary, score_dataset
from app.state import AppState
from app.summary import SummaryJob
from app.validation import RequestError

MAX_DATASET_PAIRS = 2_000_000
"""Pair attentions the app computes for one dataset summary (measured ~3,000 pairs/s on 2 CPU cores
for the demo's MobileNetV2 maps: about 10 minutes; more belongs to ``casn eval``)."""


class Summaries:
    """Dataset summaries per ranking (the default's job, then an LRU of the others)."""

    def __init__(self, state: AppState, default: DatasetSummary | SummaryJob, capacity: int = 8) -> None:
        self.state = state
        self._default = default
        self.attention = DatasetAttention(state)
        self._others: LRUCache[DatasetSummary] = LRUCache(capacity)
        self._lock = threading.Lock()  # one summary computed at a time: they share the CPU anyway

    # ---- the default ranking ------------------------------------------------------------------------
    @property
    def default(self) -> DatasetSummary:
        """The default ranking's summary; waits while :class:`SummaryJob` computes it in the background."""
        return self._default.result() if isinstance(self._default, SummaryJob) else self._default

    @property
    def default_ready(self) -> bool:
        return not isinstance(self._default, SummaryJob) or self._default.ready

    # ---- any ranking ----------------------------------------------------------------------------------
    def pairs_needed(self, spec: RankingSpec) -> int:
        """Pair attentions a summary of ``spec`` still needs (0: w = 0, the default, or its K is known)."""
        if spec.attention_weight == 0 or presets.is_default(self.state, spec):
            return 0
        k = presets.effective_topk(self.state, spec.topk)
        return 0 if self.attention.known(k) else len(self.state.query) * k

    def ready(self, spec: RankingSpec | None) -> bool:
        """Whether :meth:`get` answers at once (no wait, no pair attention)."""
        if spec is None or presets.is_default(self.state, spec):
            return self.default_ready
        return self._others.peek(presets.key(self.state, spec)) is not None or self.pairs_needed(spec) == 0

    def get(self, spec: RankingSpec | None) -> DatasetSummary:
        """The summary of ``spec`` (None: the default); :class:`RequestError` when it is too costly here."""
        state = self.state
        if spec is None or presets.is_default(state, spec):
            summary = self.default
            if summary.ranking is None:
                summary.ranking = presets.default_spec(state)
            return summary
        needed = self.pairs_needed(spec)
        if needed > MAX_DATASET_PAIRS:
            k = presets.effective_topk(state, spec.topk)
            raise RequestError(
                f"scoring {presets.describe(state, spec)} on the whole dataset needs {len(state.query):,} x {k:,} = "
                f"{needed / 1e6:.1f} M pair attentions, more than the app computes on request "
                f"({MAX_DATASET_PAIRS / 1e6:g} M); run `casn eval --attention-weight {spec.attention_weight:g} "
                f"--topk {'all' if spec.topk is None else k}` instead, or pick a smaller K")

        def compute() -> DatasetSummary:
            with self._lock:
                k = presets.effective_topk(state, spec.topk)
                casn, feature = score_dataset(state, weight=spec.attention_weight, topk=k, attention=self.attention)
                return build_summary(state, casn, feature, spec)

        return self._others.get_or_compute(presets.key(state, spec), compute)
