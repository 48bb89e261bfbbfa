"""CASN's objective ``L = L_ide + lambda1 L_ia + lambda2 L_sa`` (paper eq. 6) and its terms.

Each term is switchable for the paper's ablation (Table 3): ``ide``, ``ide,ia``, ``ide,sa``,
``ide,ia,sa`` (= CASN). Defaults are the paper's (sec. 4): lambda1 0.5, lambda2 0.05, alpha 0.2;
GAIN's omega 10 and sigma 0.5 for the soft mask; alignment threshold 0.3 (docs/design.md, sec. 2).
Batch losses are means over the batch (the paper writes sums; means keep lr independent of batch size).

Options of ours, not the paper's; each defaults to the paper's objective:

* ``bce_weight``: a weight on ``L_bce`` of its own. In eq. 6 ``L_bce`` sits inside ``lambda2 L_sa``, so
  the BCE head learns at ``lambda2`` = 0.05 times the backbone's rate; measured on the bundled
  checkpoint's frozen features, 900 head steps at that rate leave mean p(same) of true pairs at 0.51,
  at weight 1 they reach 0.77 (BENCHMARKS.md, "Siamese signals"). When set, ``lambda2`` weighs only the
  consistency part (``lambda2 alpha d_a``).
* ``consistency_margin``: the paper pulls the consistency distance of positive pairs only, so nothing
  stops other people's attention from being just as consistent (measured: d_a AUC 0.53). With a
  margin ``m``, negative pairs add ``alpha * mean(ReLU(m - d_a))`` (a contrastive hinge, Hadsell et
  al., CVPR 2006), inside the same weight as the positive term.
* ``label_smoothing``: the smoothed cross-entropy in ``L_ide`` (:func:`ide_loss`).
* ``triplet_weight``: a batch-hard triplet term on the L2-normalised features (:func:`triplet_loss`), the
  metric loss that torchreid's and fast-reid's strong baselines add to the identity loss; the ranking
  compares exactly these normalised features.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from casn_core.attention.gradcam import GradCAM, class_score_target
from casn_core.attention.identification import mask_images
from casn_core.attention.siamese import DEFAULT_THRESHOLD, PairAttention, attention_from_indicator, indicator_per_pair

LOSS_CHOICES = ("ide", "ide,ia", "ide,sa", "ide,ia,sa")


@dataclass
class LossConfig:
    """Which terms are on and their weights."""

    use_ia: bool = True
    use_sa: bool = True
    lambda1: float = 0.5
    lambda2: float = 0.05
    alpha: float = 0.2
    omega: float = 10.0
    sigma: float = 0.5
    threshold: float = DEFAULT_THRESHOLD
    aligned_length: int | None = None
    bce_weight: float | None = None  # ours: None = the paper's (L_bce inside lambda2 L_sa)
    consistency_margin: float | None = None  # ours: None = the paper's (positives only)
    label_smoothing: float = 0.0  # ours: 0 = the paper's plain cross-entropy in L_ide
    triplet_weight: float = 0.0  # ours: 0 = no metric loss, the paper's
    triplet_margin: float = 0.3

    @classmethod
    def from_names(cls, names: str, **overrides) -> "LossConfig":
        """``"ide,ia,sa"`` -> both attention terms on; ``ide`` is always on."""
        parts = [p.strip() for p in names.split(",") if p.strip()]
        unknown = set(parts) - {"ide", "ia", "sa"}
        if unknown or "ide" not in parts:
            raise ValueError(f"--losses must be one of {', '.join(LOSS_CHOICES)}; got {names!r}")
        return cls(use_ia="ia" in parts, use_sa="sa" in parts, **overrides)

    @property
    def names(self) -> str:
        return ",".join(["ide"] + (["ia"] if self.use_ia else []) + (["sa"] if self.use_sa else []))

    @property
    def siamese(self) -> SiameseLossConfig:
        """The eq. 5 settings of ``L_sa``, the one place they are taken from this config."""
        return SiameseLossConfig(alpha=self.alpha, threshold=self.threshold, length=self.aligned_length,
                                 margin=self.consistency_margin)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class SiameseLossConfig:
    """The hyper-parameters of ``L_sa`` (eq. 5); defaults are the paper's (sec. 4).

    ``alpha`` weighs the consistency distance; ``threshold`` and ``length`` are the alignment of the
    pair's attention rows before their distance (sec. 3.2.2: the span above the threshold, resized to
    ``length``, ``None`` = H); ``margin`` (ours, see the module docstring) adds the hinge on negative
    pairs, ``None`` = the paper's.
    """

    alpha: float = 0.2
    threshold: float = DEFAULT_THRESHOLD
    length: int | None = None
    margin: float | None = None


@dataclass
class LossTerms:
    """The total loss and each term (zero tensors for terms that are switched off)."""

    total: torch.Tensor
    ide: torch.Tensor
    ia: torch.Tensor
    bce: torch.Tensor
    consistency: torch.Tensor
    sa: torch.Tensor
    negative_consistency: torch.Tensor | None = None  # the margin term (ours); None when off
    triplet: torch.Tensor | None = None  # the batch-hard triplet term (ours); None when off

    def as_floats(self) -> dict[str, float]:
        return {name: float(value.detach()) for name, value in vars(self).items() if value is not None}


def ide_loss(logits: torch.Tensor, labels: torch.Tensor, label_smoothing: float = 0.0) -> torch.Tensor:
    """``L_ide``: cross-entropy over identities (eq. 1); with ``label_smoothing`` eps > 0 (ours) the target
    puts 1 - eps on the true identity and eps spread evenly over all (Szegedy et al., CVPR 2016; torchreid's
    softmax default, eps = 0.1), which keeps the classifier from driving the training loss to zero on
    identities it has memorised."""
    return F.cross_entropy(logits.float(), labels, label_smoothing=label_smoothing)


def triplet_loss(features: torch.Tensor, labels: torch.Tensor, margin: float = 0.3) -> torch.Tensor:
    """Batch-hard triplet loss (Hermans, Beyer and Leibe, "In Defense of the Triplet Loss for Person
    Re-Identification", 2017) on L2-normalised features, Euclidean distance (the ranking's metric):
    for every anchor with another image of its identity in the batch, ``ReLU(margin + max d(positive)
    - min d(negative))``, averaged over those anchors. An anchor without a positive or a negative in the
    batch is skipped; no such anchor gives a zero loss that still reaches the graph."""
    normed = F.normalize(features.float(), dim=1)
    # |a - b|^2 = 2 - 2 a.b for unit vectors; the clamp keeps sqrt's gradient finite on the diagonal
    distance = (2.0 - 2.0 * normed @ normed.T).clamp_min(1e-12).sqrt()
    same = labels[:, None] == labels[None, :]
    eye = torch.eye(len(labels), dtype=torch.bool, device=labels.device)
    positive = same & ~eye
    valid = positive.any(dim=1) & (~same).any(dim=1)
    if not valid.any():
        return distance.sum() * 0.0
    hardest_positive = distance.masked_fill(~positive, float("-inf")).amax(dim=1)
    hardest_negative = distance.masked_fill(same, float("inf")).amin(dim=1)
    return torch.relu(margin + hardest_positive - hardest_negative)[valid].mean()


def bce_loss(pair_logits: torch.Tensor, same: torch.Tensor) -> torch.Tensor:
    """``L_bce``: two-way softmax cross-entropy of same/different (eq. 3)."""
    return F.cross_entropy(pair_logits.float(), same.long())


def identification_attention_loss(
    model: nn.Module,
    images: torch.Tensor,
    feature_map: torch.Tensor,
    logits: torch.Tensor,
    labels: torch.Tensor,
    omega: float = 10.0,
    sigma: float = 0.5,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``L_ia`` (eq. 2): the true-class probability on the image with its Grad-CAM regions erased.

    ``logits`` must come from ``feature_map``. The Grad-CAM is built with ``create_graph=True`` so
    the loss reaches the parameters both through the masked image's forward pass and through the
    map. docs/design.md, sec. 2: the score is the softmax probability, bounded below by 0 (a raw logit can
    be pushed to minus infinity without learning anything). Returns ``(loss, cam)``.
    """
    cam = GradCAM(create_graph=True)(feature_map, class_score_target(logits, labels))
    masked = mask_images(images, cam, omega, sigma)
    masked_logits = model(masked).logits.float()
    probability = torch.softmax(masked_logits, dim=1).gather(1, labels[:, None]).squeeze(1)
    return probability.mean(), cam


def siamese_attention_loss(
    model: nn.Module,
    feature_map1: torch.Tensor,
    feature_map2: torch.Tensor,
    features1: torch.Tensor,
    features2: torch.Tensor,
    same: torch.Tensor,
    config: SiameseLossConfig = SiameseLossConfig(),
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, PairAttention | None, torch.Tensor | None]:
    """``L_sa = L_bce + alpha ||M*_m1 - M*_m2||_2`` (eq. 5); the distance term on positive pairs only.

    ``config``: alpha, the alignment threshold and length, and the margin (:class:`SiameseLossConfig`).
    With ``config.margin`` (ours, see the module docstring) negative pairs add ``alpha mean(ReLU(margin - d_a))``.
    The indicator (eq. 4) is each pair's own, computed as at test time (:func:`indicator_per_pair`), and a
    constant; the maps carry gradient into the backbone through ``A``.
    Returns ``(L_sa, L_bce, mean positive distance, attention of the pairs used, negative hinge or None)``.
    """
    alpha, margin = config.alpha, config.margin
    diff = features1 - features2
    # Eq. 4 is a property of one pair: the indicator comes from the head's inference behaviour, as at
    # test time, not from the train-mode forward below, whose batch statistics and dropout would tie
    # each pair's indicator to its batch partners (docs/design.md, sec. 2, "Eq. 4 in training"). It is taken
    # before that forward, which moves BatchNorm's running statistics towards this batch.
    indicator, eval_logits = indicator_per_pair(model.bce_head, diff)
    pair_logits = model.bce_head(diff)  # train mode: this forward is what L_bce trains
    bce = bce_loss(pair_logits, same)
    positive = same > 0.5
    used = positive if margin is None else torch.ones_like(positive)
    zero = bce.new_zeros(())
    consistency, hinge, attention = zero, None, None
    if used.any():
        same_probability = torch.softmax(eval_logits.float(), dim=1)[:, 1]
        attention = attention_from_indicator(
            model.pool, indicator[used], feature_map1[used], feature_map2[used],
            same_probability[used], config.threshold, config.length,
        )
        pos_in_used = positive[used]
        if pos_in_used.any():
            consistency = attention.distance[pos_in_used].mean()
        if margin is not None:
            hinge = torch.relu(margin - attention.distance[~pos_in_used]).mean() if (~pos_in_used).any() else zero
    sa = bce + alpha * (consistency if hinge is None else consistency + hinge)
    return sa, bce, consistency, attention, hinge


def casn_loss(
    model: nn.Module,
    images1: torch.Tensor,
    images2: torch.Tensor,
    labels1: torch.Tensor,
    labels2: torch.Tensor,
    same: torch.Tensor,
    config: LossConfig,
) -> LossTerms:
    """``L = L_ide + lambda1 L_ia + lambda2 L_sa`` (eq. 6) for a batch of pairs.

    Both images of every pair go through the shared backbone in one pass; ``L_ide`` and ``L_ia``
    use all 2B images, ``L_sa`` the B pairs.
    """
    batch = images1.shape[0]
    images = torch.cat([images1, images2])
    labels = torch.cat([labels1, labels2])
    out = model(images)
    zero = out.features.new_zeros(())
    ide = ide_loss(out.logits, labels, config.label_smoothing)
    total = ide
    ia = bce = consistency = sa = zero
    hinge = triplet = None
    if config.use_ia:
        ia, _ = identification_attention_loss(
            model, images, out.feature_map, out.logits, labels, config.omega, config.sigma
        )
        total = total + config.lambda1 * ia
    if config.use_sa:
        sa, bce, consistency, _, hinge = siamese_attention_loss(
            model,
            out.feature_map[:batch],
            out.feature_map[batch:],
            out.features[:batch],
            out.features[batch:],
            same,
            config.siamese,
        )
        if config.bce_weight is None:  # the paper's eq. 6
            total = total + config.lambda2 * sa
        else:  # ours: L_bce on its own weight, lambda2 on the consistency part only
            total = total + config.bce_weight * bce + config.lambda2 * (sa - bce)
    if config.triplet_weight > 0:
        triplet = triplet_loss(out.features, labels, config.triplet_margin)
        total = total + config.triplet_weight * triplet
    return LossTerms(total, ide, ia, bce, consistency, sa, hinge, triplet)
