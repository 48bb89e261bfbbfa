"""Attention quality of a trained CASN model on generated data with person masks.

Measured on the held-out test identities of a dataset written by ``casn_core.data.synth`` (every image
has a person mask at ``masks/<split folder>/<stem>.png``), on a fixed, seeded set of positive
query/gallery pairs (same person, different camera: the pairs the Market-1501 protocol counts):

1. **Mass inside the person mask**: the share of attention mass that falls on the person, for
   - identification attention: Grad-CAM on ``A`` of the **top predicted** identity (test identities are
     unseen in training, so there is no true class to explain; the top prediction is what the
     classifier "thinks" it sees), on both images of every pair;
   - Siamese attention: the two maps ``M_1, M_2`` of each positive pair (indicator of eq. 4 from the
     BCE head, docs/design.md, sec. 2, step 2).
   Maps are upsampled bilinearly to the image size; share = sum(map * mask) / sum(map). The
   reference a map with no preference would get is the mean mask area (``uniform``).
2. **Consistency distance** ``||M*_m1 - M*_m2||_2`` (eq. 5) of the positive pairs, and for contrast of
   as many negative pairs (same queries, a gallery image of another person).
3. **Deletion curve** (faithfulness): for a subset of the positive pairs, the top ``p`` of the pixels
   of the gallery image by its Siamese map (computed once, on the intact pair) are replaced by 0 in
   normalised space (the ImageNet mean colour), ``p`` = 0 .. ``max_fraction`` in ``steps`` steps, the
   query stays intact, and the same-person probability ``softmax(z)[1]`` of the pair is recorded. The
   same is done with a random map of the same resolution (uniform noise on the feature-map grid,
   upsampled the same way, seeded), so both blank blocks of the same shape. Area under the curve =
   mean probability over the fractions (trapezoid, normalised by the fraction range): a faithful map
   gives a lower AUC than the random one (``deletion_auc_gap = random - attention`` > 0).
   ``deletion_both_*`` blank both images, each by its own map. That variant is confounded: consistent
   maps blank the same body parts of both images with the same grey, which makes the pair look
   *more* alike, while two independent random maps blank different places.

Caveat: in rows trained without ``sa`` the BCE head never receives a gradient (``L_bce`` is part of
``L_sa``), so their Siamese maps and same-person probabilities come from a randomly initialised head.

The command line is ``python bench/attention_quality.py --checkpoint RUN/last.pt --data SYNTH_ROOT``;
``bench/ablation.py`` calls :func:`attention_quality` for every run. Shares of mass go through
:func:`casn_core.numeric.share`: a map with no mass at all (a random-init model can give an all-zero
Grad-CAM) counts as uniform, i.e. its share is the mask's area, never 0/0.
"""
from __future__ import annotations

from dataclasses import dataclass

import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from casn_core.attention.alignment import DEFAULT_THRESHOLD
from casn_core.attention.identification import gradcam
from casn_core.attention.siamese import pair_attention
from casn_core.data import build_test_transform, load_market, read_image
from casn_core.engine.extraction import autocast_context
from casn_core.numeric import safe_divide, share

MASK_FOLDER = "masks"


def mask_path(data_root: str | Path, image_path: str | Path) -> Path:
    """``ROOT/masks/<split folder>/<stem>.png`` for ``ROOT/<split folder>/<name>`` (casn_core.data.synth)."""
    image_path = Path(image_path)
    return Path(data_root) / MASK_FOLDER / image_path.parent.name / f"{image_path.stem}.png"


