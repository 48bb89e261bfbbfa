"""Training settings: the paper's defaults where the paper gives them, ours marked as ours."""
from __future__ import annotations

import argparse

import pytest

from casn_core.commands.train import add_arguments as add_train_arguments
from casn_core.commands.train import config_from_args
from casn_core.engine.train_config import TrainConfig


def _parsed(*argv: str) -> TrainConfig:
    parser = argparse.ArgumentParser()
    add_train_arguments(parser)
    return config_from_args(parser.parse_args(["--data", "d", "--out", "o", *argv]))


def test_input_size_defaults_are_the_papers_per_backbone():
    # sec. 4: 288 x 144 for IDE, 384 x 128 for the PCB baseline
    assert (_parsed().height, _parsed().width) == (288, 144)
    assert (_parsed("--backbone", "pcb").height, _parsed("--backbone", "pcb").width) == (384, 128)
    assert (_parsed("--backbone", "pcb", "--height", "256", "--width", "128").height,) == (256,)
    paper = _parsed()
    assert (paper.lr, paper.momentum, paper.epochs, paper.batch_size, paper.lambda1, paper.lambda2, paper.alpha) == \
        (0.03, 0.9, 40, 16, 0.5, 0.05, 0.2)


def test_what_is_ours_says_so_in_the_help():
    parser = argparse.ArgumentParser()
    add_train_arguments(parser)
    text = parser.format_help()
    assert "ours (the paper names none): SGD weight decay" in " ".join(text.split())
    assert "Augmentation is ours" in " ".join(text.split())


def test_resume_refuses_exactly_the_settings_that_shape_the_run():
    """Every field is in the resume key unless declared ``resume=False`` (where data and run live, the
    initial weights, speed, device and reporting), so a new setting is guarded by default."""
    key = TrainConfig(data="d", out="o").resume_key()
    assert set(key) == {
        "backbone", "losses", "epochs", "batch_size", "height", "width", "seed", "lr", "momentum", "weight_decay",
        "lr_step_fraction", "lambda1", "lambda2", "alpha", "threshold", "positive_fraction", "pairs_per_epoch",
        "last_stride", "dropout", "max_steps_per_epoch", "bce_weight", "consistency_margin", "label_smoothing",
        "random_erasing", "triplet_weight", "triplet_margin", "identity_batches",
        "hard_negatives", "hard_negative_pool", "val_ids", "init_checkpoint"}
    assert TrainConfig(data="d", out="o", save_every=40, amp="bf16", workers=2).resume_key() == key
    assert TrainConfig(data="d", out="o", lr=0.01).resume_key() != key


def test_label_smoothing_reaches_the_loss_and_is_checked():
    assert _parsed().loss_config().label_smoothing == 0.0  # the paper's plain cross-entropy
    assert _parsed("--label-smoothing", "0.1").loss_config().label_smoothing == 0.1
    with pytest.raises(ValueError, match="--label-smoothing must be in \\[0, 1\\); got 1.0"):
        TrainConfig(data="d", out="o", label_smoothing=1.0)


def test_random_erasing_triplet_and_identity_batch_options_reach_the_run_and_are_checked():
    plain = _parsed()
    assert not plain.random_erasing and plain.loss_config().triplet_weight == 0.0  # the paper's
    assert not plain.identity_batches
    ours = _parsed("--random-erasing", "--triplet-weight", "1", "--triplet-margin", "0.5", "--identity-batches")
    assert ours.random_erasing and ours.identity_batches and ours.loss_config().triplet_weight == 1.0
    assert ours.loss_config().triplet_margin == 0.5
    with pytest.raises(ValueError, match="--triplet-weight and --triplet-margin must be >= 0; got -1"):
        TrainConfig(data="d", out="o", triplet_weight=-1)
