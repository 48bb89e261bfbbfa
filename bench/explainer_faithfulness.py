"""Faithfulness of the explainers: deletion / insertion curves in pixel space and mass in the person mask.

Explainers, each a map over the feature-map grid of the gallery image of a pair (and of the query):

- ``similarity``: the exact decomposition of the retrieval cosine similarity ``s``
  (:mod:`casn_core.attention.similarity`; Stylianou et al., WACV 2019), gallery map ``m_g``;
- ``siamese``: CASN's Siamese attention (paper sec. 3.2.2), which explains ``p(same)`` of the BCE head;
- ``gradcam``: identification Grad-CAM (sec. 3.1.2, :func:`casn_core.attention.gradcam`) of the true
  identity's class score (``--split train``: the classifier's own identities) or of the top
  predicted class (``--split test``: held-out identities have no class);
- ``random``: uniform noise on the feature-map grid; ``uniform``: a constant map (pixel order
  decided by seeded tie-breaking noise alone, i.e. a pixel-level random order).

Deletion (Petsiuk et al., "RISE", BMVC 2018): the gallery image's top ``fraction`` of pixels by the
bilinearly upsampled map are set to 0 in normalised space (the ImageNet mean colour), the query stays
intact, and three quantities are re-measured: ``similarity`` (cosine of the retrieval features),
``same_probability`` (``softmax(BCE(f_q - f_g))[1]``) and ``class_score`` (the explained class's
logit of the gallery image). Insertion starts from the all-mean image and reveals the top pixels.
Every explainer is scored against every quantity; ``explains`` names the one it is meant for. AUC =
trapezoid area over fractions 0..1 (the curve's mean), per pair, then averaged; a faithful map has a *lower* deletion AUC and
a *higher* insertion AUC than ``random``: ``deletion_gap = random - explainer`` and
``insertion_gap = explainer - random`` (positive = better than random), with the standard error of the paired per-pair
differences (``*_gap_se``). ``mass_in_mask``: share of
the map's positive mass (upsampled to the image) inside the generator's person mask, over both
images of each pair; an all-zero map counts as uniform (the mask's area share).

Data: the procedural generator (:func:`casn_core.data.generate_dataset`, which writes person masks).
By default the bundled checkpoint's own training recipe (``--ids 300 --cameras 4 --images-per-id 8
--data-seed 7``, 256 x 128), so that ``--split train`` pairs show identities the classifier knows;
``--data ROOT`` reuses a generated dataset. Pairs: same person, different cameras.

    python bench/explainer_faithfulness.py --threads 1 --pairs 24 --steps 8
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from casn_core.attention import DEFAULT_THRESHOLD, gradcam, pair_attention
from casn_core.attention.similarity import explain_similarity
from casn_core.data import SynthSpec, build_test_transform, generate_dataset, load_market, read_image
from casn_core.numeric import safe_divide, share

EXPLAINERS = ("similarity", "siamese", "gradcam", "random", "uniform")
QUANTITIES = ("similarity", "same_probability", "class_score")
EXPLAINS = {"similarity": "similarity", "siamese": "same_probability", "gradcam": "class_score"}
MASK_FOLDER = "masks"


def mask_path(image_path: str | Path) -> Path:
    """``ROOT/masks/<split folder>/<stem>.png`` of ``ROOT/<split folder>/<name>`` (casn_core.data.synth)."""
    image_path = Path(image_path)
    return image_path.parents[1] / MASK_FOLDER / image_path.parent.name / f"{image_path.stem}.png"


def load_mask(image_path: str | Path, height: int, width: int) -> torch.Tensor:
    """The person mask (height, width) of 0/1 (nearest resize)."""
    from PIL import Image

    path = mask_path(image_path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no person mask (this bench needs data from casn_core.data.generate_dataset)")
    with Image.open(path) as image:
        mask = np.asarray(image.convert("L").resize((width, height), Image.NEAREST))
    return torch.from_numpy((mask > 127).astype(np.float32))


def cross_camera_pairs(first: list, second: list, count: int, seed: int) -> list[tuple[int, int]]:
    """Up to ``count`` (index in ``first``, index in ``second``) pairs: same pid, different camera.

    Round-robin over identities in a seeded order (one pair each, then a second ...), so the pairs
    spread over as many people as possible. ``first`` may be ``second`` (pairs within one split).
    """
    rng = np.random.default_rng(seed)
    by_pid: dict[int, list[tuple[int, int]]] = {}
    for a, ra in enumerate(first):
        for b, rb in enumerate(second):
            if ra.pid == rb.pid and ra.camid != rb.camid and ra.pid > 0 and (first is not second or a < b):
                by_pid.setdefault(ra.pid, []).append((a, b))
    pids = sorted(by_pid)
    queues = [[by_pid[p][i] for i in rng.permutation(len(by_pid[p]))] for p in (pids[i] for i in rng.permutation(len(pids)))]
    pairs: list[tuple[int, int]] = []
    depth = 0
    while len(pairs) < count and any(depth < len(q) for q in queues):
        for queue in queues:
            if depth < len(queue) and len(pairs) < count:
                pairs.append(queue[depth])
        depth += 1
    return pairs


def area_under(fractions: list[float], values: list[float]) -> float:
    """Trapezoid area under ``values`` over ``fractions``, divided by the fraction range (the mean value)."""
    x = np.asarray(fractions, dtype=np.float64)
    y = np.asarray(values, dtype=np.float64)
    area = float(np.sum((y[1:] + y[:-1]) * np.diff(x)) / 2)
    return float(safe_divide(area, float(x[-1] - x[0]), empty=float(y.mean())))


def pixel_order(maps: torch.Tensor, size: tuple[int, int], seed: int) -> torch.Tensor:
    """(N, H*W) pixel indices, most important first, of maps (N, h, w) upsampled bilinearly to ``size``.

    Ties (a constant map, the zeros of a ReLU map) are broken by seeded noise far below the map's
    resolution (each map is first scaled to a maximum magnitude of one).
    """
    up = F.interpolate(maps[:, None].float(), size=size, mode="bilinear", align_corners=False)[:, 0].flatten(1)
    scale = up.abs().amax(dim=1, keepdim=True)
    up = safe_divide(up, scale)
    gen = torch.Generator().manual_seed(seed)
    return torch.argsort(up + 1e-6 * torch.rand(up.shape, generator=gen), dim=1, descending=True)


def perturbation_masks(order: torch.Tensor, fractions: list[float], size: tuple[int, int]) -> torch.Tensor:
    """(F, N, H, W): 1 on the top ``fraction`` of each image's pixels in ``order``."""
    n, hw = order.shape
    out = torch.zeros(len(fractions), n, hw)
    for i, fraction in enumerate(fractions):
        k = int(round(fraction * hw))
        if k:
            out[i].scatter_(1, order[:, :k], 1.0)
    return out.reshape(len(fractions), n, *size)


