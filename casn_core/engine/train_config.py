"""Training settings: :class:`TrainConfig` and the ``casn train`` options built from its fields.

Each option is declared once, with its help, as a field; defaults are the paper's (sec. 4,
"Implementation Details"), and every option of ours says "ours" in its help and defaults to the
paper's behaviour (docs/design.md, sec. 2).
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields

from casn_core.attention.siamese import DEFAULT_THRESHOLD
from casn_core.engine.extraction import AMP_CHOICES
from casn_core.losses import LOSS_CHOICES, LossConfig
from casn_core.models.backbones import BACKBONES


def _option(default, help: str, resume: bool = True, **cli):
    """A :class:`TrainConfig` field with its command-line help (each option is declared once);
    ``resume=False``: a ``--resume`` may change it (see :meth:`TrainConfig.resume_key`)."""
    return field(default=default, metadata={"help": help, "resume": resume, **cli})


def _topk(text: str) -> int | None:
    return None if str(text).lower() == "all" else int(text)


@dataclass
class TrainConfig:
    """Everything a run depends on; stored in every checkpoint. ``python -m casn_core train``'s options
    are built from these fields (:func:`casn_core.commands.train.add_arguments`)."""

    data: str = field(metadata={"help": "Market-1501-layout dataset root (bounding_box_train/ ...)", "resume": False})
    out: str = field(metadata={"help": "run directory (checkpoints, metrics.jsonl, train.log)", "resume": False})
    backbone: str = _option("resnet50", "backbone", choices=BACKBONES)
    losses: str = _option("ide,ia,sa", "the paper's ablation rows", choices=LOSS_CHOICES)
    epochs: int = _option(40, "training epochs")
    batch_size: int = _option(16, "pairs per step (2x images)")
    height: int | None = _option(None, "input height (default: the paper's, 384 for pcb, else 288)")
    width: int | None = _option(None, "input width (default: the paper's, 128 for pcb, else 144)")
    pretrained: str = _option("imagenet", "imagenet, none, or a weight file path", resume=False)
    seed: int = _option(0, "seed of initialisation, pairs and augmentation")
    lr: float = _option(0.03, "SGD learning rate")
    momentum: float = _option(0.9, "SGD momentum")
    weight_decay: float = _option(5e-4, "ours (the paper names none): SGD weight decay, the usual re-id value")
    lr_step_fraction: float = _option(0.75, "lr x0.1 after this fraction of the epochs", cli=False)
    lambda1: float = _option(0.5, "weight of L_ia (eq. 6)")
    lambda2: float = _option(0.05, "weight of L_sa (eq. 6); with --bce-weight, of its consistency part only")
    alpha: float = _option(0.2, "weight of the consistency distance inside L_sa (eq. 5)")
    threshold: float = _option(DEFAULT_THRESHOLD, "alignment threshold t")
    positive_fraction: float = _option(0.5, "share of positive pairs")
    pairs_per_epoch: int | None = _option(None, "default: one pair per training image")
    last_stride: int = _option(1, "stride of the backbone's last stage", choices=(1, 2))
    dropout: float = _option(0.5, "dropout of both classifier heads")
    # ours, each defaulting to the paper's behaviour:
    bce_weight: float | None = _option(
        None, "ours: weight of L_bce on its own (default: the paper's, L_bce inside lambda2 L_sa, i.e. "
              "lambda2); the head then learns at this rate and lambda2 weighs the consistency only")
    consistency_margin: float | None = _option(
        None, "ours: also push the consistency distance of negative pairs above this margin "
              "(alpha * ReLU(m - d_a)); default: the paper's, positives only")
    label_smoothing: float = _option(
        0.0, "ours: label smoothing eps of L_ide (Szegedy et al., 2016; torchreid's softmax default 0.1); "
             "default 0: the paper's plain cross-entropy")
    random_erasing: bool = _option(
        False, "ours: random erasing augmentation (Zhong et al., AAAI 2020; p 0.5, 2-40%% of the image, as in "
               "torchreid and fast-reid); default off, the paper's resize-only input")
    triplet_weight: float = _option(
        0.0, "ours: weight of a batch-hard triplet loss on the L2-normalised features (Hermans et al., 2017), "
             "over the 2B images of each step (its positives: the positive pairs' images, or every image's with "
             "--identity-batches). 0 = off, the paper's")
    triplet_margin: float = _option(0.3, "ours: margin of --triplet-weight's triplet loss")
    identity_batches: bool = _option(
        False, "ours: draw each batch's pairs from batch-size x positive-fraction identities only (one positive "
               "pair each, negatives between them), so every image has positives and negatives in its batch, as "
               "the P x K batches of a triplet loss (Hermans et al., 2017); default: independent pairs, the paper's")
    hard_negatives: float = _option(
        0.0, "ours: fraction of negative pairs drawn from the nearest other identities in feature space, "
             "re-mined at every epoch start (default 0: the paper's random negatives)")
    hard_negative_pool: int = _option(10, "ours: how many nearest identities a hard negative is drawn from")
    head_steps: int = _option(
        0, "ours: after the last epoch, train only the BCE head for this many steps of --batch-size pairs on "
           "frozen, unaugmented features of the training images (classifier re-training, Kang et al., ICLR "
           "2020); the joint head lags the moving features. 0 = off, the paper's", resume=False)
    init_checkpoint: str | None = _option(
        None, "ours: start from the model weights of this CASN checkpoint (same backbone and identity count; "
              "fresh optimizer and schedule), e.g. to fine-tune a paper-default run with the options above")
    val_ids: int = _option(
        0, "ours: hold out N training identities as validation query/gallery and choose the ranking weight "
           "w and K on them after training (stored in the checkpoint); 0 = off, the paper's protocol")
    val_rule: str = _option("one-se", "ours: how --val-ids picks w: one-se (smallest w within one standard error "
                                      "of the best validation mAP) or best", choices=("one-se", "best"), resume=False)
    device: str = _option("auto", "auto, cpu, cuda, cuda:N", resume=False)
    amp: str = _option("none", "mixed precision", choices=AMP_CHOICES, resume=False)
    channels_last: bool = _option(False, "channels-last memory format", resume=False)
    compile: bool = _option(False, "torch.compile the backbone", resume=False)
    workers: int = _option(0, "DataLoader worker processes", resume=False)
    decode_cache: str | None = _option(
        None, "ours: decode and resize the training images once into a uint8 .npy in this folder (memory-mapped, "
              "rebuilt when the files or size change) instead of decoding every image at every step; the same "
              "augmented tensors, faster on CPUs", resume=False)
    eval_every: int = _option(0, "evaluate on query/gallery every N epochs and keep best.pt (off by default)",
                              resume=False)
    eval_topk: int | None = _option(100, "CASN re-ranking depth during evaluation, or 'all'", parse=_topk, resume=False)
    save_every: int = _option(
        0, "also write last.pt every N steps inside an epoch, so a stopped run loses at most N steps; "
           "--resume continues from that step (exactly with --workers 0: the same pairs, "
           "augmentation and dropout draws as the uninterrupted run). One process only: under torchrun at "
           "epoch ends. 0 = at epoch ends only", resume=False)
    max_steps_per_epoch: int | None = _option(None, "cap steps per epoch (smoke tests)")
    skip_bad_images: bool = _option(False, "drop unreadable images instead of stopping", resume=False)
    extra: dict = field(default_factory=dict, metadata={"cli": False, "resume": False})

    def __post_init__(self) -> None:
        # the paper's input sizes (sec. 4, "Implementation Details"): 288 x 144, and PCB's 384 x 128
        default = PAPER_INPUT_SIZES.get(self.backbone, PAPER_INPUT_SIZES["resnet50"])
        if self.height is None:
            self.height = default[0]
        if self.width is None:
            self.width = default[1]
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ValueError(f"--label-smoothing must be in [0, 1); got {self.label_smoothing}")
        if self.triplet_weight < 0 or self.triplet_margin < 0:
            raise ValueError(f"--triplet-weight and --triplet-margin must be >= 0; got {self.triplet_weight} "
                             f"and {self.triplet_margin}")

    def loss_config(self) -> LossConfig:
        return LossConfig.from_names(
            self.losses, lambda1=self.lambda1, lambda2=self.lambda2, alpha=self.alpha, threshold=self.threshold,
            bce_weight=self.bce_weight, consistency_margin=self.consistency_margin,
            label_smoothing=self.label_smoothing, triplet_weight=self.triplet_weight,
            triplet_margin=self.triplet_margin,
        )

    def resume_key(self) -> dict:
        """The settings that must not change between a run and its ``--resume``: every field but those
        declared with ``resume=False`` (where the data and the run live, ``--pretrained``, which the
        checkpoint replaces, and how fast, where and how often it runs and reports)."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.metadata.get("resume", True)}


PAPER_INPUT_SIZES = {"resnet50": (288, 144), "pcb": (384, 128)}
"""Input (height, width) by backbone, paper sec. 4; other backbones take the IDE size."""
