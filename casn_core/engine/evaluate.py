"""Evaluation: ``casn eval`` (``python -m casn_core eval``; sharded under ``torchrun``).

Evaluation follows the paper (sec. 4, "Evaluation Protocol"; docs/design.md, sec. 3 and 5): features are
extracted once, the gallery is ranked by feature distance, then by the combined feature + Siamese
attention distance on the top K, and both rankings are scored with the Market-1501 protocol.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Sequence

import torch

from casn_core.attention.siamese import DEFAULT_THRESHOLD
from casn_core.engine.extraction import extract_split
from casn_core.engine.store_build import split_stores  # noqa: F401  (re-exported)
from casn_core.engine.evaluator import (  # noqa: F401  (evaluate_caches and summarise re-exported)
    evaluate_caches, evaluate_rankings, summarise,
)
from casn_core.engine.pair_signals import sampled_pair_signals
from casn_core.models.casn import CASN
from casn_core.rankings import RankingSpec


log = logging.getLogger(__name__)


def evaluate_model(model: CASN, data: str, height: int, width: int, device: torch.device | str = "cpu",
                   amp: str = "none", topk: int | None = 100, attention_weight: float = 1.0,
                   threshold: float = DEFAULT_THRESHOLD, batch_size: int = 64, workers: int = 0, casn: bool = True,
                   progress: bool = True, store_dir: str | Path | None = None, map_dtype: str = "auto",
                   checkpoint: str | Path | None = None, log=print, rank: int = 0, world_size: int = 1,
                   group=None, signals: bool = False, rankings: Sequence[RankingSpec] | None = None) -> dict | None:
    """Evaluate ``model`` on the query/gallery splits of the dataset at ``data``.

    Without ``store_dir`` the maps are extracted into RAM (float32, as before); with it they go to
    (or come from) map stores on disk (:func:`split_stores`) and memory does not grow with the
    gallery. Distributed (``world_size > 1``): every rank extracts its shard into the stores; rank 0
    scores and returns the results, the other ranks return None. ``signals``: add ``"pair_signals"``
    (:func:`casn_core.engine.pair_signals.sampled_pair_signals`: AUCs of d_f, d_a and p(same), mean
    p(same) of true and other pairs; all cross-camera pairs, or a seeded sample of a large set).
    ``rankings``: the CASN rankings to score (:func:`evaluate_rankings`); default one named ``casn`` of
    ``attention_weight`` on the top ``topk`` (none with ``casn=False``).
    """
    from casn_core.data import load_market

    was_training = model.training
    model.eval()
    started = time.perf_counter()
    if store_dir is not None:
        query_store, gallery_store = split_stores(
            model, data, height, width, store_dir, checkpoint=checkpoint, map_dtype=map_dtype, amp=amp,
            batch_size=batch_size, workers=workers, progress=progress, log=log, rank=rank, world_size=world_size,
            group=group)
        if rank != 0:
            model.train(was_training)
            return None
        query, gallery = query_store.as_cache(), gallery_store.as_cache()
        storage = {"maps": "store", "map_dtype": query_store.map_dtype,
                   "stores": [str(query_store.path), str(gallery_store.path)]}
    else:
        dataset = load_market(data, splits=("query", "gallery"))
        query = extract_split(model, list(dataset.query), height, width, batch_size, workers, amp, progress, "query")
        gallery = extract_split(model, list(dataset.gallery), height, width, batch_size, workers, amp, progress,
                                "gallery")
        storage = {"maps": "memory", "map_dtype": "float32"}
    extract_s = time.perf_counter() - started
    if rankings is None:
        rankings = [RankingSpec("casn", attention_weight, topk, threshold)] if casn else []
    results = evaluate_rankings(model, query, gallery, rankings, progress, device)
    results["seconds"]["extract_or_open"] = extract_s
    results["storage"] = storage
    if signals:
        results["pair_signals"] = sampled_pair_signals(model, query, gallery, threshold)
    model.train(was_training)
    return results