@torch.no_grad()
def measure(model, query_features: torch.Tensor, images: torch.Tensor, classes: torch.Tensor,
            batch_size: int = 64) -> dict[str, torch.Tensor]:
    """The three explained quantities of (query, image) pairs; ``images`` (N, 3, H, W) aligned with the queries."""
    feats = []
    for start in range(0, images.shape[0], batch_size):
        maps = model.feature_map(images[start:start + batch_size]).float()
        feats.append(model.features(maps).float())
    gallery = torch.cat(feats)
    logits = model.ide_head(gallery)
    return {
        "similarity": (F.normalize(query_features, dim=1) * F.normalize(gallery, dim=1)).sum(dim=1),
        "same_probability": torch.softmax(model.pair_logits(query_features, gallery).float(), dim=1)[:, 1],
        "class_score": logits.gather(1, classes[:, None]).squeeze(1),
    }


def curves(model, query_features: torch.Tensor, images: torch.Tensor, classes: torch.Tensor, maps: torch.Tensor,
           fractions: list[float], seed: int, batch_size: int = 64) -> dict[str, dict[str, torch.Tensor]]:
    """Per-pair deletion and insertion curves ``{"deletion": {quantity: (F, N)}, "insertion": ...}`` of one explainer."""
    size = tuple(images.shape[-2:])
    top = perturbation_masks(pixel_order(maps, size, seed), fractions, size)  # (F, N, H, W)
    n, steps = images.shape[0], len(fractions)
    out = {}
    for mode, keep in (("deletion", 1 - top), ("insertion", top)):
        perturbed = (images[None] * keep[:, :, None]).reshape(-1, *images.shape[1:])
        values = measure(model, query_features.repeat(steps, 1), perturbed, classes.repeat(steps), batch_size)
        out[mode] = {name: value.reshape(steps, n) for name, value in values.items()}
    return out


