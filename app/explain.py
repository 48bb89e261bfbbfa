"""Pair explanations (paper sec. 4.2, figures 7 and 8): cached query/gallery pairs, uploads, failures.

For a pair from the dataset no backbone pass is needed: the Siamese attention is computed from the
cached feature maps (:func:`casn_core.attention.siamese.pair_attention`). An uploaded pair runs the
backbone on its two images once (:func:`casn_core.engine.inference.explain_pair_tensors`).
"""
from __future__ import annotations

import json
import re
import shutil
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from casn_core.attention.siamese import pair_attention
from casn_core.engine.inference import explain_pair_tensors, explanation_dict

from app import figures
from app.ranking import QueryRanking, rank_query
from app.state import AppState

KEEP_EXPORTS = 200
"""Export folders kept under ``<cache-dir>/exports`` (older ones are removed)."""


@dataclass
class PairView:
    """An explanation in every form the UI shows and exports."""

    explanation: dict
    overlays: np.ndarray
    vectors: np.ndarray
    markdown: str
    png_path: Path | None = None
    json_path: Path | None = None


def input_image(image: Image.Image | str, state: AppState) -> np.ndarray:
    """An image resized to the model's input size (what the network sees), RGB uint8."""
    pil = Image.open(image).convert("RGB") if isinstance(image, (str, Path)) else image.convert("RGB")
    height, width = state.input_size
    return np.asarray(pil.resize((width, height), Image.BILINEAR))


def _score_part(state: AppState, ranking: QueryRanking, gallery_index: int) -> dict:
    position = ranking.position(gallery_index)
    if position is None:
        return {"rank": None, "reranked_with_attention": False,
                "note": "left out of the ranking: same identity seen by the query's camera (Market-1501 protocol)"}
    part = {"rank": position + 1, "of": len(ranking.order), "reranked_with_attention": ranking.reranked(position),
            "topk": ranking.topk, "attention_weight": state.attention_weight}
    if ranking.reranked(position):
        part.update(feature_part=float(ranking.feature_part[position]),
                    attention_part=float(ranking.attention_part[position]),
                    total=float(ranking.score[position]))
    else:
        part["note"] = f"beyond the top {ranking.topk} by feature distance: ranked by feature distance only"
    return part


def explain_cached(state: AppState, query_index: int, gallery_index: int, ranking: QueryRanking | None = None) -> dict:
    """Explanation of (query, gallery image) from the cached maps, with its ranking-score decomposition."""
    if not 0 <= query_index < len(state.query):
        raise IndexError(f"query index {query_index} is out of range 0..{len(state.query) - 1}")
    if not 0 <= gallery_index < len(state.gallery):
        raise IndexError(f"gallery index {gallery_index} is out of range 0..{len(state.gallery) - 1}")
    if ranking is None or ranking.query_index != query_index:
        ranking = rank_query(state, query_index)
    maps_q = state.query.maps[query_index:query_index + 1].float()
    maps_g = state.gallery.maps[gallery_index:gallery_index + 1].float()
    attention = pair_attention(state.model, maps_q, maps_g, state.threshold).detach()[0]
    feature_dist = float(state.feature_distances[query_index, gallery_index])
    result = explanation_dict(attention, feature_dist, state.threshold)
    q_pid, g_pid = int(state.query.pids[query_index]), int(state.gallery.pids[gallery_index])
    result.update(
        kind="dataset pair",
        query={"index": query_index, "name": state.relative(state.query.paths[query_index]), "pid": q_pid,
               "camid": int(state.query.camids[query_index])},
        gallery={"index": gallery_index, "name": state.relative(state.gallery.paths[gallery_index]), "pid": g_pid,
                 "camid": int(state.gallery.camids[gallery_index])},
        true_match=q_pid == g_pid,
        ranking_score=_score_part(state, ranking, gallery_index),
    )
    return result


@torch.no_grad()
def explain_images(state: AppState, image1: Image.Image, image2: Image.Image) -> dict:
    """Explanation of two arbitrary images (one backbone pass each)."""
    from casn_core.data import build_test_transform

    transform = build_test_transform(*state.input_size)
    attention, feature_dist = explain_pair_tensors(state.model, transform(image1), transform(image2), state.threshold)
    result = explanation_dict(attention.detach(), feature_dist, state.threshold)
    result["kind"] = "uploaded pair"
    return result


