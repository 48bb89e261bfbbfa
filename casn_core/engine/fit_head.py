"""``casn fit-head``: the paper's Siamese attention (sec. 3.2) for a torchreid model.

The BCE head (eq. 3, ``z = BCE(f1 - f2)``) is trained on the frozen torchreid model's features of a
labelled Market-layout training set, by the head-only stage of training
(:func:`casn_core.engine.train.finish_bce_head`: seeded half-positive pair batches, SGD), and the
result is written as a CASN checkpoint that wraps the torchreid model and the head
(:class:`casn_core.models.foreign.TorchreidCASN`). From then on ``eval``, ``explain``, ``search``,
``tune`` and the app take that checkpoint like any other, without ``--arch``: the indicator of eq. 4,
the Siamese attention maps, ``d_a`` and the CASN ranking all exist for it.

With ``--val-ids N`` (default 4) N identities seen by two or more cameras are held out of the
training images; the head's ``p(same)`` is scored on every cross-camera pair of their images
(:func:`casn_core.engine.pair_signals.sampled_pair_signals`: ROC AUC, 0.5 = chance), next to the
AUC of torchreid's own feature distance on the same pairs, and stored in the checkpoint.
"""
from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from pathlib import Path

from casn_core.attention.siamese import DEFAULT_THRESHOLD
from casn_core.checkpoint import CheckpointError, load_model, save_checkpoint
from casn_core.models.foreign import fresh_bce_head

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FitHeadSettings:
    """What ``casn fit-head`` does; ``lr``, ``batch_size`` and ``positive_fraction`` are the paper's (sec. 4)."""

    checkpoint: str
    arch: str
    data: str
    out: str
    input_size: tuple[int, int] = (256, 128)
    head_steps: int = 2000
    batch_size: int = 16
    lr: float = 0.03
    val_ids: int = 4
    seed: int = 0
    device: str = "auto"


def fit_head(settings: FitHeadSettings, progress: bool = True) -> dict:
    """Train the BCE head on the frozen model and write ``settings.out``; returns the stored ``fit_head`` entry."""
    from casn_core.data import load_market
    from casn_core.engine.inference import resolve_device
    from casn_core.engine.pair_signals import extract_records, sampled_pair_signals
    from casn_core.engine.train import TrainConfig, TrainData, TrainState, finish_bce_head, relabel
    from casn_core.engine.tune import validation_split

    model, _ = load_model(settings.checkpoint, resolve_device(settings.device), arch=settings.arch,
                          input_size=settings.input_size)
    if model.explain_refusal is not None:
        raise CheckpointError(f"{model.explain_refusal}: the Siamese attention needs the map, so no head is fitted")
    fresh_bce_head(model, settings.seed)
    records = list(load_market(settings.data, splits=("train",)).train)
    held: list = []
    if settings.val_ids:
        records, query, gallery = validation_split(records, settings.val_ids, settings.seed)
        held = query + gallery
    records, num_ids = relabel(records)
    height, width = settings.input_size
    config = TrainConfig(data=settings.data, out=str(Path(settings.out).parent), backbone="resnet50", epochs=0,
                         height=height, width=width, head_steps=settings.head_steps, batch_size=settings.batch_size,
                         lr=settings.lr, seed=settings.seed)
    log.info("fitting the BCE head of %s on %d images of %d identities (%d held out)", model.config.backbone,
             len(records), num_ids, settings.val_ids)
    # the head-only stage of training reads the model, the records and their labels; nothing else of a run
    state = TrainState(model=model, model_config=None, optimizer=None, scheduler=None)
    stage = finish_bce_head(config, None, state, TrainData(None, records, num_ids, [], []))
    model.eval()
    entry = {"torchreid_checkpoint": str(settings.checkpoint), "arch": settings.arch, "data": str(settings.data),
             "train_images": len(records), "train_ids": num_ids, "settings": {**asdict(settings),
                                                                              "input_size": [height, width]}}
    if held:
        cache = extract_records(model, held, settings.input_size, desc="held-out", progress=progress)
        # every cross-camera pair of the held-out images (a query and gallery of the same images)
        entry["held_out"] = {"ids": sorted({r.pid for r in held}), "images": len(held),
                             **sampled_pair_signals(model, cache, cache, DEFAULT_THRESHOLD)}
    save_checkpoint(settings.out, {
        "model": model.state_dict(), "model_config": model.config.to_dict(), "input_size": [height, width],
        "head_stage": stage, "fit_head": entry,
    })
    return {"head_stage": stage, **entry}