def pair_areas(fractions: list[float], curves_fn: torch.Tensor) -> np.ndarray:
    """Per-pair areas (N,) of per-pair curves (F, N); their mean is the area of the mean curve."""
    values = curves_fn.double().numpy()
    return np.asarray([area_under(fractions, list(values[:, i])) for i in range(values.shape[1])])


def standard_error(values: np.ndarray) -> float:
    """Standard error of the mean (0 for a single value)."""
    return float(np.std(values, ddof=1) / np.sqrt(len(values))) if len(values) > 1 else 0.0


def mass_in_mask(maps: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Share of each map's positive mass inside its mask; maps (N, h, w) upsampled to masks (N, H, W).

    An all-zero map counts as uniform: its share is the mask's area fraction.
    """
    up = F.interpolate(maps[:, None].float(), size=masks.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
    up = up.clamp_min(0)
    return share((up * masks).sum(dim=(1, 2)), up.sum(dim=(1, 2)), empty=masks.mean(dim=(1, 2)))


def explainer_maps(model, images1: torch.Tensor, images2: torch.Tensor, classes1: torch.Tensor,
                   classes2: torch.Tensor, threshold: float, seed: int) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """``{explainer: (query maps (N, h, w), gallery maps (N, h, w))}`` for aligned pairs of images."""
    with torch.no_grad():
        maps1 = model.feature_map(images1).float()
        maps2 = model.feature_map(images2).float()
        sim = explain_similarity(model.pool, maps1, maps2)
        sia = pair_attention(model, maps1, maps2, threshold).detach()
    cams = []
    for images, classes in ((images1, classes1), (images2, classes2)):
        with torch.enable_grad():
            out = model(images)
            scores = out.logits.float().gather(1, classes[:, None]).squeeze(1)
            cams.append(gradcam(out.feature_map, scores, create_graph=False).detach())
    gen = torch.Generator().manual_seed(seed)
    shape = maps1.shape[:1] + maps1.shape[-2:]
    return {
        "similarity": (sim.map1, sim.map2),
        "siamese": (sia.maps1, sia.maps2),
        "gradcam": (cams[0], cams[1]),
        "random": (torch.rand(shape, generator=gen), torch.rand(shape, generator=gen)),
        "uniform": (torch.ones(shape), torch.ones(shape)),
    }


def _classes(model, images: torch.Tensor, records: list, split: str) -> torch.Tensor:
    """The explained class of each image: its true label (train split) or the top predicted class."""
    if split == "train":
        labels = torch.tensor([r.label for r in records])
        num_classes = model.ide_head.fc2.out_features if hasattr(model.ide_head, "fc2") else None
        if num_classes is not None and int(labels.max()) >= num_classes:
            raise ValueError(f"training labels reach {int(labels.max())} but the classifier has {num_classes} "
                             "classes: --split train needs the data the checkpoint was trained on")
        return labels
    with torch.no_grad():
        return model(images).logits.argmax(dim=1)


def faithfulness(model, data_root: str | Path, height: int, width: int, pairs: int = 24, steps: int = 8,
                 seed: int = 0, split: str = "train", threshold: float = DEFAULT_THRESHOLD,
                 batch_size: int = 64) -> list[dict]:
    """One result dict per explainer (see the module docstring), then a ``summary`` dict."""
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    if steps < 1 or pairs < 1:
        raise ValueError(f"steps and pairs must be >= 1, got steps={steps}, pairs={pairs}")
    started = time.perf_counter()
    model.eval()
    if split == "train":
        records = list(load_market(data_root, splits=("train",)).train)
        first = second = records
    else:
        dataset = load_market(data_root, splits=("query", "gallery"))
        first, second = list(dataset.query), list(dataset.gallery)
    chosen = cross_camera_pairs(first, second, pairs, seed)
    if not chosen:
        raise ValueError(f"{data_root}: no cross-camera pair of one person in the {split} split")
    rec1, rec2 = [first[a] for a, _ in chosen], [second[b] for _, b in chosen]
    transform = build_test_transform(height, width)
    images1 = torch.stack([transform(read_image(r.path)) for r in rec1])
    images2 = torch.stack([transform(read_image(r.path)) for r in rec2])
    masks1 = torch.stack([load_mask(r.path, height, width) for r in rec1])
    masks2 = torch.stack([load_mask(r.path, height, width) for r in rec2])
    classes1 = _classes(model, images1, rec1, split)
    classes2 = _classes(model, images2, rec2, split)
    maps = explainer_maps(model, images1, images2, classes1, classes2, threshold, seed)
    with torch.no_grad():
        query_features = model.features(model.feature_map(images1).float()).float()
        intact = {k: float(v.mean()) for k, v in measure(model, query_features, images2, classes2, batch_size).items()}
    fractions = [i / steps for i in range(steps + 1)]
    all_curves = {name: curves(model, query_features, images2, classes2, maps[name][1], fractions, seed + 1, batch_size)
                  for name in EXPLAINERS}
    areas = {name: {mode: {q: pair_areas(fractions, all_curves[name][mode][q]) for q in QUANTITIES}
                    for mode in ("deletion", "insertion")} for name in EXPLAINERS}
    rows = []
    for name in EXPLAINERS:
        inside = torch.cat([mass_in_mask(maps[name][0], masks1), mass_in_mask(maps[name][1], masks2)])
        per_quantity = {}
        for q in QUANTITIES:
            deletion, insertion = areas[name]["deletion"][q], areas[name]["insertion"][q]
            deletion_gap = areas["random"]["deletion"][q] - deletion  # paired, per pair
            insertion_gap = insertion - areas["random"]["insertion"][q]
            per_quantity[q] = {
                "deletion_auc": float(deletion.mean()),
                "insertion_auc": float(insertion.mean()),
                "deletion_gap_to_random": float(deletion_gap.mean()),
                "deletion_gap_se": standard_error(deletion_gap),
                "insertion_gap_to_random": float(insertion_gap.mean()),
                "insertion_gap_se": standard_error(insertion_gap),
                "deletion_curve": [float(v) for v in all_curves[name]["deletion"][q].mean(dim=1)],
                "insertion_curve": [float(v) for v in all_curves[name]["insertion"][q].mean(dim=1)],
            }
        rows.append({"bench": "explainer_faithfulness", "explainer": name, "explains": EXPLAINS.get(name),
                     "mass_in_mask": float(inside.mean()), "quantities": per_quantity})
    rows.append({
        "bench": "explainer_faithfulness", "summary": True, "split": split, "pairs": len(chosen),
        "identities": len({r.pid for r in rec1}), "input_size": [height, width], "fractions": fractions,
        "intact": intact, "mask_area": float(torch.cat([masks1, masks2]).mean()),
        "class": "true identity" if split == "train" else "top predicted", "seed": seed,
        "seconds": round(time.perf_counter() - started, 2),
    })
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", default="checkpoints/casn_mobilenetv2_synth.pt")
    parser.add_argument("--data", help="a dataset written by `python -m casn_core synth` (default: generate one)")
    parser.add_argument("--ids", type=int, default=300, help="generated identities (the bundled model's recipe)")
    parser.add_argument("--cameras", type=int, default=4)
    parser.add_argument("--images-per-id", type=int, default=8)
    parser.add_argument("--data-seed", type=int, default=7)
    parser.add_argument("--split", choices=("train", "test"), default="train")
    parser.add_argument("--pairs", type=int, default=24)
    parser.add_argument("--steps", type=int, default=8, help="fractions 0, 1/steps, ..., 1")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    from casn_core.checkpoint import checkpoint_info, load_model

    model, payload = load_model(args.checkpoint, torch.device("cpu"))
    info = checkpoint_info(payload)
    height, width = info.input_size
    with tempfile.TemporaryDirectory(prefix="faithfulness_") as tmp:
        root = args.data
        if root is None:
            root = Path(tmp) / "synth"
            generate_dataset(root, SynthSpec(args.ids, args.cameras, args.images_per_id, args.data_seed))
        rows = faithfulness(model, root, height, width, args.pairs, args.steps, args.seed, args.split,
                            info.threshold, args.batch_size)
    for row in rows:
        if row.get("summary"):
            row.update(checkpoint=args.checkpoint, data=args.data or (
                f"generated: --ids {args.ids} --cameras {args.cameras} --images-per-id {args.images_per_id} "
                f"--seed {args.data_seed}"), threads=torch.get_num_threads())
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