def markdown(explanation: dict, labels: tuple[str, str] = ("query", "gallery")) -> str:
    """The numbers of an explanation as a small table, with the ranking score split into its parts."""
    rows = [
        f"| BCE same-person probability (eq. 3) | **{explanation['same_probability']:.3f}** |",
        f"| feature distance d_f (L2-normalised f) | {explanation['feature_distance']:.4f} |",
        f"| attention consistency distance d_a (eq. 5) | {explanation['attention_distance']:.4f} |",
        f"| kept rows (threshold t = {explanation['threshold']:.2f}) | {labels[0]} {explanation['span1'][0]}-"
        f"{explanation['span1'][1]}, {labels[1]} {explanation['span2'][0]}-{explanation['span2'][1]} |",
    ]
    score = explanation.get("ranking_score")
    if score is not None:
        if score.get("rank") is None:
            rows.append(f"| ranking | {score['note']} |")
        elif score.get("reranked_with_attention"):
            rows.append(
                f"| ranking score d (rank {score['rank']} of {score['of']}) | **{score['total']:.3f}** = "
                f"{score['feature_part']:.3f} feature + {score['attention_part']:.3f} attention |")
            rows.append(f"| | each part min-max normalised over the top {score['topk']} candidates; "
                        f"attention weight w = {score['attention_weight']:g} |")
        else:
            rows.append(f"| ranking (rank {score['rank']} of {score['of']}) | {score['note']} |")
    head = ""
    if "query" in explanation and "gallery" in explanation:
        q, g = explanation["query"], explanation["gallery"]
        verdict = "true match" if explanation["true_match"] else "wrong identity"
        head = (f"**{labels[0]}** `{q['name']}` (id {q['pid']}, cam {q['camid']}) vs **{labels[1]}** `{g['name']}` "
                f"(id {g['pid']}, cam {g['camid']}): **{verdict}**\n\n")
    return head + "| quantity | value |\n|---|---|\n" + "\n".join(rows)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text)[:60].strip("_") or "pair"


def _export_dir(state: AppState) -> Path:
    root = state.cache_dir / "exports"
    root.mkdir(parents=True, exist_ok=True)
    folders = sorted((p for p in root.iterdir() if p.is_dir()), key=lambda p: p.stat().st_mtime)
    for old in folders[:-KEEP_EXPORTS]:
        shutil.rmtree(old, ignore_errors=True)
    out = root / f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:8]}"
    out.mkdir()
    return out


def render(state: AppState, explanation: dict, image1: np.ndarray, image2: np.ndarray,
           labels: tuple[str, str] = ("query", "gallery"), export: bool = True, name: str = "pair") -> PairView:
    """Overlay panel, vector plots, numbers; with ``export`` also the PNG and JSON files."""
    frame = None
    if "true_match" in explanation:
        frame = figures.GREEN if explanation["true_match"] else figures.RED
    overlays = figures.overlay_panel(image1, image2, np.asarray(explanation["map1"]), np.asarray(explanation["map2"]),
                                     labels, frame)
    vectors = figures.vectors_figure(explanation, labels)
    view = PairView(explanation, overlays, vectors, markdown(explanation, labels))
    if export:
        out = _export_dir(state)
        stem = f"casn_explanation_{_slug(name)}"
        header = (f"CASN pair explanation: {name}\nsame-person probability {explanation['same_probability']:.3f} | "
                  f"feature distance {explanation['feature_distance']:.4f} | attention distance "
                  f"{explanation['attention_distance']:.4f} | threshold {explanation['threshold']:.2f}")
        score = explanation.get("ranking_score") or {}
        if score.get("reranked_with_attention"):
            header += (f"\nrank {score['rank']}: score {score['total']:.3f} = {score['feature_part']:.3f} feature + "
                       f"{score['attention_part']:.3f} attention")
        view.png_path = out / f"{stem}.png"
        view.png_path.write_bytes(figures.export_png(overlays, vectors, header))
        view.json_path = out / f"{stem}.json"
        payload = {"checkpoint": state.checkpoint_path.name, "backbone": state.backbone,
                   "input_size": list(state.input_size), **explanation}
        view.json_path.write_text(json.dumps(payload, indent=1))
    return view


def view_cached(state: AppState, query_index: int, gallery_index: int, ranking: QueryRanking | None = None,
                labels: tuple[str, str] = ("query", "gallery"), export: bool = True) -> PairView:
    explanation = explain_cached(state, query_index, gallery_index, ranking)
    image1 = input_image(state.query.paths[query_index], state)
    image2 = input_image(state.gallery.paths[gallery_index], state)
    name = f"{Path(state.query.paths[query_index]).stem}_vs_{Path(state.gallery.paths[gallery_index]).stem}"
    return render(state, explanation, image1, image2, labels, export, name)


def view_images(state: AppState, image1: Image.Image, image2: Image.Image, names: tuple[str, str],
                export: bool = True) -> PairView:
    explanation = explain_images(state, image1, image2)
    explanation["images"] = list(names)
    labels = ("image 1", "image 2")
    return render(state, explanation, input_image(image1, state), input_image(image2, state), labels, export,
                  f"{Path(names[0]).stem}_vs_{Path(names[1]).stem}")


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
