"""Pair explanations (paper sec. 4.2, figures 7 and 8): cached query/gallery pairs, uploads, failures.

Each explanation has the paper's Siamese attention (what the BCE head looks at: maps, row vectors,
alignment, consistency distance) and, beside it, the exact decomposition of the feature similarity
that ranks (:mod:`app.similarity`). For a pair from the dataset no backbone pass is needed: both
come from the cached feature maps (:func:`casn_core.attention.siamese.pair_attention`). An uploaded
pair runs the backbone on its two images once.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from app import figures, plots
from app.core import build_test_transform, explain_maps, extract_tensors
from app.markdown import pair_markdown
from app.pair import DATASET_PAIR, UPLOADED_PAIR, ExplainedPair, ImageRef, ScorePart
from app.ranking import QueryRanking, rank_query
from app.state import AppState


@dataclass
class PairView:
    """An explanation in every form the UI shows and exports."""

    explanation: ExplainedPair
    overlays: np.ndarray
    vectors: np.ndarray
    markdown: str
    name: str = "pair"
    similarity: np.ndarray | None = None
    """Both images with their similarity maps (what makes d_f small), or None."""
    similarity_rows: np.ndarray | None = None
    """Row contributions to the similarity, plotted like the importance vectors."""

    @property
    def extra_images(self) -> list[np.ndarray]:
        """Panels of the export between the overlays and the vector plots."""
        return [image for image in (self.similarity, self.similarity_rows) if image is not None]


def input_image(image: Image.Image | str, state: AppState) -> np.ndarray:
    """An image resized to the model's input size (what the network sees), RGB uint8."""
    pil = Image.open(image).convert("RGB") if isinstance(image, (str, Path)) else image.convert("RGB")
    height, width = state.input_size
    return np.asarray(pil.resize((width, height), Image.BILINEAR))


def _score_part(state: AppState, ranking: QueryRanking, gallery_index: int) -> ScorePart:
    """Where ``gallery_index`` ranks under ``ranking`` and what its score ``d`` is made of (paper sec. 4)."""
    position = ranking.position(gallery_index)
    if position is None:
        return ScorePart(None, note="left out of the ranking: same identity seen by the query's camera "
                                    "(Market-1501 protocol)")
    weight = ranking.attention_weight if ranking.ranking is not None else state.attention_weight
    placed = dict(rank=position + 1, of=len(ranking.order), reranked_with_attention=ranking.reranked(position),
                  topk=ranking.topk, attention_weight=weight)
    if weight == 0 and not ranking.reranked(position):
        return ScorePart(**placed, note="w = 0: ranked by the feature distance d_f alone")
    if ranking.reranked(position):
        return ScorePart(**placed, feature_part=float(ranking.feature_part[position]),
                         attention_part=float(ranking.attention_part[position]), total=float(ranking.score[position]))
    return ScorePart(**placed,
                     note=f"beyond the top {ranking.topk} by feature distance: ranked by feature distance only")


def _image_ref(state: AppState, split: str, index: int) -> ImageRef:
    """Image ``index`` of the query or gallery split, named relative to the dataset folder."""
    images = getattr(state, split)
    return ImageRef(index=index, name=state.relative(images.paths[index]), pid=int(images.pids[index]),
                    camid=int(images.camids[index]))


def explain_cached(state: AppState, query_index: int, gallery_index: int,
                   ranking: QueryRanking | None = None) -> ExplainedPair:
    """Explanation of (query, gallery image) from the cached maps, with its ranking-score decomposition."""
    if not 0 <= query_index < len(state.query):
        raise IndexError(f"query index {query_index} is out of range 0..{len(state.query) - 1}")
    if not 0 <= gallery_index < len(state.gallery):
        raise IndexError(f"gallery index {gallery_index} is out of range 0..{len(state.gallery) - 1}")
    if ranking is None or ranking.query_index != query_index:
        ranking = rank_query(state, query_index)
    explanation = explain_maps(state.model, state.query.maps[query_index], state.gallery.maps[gallery_index],
                               state.threshold, state.query.features[query_index],
                               state.gallery.features[gallery_index])
    # the d_f of this query's ranking row (same features; the row's batched cdist may round differently),
    # read from the ranking when the image is in it (junk is not: then the row is computed)
    position = ranking.position(gallery_index)
    explanation.feature_distance = float(state.feature_row(query_index)[gallery_index] if position is None
                                         else ranking.feature_distance[position])
    query, gallery = _image_ref(state, "query", query_index), _image_ref(state, "gallery", gallery_index)
    return ExplainedPair(explanation, DATASET_PAIR, query, gallery, true_match=query.pid == gallery.pid,
                         ranking_score=_score_part(state, ranking, gallery_index))