def load_mask(data_root: str | Path, image_path: str | Path, height: int, width: int) -> torch.Tensor:
    """The person mask of an image as a (height, width) float tensor of 0/1 (nearest resize)."""
    from PIL import Image

    path = mask_path(data_root, image_path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no person mask (attention quality needs data from casn_core.data.synth)")
    with Image.open(path) as image:
        mask = np.asarray(image.convert("L").resize((width, height), Image.NEAREST))
    return torch.from_numpy((mask > 127).astype(np.float32))


def positive_pairs(query: list, gallery: list, count: int, seed: int = 0) -> list[tuple[int, int]]:
    """Up to ``count`` (query index, gallery index) pairs of the same person from different cameras.

    Round-robin over the queries (one match each, then a second ...) in a seeded order, so that the
    pairs spread over as many identities as possible; the same arguments give the same pairs.
    """
    rng = np.random.default_rng(seed)
    matches = []
    for qi, q in enumerate(query):
        found = [gi for gi, g in enumerate(gallery) if g.pid == q.pid and g.camid != q.camid and g.pid > 0]
        if found:
            matches.append((qi, [found[i] for i in rng.permutation(len(found))]))
    order = rng.permutation(len(matches)) if matches else []
    pairs: list[tuple[int, int]] = []
    depth = 0
    while len(pairs) < count and any(depth < len(m[1]) for m in matches):
        for i in order:
            qi, found = matches[i]
            if depth < len(found) and len(pairs) < count:
                pairs.append((qi, found[depth]))
        depth += 1
    return pairs


def negative_pairs(query: list, gallery: list, positives: list[tuple[int, int]], seed: int = 1) -> list[tuple[int, int]]:
    """One negative pair (a gallery image of another person) for each positive pair's query."""
    rng = np.random.default_rng(seed)
    out = []
    for qi, _ in positives:
        others = [gi for gi, g in enumerate(gallery) if g.pid != query[qi].pid]
        out.append((qi, others[int(rng.integers(len(others)))]))
    return out


def mass_inside(maps: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Share of each map's mass inside its mask: maps (N, h, w) upsampled to masks (N, H, W).

    A map with no mass (all zeros) has no preference: it gets the share a uniform map would get,
    the mask's area fraction (:func:`casn_core.numeric.share`), so the result is always in [0, 1].
    """
    up = F.interpolate(maps[:, None].float(), size=masks.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
    up = up.clamp_min(0)
    total = up.sum(dim=(1, 2))
    inside = (up * masks).sum(dim=(1, 2))
    return share(inside, total, empty=masks.float().mean(dim=(1, 2)))


def _batches(n: int, size: int):
    for start in range(0, n, size):
        yield slice(start, min(n, start + size))


def top_class_gradcam(model, images: torch.Tensor, amp: str = "none", batch_size: int = 64) -> torch.Tensor:
    """Grad-CAM (N, h, w) of the top predicted identity of each image, model in eval mode."""
    device = next(model.parameters()).device
    cams = []
    for part in _batches(images.shape[0], batch_size):
        with torch.enable_grad(), autocast_context(device, amp):
            out = model(images[part].to(device))
            logits = out.logits.float()
            top = logits.argmax(dim=1)
            scores = logits.gather(1, top[:, None]).squeeze(1)
            cam = gradcam(out.feature_map, scores, create_graph=False)
        cams.append(cam.detach().float().cpu())
    return torch.cat(cams)


@torch.no_grad()
def image_features(model, images: torch.Tensor, amp: str = "none", batch_size: int = 64) -> torch.Tensor:
    """Pooled features ``f`` (N, D) of preprocessed images, eval mode."""
    from casn_core.engine.extraction import extract_tensors

    return torch.cat([extract_tensors(model, images[part], amp)[1] for part in _batches(images.shape[0], batch_size)])


@torch.no_grad()
def same_probability(model, features1: torch.Tensor, features2: torch.Tensor) -> torch.Tensor:
    """``softmax(BCE(f1 - f2))[1]`` for aligned feature batches."""
    return torch.softmax(model.pair_logits(features1, features2).float(), dim=1)[:, 1].cpu()


def deletion_masks(maps: torch.Tensor, size: tuple[int, int], fractions: list[float], seed: int = 0) -> torch.Tensor:
    """(F, N, H, W) 0/1 masks: 1 where a pixel is among the top ``fraction`` of its upsampled map.

    Ties (e.g. the zeros of a ReLU map) are broken by seeded noise far below the map's resolution.
    """
    up = F.interpolate(maps[:, None].float(), size=size, mode="bilinear", align_corners=False)[:, 0]
    n, h, w = up.shape
    flat = up.reshape(n, h * w)
    scale = flat.abs().amax(dim=1, keepdim=True)
    gen = torch.Generator().manual_seed(seed)
    flat = safe_divide(flat, scale) + 1e-6 * torch.rand(flat.shape, generator=gen)
    order = torch.argsort(flat, dim=1, descending=True)
    out = torch.zeros(len(fractions), n, h * w)
    for i, fraction in enumerate(fractions):
        k = int(round(fraction * h * w))
        if k:
            out[i].scatter_(1, order[:, :k], 1.0)
    return out.reshape(len(fractions), n, h, w)


def deletion_curve(model, images: tuple[torch.Tensor, torch.Tensor], maps: tuple[torch.Tensor, torch.Tensor],
                   fractions: list[float], amp: str = "none", seed: int = 0, side: str = "gallery") -> list[float]:
    """Mean same-person probability of the pairs after blanking the top ``fraction`` of a map.

    ``images`` and ``maps``: the pairs' first and second images and their maps.
    ``side="gallery"``: only the second image is blanked (by the second maps), the first stays intact;
    ``side="both"``: each image is blanked by its own map. Blanked pixels are set to 0 in normalised
    space (the ImageNet mean colour). With ``both``, consistent maps blank the same body parts of both
    images with the same grey, which makes the pair *more* alike: the one-sided curve avoids that
    confound and is the one reported by default.
    """
    if side not in ("gallery", "both"):
        raise ValueError(f"side must be 'gallery' or 'both', got {side!r}")
    (images1, images2), (maps1, maps2) = images, maps
    size = tuple(images1.shape[-2:])
    n = images1.shape[0]
    del2 = deletion_masks(maps2, size, fractions, seed + 1)
    blank2 = (images2[None] * (1 - del2[:, :, None])).reshape(-1, *images2.shape[1:])
    feats2 = image_features(model, blank2, amp)
    if side == "both":
        del1 = deletion_masks(maps1, size, fractions, seed)
        blank1 = (images1[None] * (1 - del1[:, :, None])).reshape(-1, *images1.shape[1:])
        feats1 = image_features(model, blank1, amp)
    else:
        feats1 = image_features(model, images1, amp).repeat(len(fractions), 1)
    probs = same_probability(model, feats1, feats2).reshape(len(fractions), n)
    return [float(v) for v in probs.mean(dim=1)]


def area_under(fractions: list[float], values: list[float]) -> float:
    """Trapezoid area normalised by the fraction range (= the curve's mean value)."""
    x = np.asarray(fractions, dtype=np.float64)
    y = np.asarray(values, dtype=np.float64)
    return float(safe_divide(np.sum((y[1:] + y[:-1]) * np.diff(x)) / 2, float(x[-1] - x[0]), empty=float(y.mean())))


def _stack_images(records: list, indices: list[int], transform) -> torch.Tensor:
    return torch.stack([transform(read_image(records[i].path)) for i in indices])


def _mean(values: torch.Tensor) -> float:
    values = values[torch.isfinite(values)]
    return float(values.mean()) if values.numel() else float("nan")


@dataclass(frozen=True)
class QualitySettings:
    """What :func:`attention_quality` measures on: ``num_pairs`` positive (and as many negative) pairs,
    deletion curves on the first ``deletion_pairs`` of them in ``deletion_steps`` steps up to
    ``max_fraction`` of each image blanked; the alignment ``threshold``, ``amp`` and the pairs' ``seed``."""

    threshold: float = DEFAULT_THRESHOLD
    amp: str = "none"
    num_pairs: int = 128
    deletion_pairs: int = 48
    deletion_steps: int = 10
    max_fraction: float = 0.5
    seed: int = 0


def attention_quality(model, data_root: str | Path, input_size: tuple[int, int],
                      settings: QualitySettings = QualitySettings(), query=None, gallery=None) -> dict:
    """All attention-quality numbers of one model (see the module docstring) as a flat dict.

    ``query`` and ``gallery`` are :class:`casn_core.maps.FeatureCache` of the test splits
    (``None``: extracted here); pairs are chosen from their records, so every model sees the same pairs.
    """
    height, width = input_size
    threshold, amp, seed = settings.threshold, settings.amp, settings.seed
    num_pairs, deletion_pairs = settings.num_pairs, settings.deletion_pairs
    deletion_steps, max_fraction = settings.deletion_steps, settings.max_fraction
    from casn_core.engine.extraction import ExtractionConfig, extract_split

    started = time.perf_counter()
    was_training = model.training
    model.eval()
    dataset = load_market(data_root, splits=("query", "gallery"))
    q_records, g_records = list(dataset.query), list(dataset.gallery)
    if query is None:
        query = extract_split(model, q_records, ExtractionConfig((height, width), amp=amp, progress=False), "query")
    if gallery is None:
        gallery = extract_split(model, g_records, ExtractionConfig((height, width), amp=amp, progress=False),
                                "gallery")
    positives = positive_pairs(q_records, g_records, num_pairs, seed)
    if not positives:
        raise ValueError(f"{data_root}: no cross-camera positive query/gallery pair")
    negatives = negative_pairs(q_records, g_records, positives, seed + 1)
    qi = [p[0] for p in positives]
    gi = [p[1] for p in positives]
    transform = build_test_transform(height, width)
    images_q = _stack_images(q_records, qi, transform)
    images_g = _stack_images(g_records, gi, transform)
    masks_q = torch.stack([load_mask(data_root, q_records[i].path, height, width) for i in qi])
    masks_g = torch.stack([load_mask(data_root, g_records[i].path, height, width) for i in gi])
    masks = torch.cat([masks_q, masks_g])

    # 1. identification attention: Grad-CAM of the top predicted class, both images of every pair
    cams = top_class_gradcam(model, torch.cat([images_q, images_g]), amp)
    ia_inside = mass_inside(cams, masks)

    # 1 and 2. Siamese attention of the positive (and negative) pairs from the cached maps
    device = next(model.parameters()).device
    with torch.no_grad():  # on the model's device; the numbers below are computed on the CPU, as the CAMs are
        pos = pair_attention(model, query.maps[qi].float().to(device), gallery.maps[gi].float().to(device),
                             threshold).detach().to("cpu")
        neg = pair_attention(model, query.maps[[n[0] for n in negatives]].float().to(device),
                             gallery.maps[[n[1] for n in negatives]].float().to(device), threshold).detach().to("cpu")
    sa_inside = torch.cat([mass_inside(pos.maps1, masks_q), mass_inside(pos.maps2, masks_g)])

    # 3. deletion curves on the first ``deletion_pairs`` positive pairs, attention vs random maps
    d = min(deletion_pairs, len(positives))
    fractions = [round(max_fraction * i / deletion_steps, 6) for i in range(deletion_steps + 1)]
    gen = torch.Generator().manual_seed(seed + 7)
    rand1 = torch.rand(pos.maps1[:d].shape, generator=gen)
    rand2 = torch.rand(pos.maps2[:d].shape, generator=gen)
    curves = {}
    for side in ("gallery", "both"):
        pair_images = (images_q[:d], images_g[:d])
        curves[side] = deletion_curve(model, pair_images, (pos.maps1[:d], pos.maps2[:d]), fractions, amp, seed, side)
        curves[side + "_random"] = deletion_curve(model, pair_images, (rand1, rand2), fractions, amp, seed, side)
    aucs = {name: area_under(fractions, values) for name, values in curves.items()}
    model.train(was_training)
    return {
        "pairs": len(positives),
        "ia_mass_in_mask": _mean(ia_inside),
        "sa_mass_in_mask": _mean(sa_inside),
        "uniform_mass_in_mask": float(masks.mean()),
        "consistency_positive": float(pos.distance.mean()),
        "consistency_negative": float(neg.distance.mean()),
        "same_probability_positive": float(pos.same_probability.mean()),
        "same_probability_negative": float(neg.same_probability.mean()),
        "deletion_pairs": d,
        "deletion_fractions": fractions,
        "deletion_side": "gallery",
        "deletion_curve": curves["gallery"],
        "deletion_curve_random": curves["gallery_random"],
        "deletion_auc": aucs["gallery"],
        "deletion_auc_random": aucs["gallery_random"],
        "deletion_auc_gap": aucs["gallery_random"] - aucs["gallery"],
        "deletion_both_curve": curves["both"],
        "deletion_both_curve_random": curves["both_random"],
        "deletion_both_auc": aucs["both"],
        "deletion_both_auc_random": aucs["both_random"],
        "deletion_both_auc_gap": aucs["both_random"] - aucs["both"],
        "seconds": round(time.perf_counter() - started, 2),
    }
