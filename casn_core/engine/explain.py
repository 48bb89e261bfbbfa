"""``casn explain``: both explanations of one image pair, as JSON and as a figure.

The pair is explained from its two feature maps (the backbone runs once per image, docs/design.md, sec. 4):
the paper's Siamese attention (sec. 3.2.2, eq. 4-5) and the exact decomposition of the similarity
that ranks (:mod:`casn_core.attention.similarity`), in one :class:`casn_core.explanation.PairExplanation`.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from casn_core.engine.extraction import extract_tensors
from casn_core.explanation import PairExplanation, explain_maps
from casn_core.models.casn import CASN


def explain_files(model: CASN, input_size: tuple[int, int], path1: str | Path, path2: str | Path,
                  threshold: float) -> tuple[PairExplanation, np.ndarray, np.ndarray]:
    """Explain one pair of image files: ``(explanation, RGB image 1, RGB image 2)``, images at the model's input size."""
    from casn_core.data import build_test_transform
    from casn_core.images import load_rgb

    height, width = input_size
    transform = build_test_transform(height, width)
    pil1, pil2 = load_rgb(path1), load_rgb(path2)
    device = next(model.parameters()).device
    maps, _ = extract_tensors(model.eval(), torch.stack([transform(pil1), transform(pil2)]).to(device))
    explanation = explain_maps(model, maps[0], maps[1], threshold)
    shown = [np.asarray(p.resize((width, height))) for p in (pil1, pil2)]
    return explanation, shown[0], shown[1]
