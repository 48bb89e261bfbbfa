"""Evaluation of a model on a dataset's query and gallery splits (``casn eval``'s library part).

Evaluation follows the paper (sec. 4, "Evaluation Protocol"; docs/design.md, sec. 3 and 5): features are
extracted once, the gallery is ranked by feature distance, then by the combined feature + Siamese
attention distance on the top K, and both rankings are scored with the Market-1501 protocol.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Sequence

from casn_core.attention.siamese import DEFAULT_THRESHOLD
from casn_core.compute import Compute
from casn_core.data import load_market
from casn_core.engine.extraction import ExtractionConfig, extract_split
from casn_core.engine.store_build import Shard, split_stores
from casn_core.engine.evaluator import evaluate_rankings, summarise  # noqa: F401  (summarise re-exported)
from casn_core.engine.pair_signals import sampled_pair_signals
from casn_core.k_reciprocal import KReciprocalConfig
from casn_core.models.casn import CASN
from casn_core.rankings import RankingSpec


def evaluate_model(model: CASN, data: str, config: ExtractionConfig, rankings: Sequence[RankingSpec] = (), *,
                   checkpoint: str | Path | None = None, shard: Shard = Shard(), signals: bool = False,
                   k_reciprocal: KReciprocalConfig | None = None) -> dict | None:
    """Evaluate ``model`` on the query/gallery splits of the dataset at ``data``: the feature ranking and
    every CASN ranking of ``rankings`` (:func:`casn_core.engine.evaluator.evaluate_rankings`).

    Without ``config.store_dir`` the maps are extracted into RAM (float32); with it they go to (or come
    from) map stores on disk (:func:`casn_core.engine.store_build.split_stores`, keyed by the
    ``checkpoint`` file) and memory does not grow with the gallery. Distributed
    (``shard.world_size > 1``): every rank extracts its shard into the stores; rank 0 scores and
    returns the results, the other ranks return None. ``signals``: add ``"pair_signals"``
    (:func:`casn_core.engine.pair_signals.sampled_pair_signals`: AUCs of d_f, d_a and p(same), mean
    p(same) of true and other pairs; all cross-camera pairs, or a seeded sample of a large set), at the
    alignment threshold of the first ranking. ``k_reciprocal``: also the feature ranking re-ranked by
    k-reciprocal encoding (:mod:`casn_core.k_reciprocal`). CASN rankings run on the model's device. Messages (the
    stores, the pair attentions each ranking needs) go to the loggers of
    :mod:`casn_core.engine.store_build` and :mod:`casn_core.engine.evaluator`.
    """
    was_training = model.training
    model.eval()
    started = time.perf_counter()
    if config.store_dir is not None:
        query_store, gallery_store = split_stores(model, data, config, checkpoint=checkpoint, shard=shard)
        if shard.rank != 0:
            model.train(was_training)
            return None
        query, gallery = query_store.as_cache(), gallery_store.as_cache()
        storage = {"maps": "store", "map_dtype": query_store.map_dtype,
                   "stores": [str(query_store.path), str(gallery_store.path)]}
    else:
        dataset = load_market(data, splits=("query", "gallery"))
        query = extract_split(model, list(dataset.query), config, "query")
        gallery = extract_split(model, list(dataset.gallery), config, "gallery")
        storage = {"maps": "memory", "map_dtype": "float32"}
    extract_s = time.perf_counter() - started
    compute = Compute(device=next(model.parameters()).device, progress=config.progress)
    results = evaluate_rankings(model, query, gallery, rankings, compute, k_reciprocal)
    results["seconds"]["extract_or_open"] = extract_s
    results["storage"] = storage
    if signals:
        threshold = rankings[0].threshold if rankings else DEFAULT_THRESHOLD
        results["pair_signals"] = sampled_pair_signals(model, query, gallery, threshold)
    model.train(was_training)
    return results
