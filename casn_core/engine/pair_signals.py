"""How much signal the Siamese side carries: AUCs of the three pair scores over cross-camera pairs.

For every query/gallery pair taken by different cameras (the pairs the Market-1501 protocol scores,
docs/design.md, sec. 5) three scores are computed from cached feature maps (docs/design.md, sec. 4):

- ``d_f``, the feature distance (paper sec. 4, "Evaluation Protocol");
- ``d_a``, the Siamese attention consistency distance ``||M*_m1 - M*_m2||_2`` (eq. 5);
- ``p(same)``, the BCE head's same-person probability ``softmax(z)[1]`` (eq. 3).

Each gets the ROC AUC of "true pair" vs "other pair" (``casn_core.numeric.roc_auc``; distances are
negated so that 1.0 always means "separates perfectly" and 0.5 is chance), and the mean ``p(same)``
of each class. Next to them, rank-1 and mAP of the feature ranking and of the paper's combined
ranking (``casn_core.engine.evaluator.evaluate_rankings``), so the signal and what it does to the
ranking are read side by side.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from casn_core.attention.siamese import DEFAULT_THRESHOLD, pair_attention_grid
from casn_core.distances import feature_distance
from casn_core.engine.evaluator import evaluate_rankings
from casn_core.engine.extraction import ExtractionConfig, extract_split
from casn_core.maps import FeatureCache
from casn_core.engine.rerank import DEFAULT_BATCH_BYTES, map_row_bytes
from casn_core.models.casn import CASN
from casn_core.numeric import roc_auc
from casn_core.rankings import RankingSpec


@dataclass
class PairScores:
    """The three scores of every cross-camera (query, gallery) pair, flattened; ``same`` is 0/1."""

    feature_distance: np.ndarray
    attention_distance: np.ndarray
    same_probability: np.ndarray
    same: np.ndarray

    @property
    def num_positive(self) -> int:
        return int(self.same.sum())

    @property
    def num_negative(self) -> int:
        return int(self.same.size - self.same.sum())


class SampledMaps:
    """Rows ``index`` of a map tensor or :class:`casn_core.store.StoredMaps`, read only when sliced,
    so a sample of a store never holds all its maps in RAM (``pair_scores`` reads it block by block)."""

    def __init__(self, maps, index: np.ndarray) -> None:
        self.maps, self.index = maps, np.asarray(index, dtype=np.int64)
        self.shape = torch.Size((len(self.index), *maps.shape[1:]))
        self.dtype = maps.dtype

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, key) -> torch.Tensor:
        return self.maps[torch.as_tensor(self.index[key])]


@torch.no_grad()
def pair_scores(model: CASN, query: FeatureCache, gallery: FeatureCache, threshold: float = DEFAULT_THRESHOLD,
                chunk: int = 16, max_batch_bytes: int = DEFAULT_BATCH_BYTES) -> PairScores:
    """``d_f``, ``d_a`` and ``p(same)`` of every cross-camera pair with a known identity (pid >= 0).

    Queries are processed ``chunk`` at a time through :func:`pair_attention_grid` (the head's
    inference behaviour, as ranking uses it) against ``max_batch_bytes`` of gallery maps at a time,
    so memory stays bounded whatever the gallery size and a map store is read block by block.
    """
    model.eval()
    if len(query) == 0 or len(gallery) == 0:
        raise ValueError(f"pair signals need query and gallery images; got {len(query)} and {len(gallery)}")
    device = next(model.parameters()).device  # maps and features (CPU or a store) move there block by block
    dist_f = feature_distance(query.features, gallery.features).cpu().numpy()
    dist_a = np.empty_like(dist_f)
    prob = np.empty_like(dist_f)
    gallery_chunk = max(1, max_batch_bytes // map_row_bytes(gallery.maps))
    for g_start in range(0, len(gallery), gallery_chunk):  # a store's maps are read a block at a time
        g_stop = min(g_start + gallery_chunk, len(gallery))
        gallery_maps = gallery.maps[g_start:g_stop].to(device)
        gallery_features = gallery.features[g_start:g_stop].to(device)
        for start in range(0, len(query), chunk):
            stop = min(start + chunk, len(query))
            attention = pair_attention_grid(
                model, query.maps[start:stop].to(device), gallery_maps, threshold=threshold,
                query_features=query.features[start:stop].to(device), gallery_features=gallery_features,
                keep_maps=False,
            )
            dist_a[start:stop, g_start:g_stop] = attention.distance.float().cpu().numpy()
            prob[start:stop, g_start:g_stop] = attention.same_probability.float().cpu().numpy()
    qp, gp = np.asarray(query.pids)[:, None], np.asarray(gallery.pids)[None, :]
    qc, gc = np.asarray(query.camids)[:, None], np.asarray(gallery.camids)[None, :]
    keep = (qc != gc) & (qp >= 0) & (gp >= 0)
    return PairScores(dist_f[keep], dist_a[keep], prob[keep], (qp == gp)[keep].astype(np.int64))


def signal_summary(scores: PairScores) -> dict:
    """AUCs (true vs other pairs; 0.5 = chance) and mean ``p(same)`` per class of :class:`PairScores`."""
    pos, neg = scores.same == 1, scores.same == 0
    if not pos.any() or not neg.any():
        raise ValueError(
            f"pair signals need both true and other cross-camera pairs; got {scores.num_positive} and "
            f"{scores.num_negative}"
        )
    return {
        "num_pairs_positive": scores.num_positive,
        "num_pairs_negative": scores.num_negative,
        "auc_feature_distance": roc_auc(-scores.feature_distance[pos], -scores.feature_distance[neg]),
        "auc_attention_distance": roc_auc(-scores.attention_distance[pos], -scores.attention_distance[neg]),
        "auc_same_probability": roc_auc(scores.same_probability[pos], scores.same_probability[neg]),
        "p_same_pos_mean": float(scores.same_probability[pos].mean()),
        "p_same_neg_mean": float(scores.same_probability[neg].mean()),
        "attention_distance_pos_mean": float(scores.attention_distance[pos].mean()),
        "attention_distance_neg_mean": float(scores.attention_distance[neg].mean()),
    }


def pair_signals(model: CASN, query: FeatureCache, gallery: FeatureCache, threshold: float = DEFAULT_THRESHOLD,
                 attention_weight: float = 1.0, topk: int | None = 100, rankings: bool = True) -> dict:
    """:func:`signal_summary` of all cross-camera pairs, plus feature vs CASN rank-1/mAP (``rankings``).

    The ranking numbers use ``attention_weight`` (w) and ``topk`` (K) of the paper's combined
    distance ``d = norm(d_f) + w norm(d_a)`` (sec. 4).
    """
    result = signal_summary(pair_scores(model, query, gallery, threshold))
    if rankings:
        result.update(ranking_numbers(model, query, gallery, threshold, attention_weight, topk))
    return result


def ranking_numbers(model: CASN, query: FeatureCache, gallery: FeatureCache, threshold: float = DEFAULT_THRESHOLD,
                    attention_weight: float = 1.0, topk: int | None = 100) -> dict:
    """Feature vs CASN rank-1 and mAP with ``attention_weight`` (w) and ``topk`` (K) (the part of
    :func:`pair_signals` that depends on w and K)."""
    ranked = evaluate_rankings(model, query, gallery, [RankingSpec("casn", attention_weight, topk, threshold)])
    return {"feature_rank1": ranked["feature"]["rank1"], "feature_mAP": ranked["feature"]["mAP"],
            "casn_rank1": ranked["casn"]["rank1"], "casn_mAP": ranked["casn"]["mAP"],
            "attention_weight": float(attention_weight), "topk": "all" if topk is None else int(topk)}


def sampled_pair_signals(model: CASN, query: FeatureCache, gallery: FeatureCache,
                         threshold: float = DEFAULT_THRESHOLD, max_queries: int = 256, max_gallery: int = 2048,
                         seed: int = 0) -> dict:
    """:func:`signal_summary` over all cross-camera pairs of a set, or of a seeded sample of a large one.

    Every pair needs its Siamese attention, so a Market-sized set (66 M pairs) is sampled: up to
    ``max_queries`` queries, and a gallery of all their true matches plus seeded other images up to
    ``max_gallery``. AUCs do not depend on the share of positives, so the sample estimates them
    without bias; ``"sampled"`` and the counts say what was scored.
    """
    rng = np.random.default_rng(seed)
    q_idx = np.arange(len(query))
    g_idx = np.arange(len(gallery))
    sampled = len(query) > max_queries or len(gallery) > max_gallery
    if sampled:
        if len(query) > max_queries:
            q_idx = np.sort(rng.choice(len(query), max_queries, replace=False))
        pids = np.asarray(gallery.pids)
        matches = np.flatnonzero(np.isin(pids, np.asarray(query.pids)[q_idx]))
        others = np.setdiff1d(np.arange(len(gallery)), matches)
        room = max(0, max_gallery - len(matches))
        extra = rng.choice(others, min(room, len(others)), replace=False) if len(others) else others
        g_idx = np.sort(np.concatenate([matches, extra]))

    def subset(cache: FeatureCache, index: np.ndarray) -> FeatureCache:
        rows = torch.as_tensor(index, dtype=torch.long)
        return FeatureCache(maps=SampledMaps(cache.maps, index), features=cache.features[rows],
                            pids=np.asarray(cache.pids)[index], camids=np.asarray(cache.camids)[index],
                            paths=[cache.paths[i] for i in index])

    q, g = (subset(query, q_idx), subset(gallery, g_idx)) if sampled else (query, gallery)
    result = signal_summary(pair_scores(model, q, g, threshold))
    result.update(sampled=sampled, num_queries=len(q), num_gallery=len(g))
    return result


def extract_records(model: CASN, records: list, input_size: tuple[int, int], batch_size: int = 64,
                    desc: str = "extract", progress: bool = False) -> FeatureCache:
    """Cached maps and features of image records at the model's input size (one backbone pass each)."""
    return extract_split(model, records, ExtractionConfig(tuple(input_size), batch_size, progress=progress), desc)


def dataset_caches(model: CASN, data: str, input_size: tuple[int, int], batch_size: int = 64,
                   progress: bool = False) -> tuple[FeatureCache, FeatureCache]:
    """``(query, gallery)`` caches of the Market-layout dataset at ``data``."""
    from casn_core.data import load_market

    dataset = load_market(data, splits=("query", "gallery"))
    return (extract_records(model, list(dataset.query), input_size, batch_size, "query", progress),
            extract_records(model, list(dataset.gallery), input_size, batch_size, "gallery", progress))