@torch.no_grad()
def pair_tensors(model, input_size: tuple[int, int], image1: Image.Image, image2: Image.Image):
    """Maps (2, K, H, W) and features (2, D) of two images, one backbone pass for both."""
    transform = build_test_transform(*input_size)
    return extract_tensors(model, torch.stack([transform(image1), transform(image2)]))


def explain_images(state: AppState, image1: Image.Image, image2: Image.Image,
                   names: tuple[str, str] | None = None) -> ExplainedPair:
    """Explanation of two arbitrary images (one backbone pass for both); ``names``: the files' names."""
    maps, features = pair_tensors(state.model, state.input_size, image1, image2)
    explanation = explain_maps(state.model, maps[0], maps[1], state.threshold, features[0], features[1])
    return ExplainedPair(explanation, UPLOADED_PAIR, images=None if names is None else tuple(names))


def render(pair: ExplainedPair, image1: np.ndarray, image2: np.ndarray,
           labels: tuple[str, str] = ("query", "gallery"), name: str = "pair") -> PairView:
    """Overlay panel, vector plots, similarity panels and numbers of an explanation (nothing is written to disk)."""
    explanation = pair.explanation
    frame = None  # green/red around the gallery image only where the identities are known
    if pair.true_match is not None:
        frame = figures.GREEN if pair.true_match else figures.RED
    overlays = figures.overlay_panel(image1, image2, explanation.map1, explanation.map2, labels, frame)
    view = PairView(pair, overlays, plots.vectors_figure(explanation, labels), pair_markdown(pair, labels), name)
    view.similarity = figures.similarity_panel(image1, image2, explanation.similarity_map1,
                                               explanation.similarity_map2, labels)
    view.similarity_rows = plots.similarity_rows_figure(explanation, labels)
    return view


def pair_name(state: AppState, query_index: int, gallery_index: int) -> str:
    return f"{Path(state.query.paths[query_index]).stem}_vs_{Path(state.gallery.paths[gallery_index]).stem}"


def view_cached(state: AppState, query_index: int, gallery_index: int, ranking: QueryRanking | None = None,
                labels: tuple[str, str] = ("query", "gallery")) -> PairView:
    explanation = explain_cached(state, query_index, gallery_index, ranking)
    image1 = input_image(state.query.paths[query_index], state)
    image2 = input_image(state.gallery.paths[gallery_index], state)
    return render(explanation, image1, image2, labels, pair_name(state, query_index, gallery_index))


def view_images(state: AppState, image1: Image.Image, image2: Image.Image, names: tuple[str, str]) -> PairView:
    labels = ("image 1", "image 2")
    return render(explain_images(state, image1, image2, names), input_image(image1, state),
                  input_image(image2, state), labels, f"{Path(names[0]).stem}_vs_{Path(names[1]).stem}")


@dataclass
class FailureCase:
    """The paper's figure 8a for one query: its rank-1 wrong match and its best-ranked true match."""

    ranking: QueryRanking
    wrong_index: int | None
    true_index: int | None
    message: str


def failure_case(state: AppState, query_index: int, ranking: QueryRanking | None = None) -> FailureCase:
    if ranking is None or ranking.query_index != query_index:
        ranking = rank_query(state, query_index)
    if ranking.first_true_rank is None:
        return FailureCase(ranking, int(ranking.order[0]) if len(ranking.order) else None, None,
                           "This query has no true match in the gallery (other cameras), so it has no AP; "
                           "only its rank-1 match is shown.")
    true_index = int(ranking.order[ranking.first_true_rank - 1])
    if not ranking.failed:
        return FailureCase(ranking, None, true_index,
                           "Rank-1 is a true match: nothing failed for this query. Pick a query marked "
                           "with a red rank in the picker (or tick *failures only*).")
    return FailureCase(ranking, int(ranking.order[0]), true_index,
                       f"Rank-1 is a wrong identity; the best-ranked true match is at rank {ranking.first_true_rank}.")
