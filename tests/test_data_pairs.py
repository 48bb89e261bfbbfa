"""Siamese training pairs (paper sec. 3.3; half positive, half negative by default)."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from PIL import Image

from casn_core.data import (ImageRecord, PairDataset, PairSampling, PairSamplingError, build_test_transform,
                            pair_indices)
from casn_core.data.pairs import identity_batch_pair_indices, nearest_identities


def _labels(rng_seed: int = 0) -> np.ndarray:
    """40 identities with 1..12 images each (some singletons), shuffled."""
    rng = np.random.default_rng(rng_seed)
    labels = np.repeat(np.arange(40), rng.integers(1, 13, size=40))
    return rng.permutation(labels)


def _check_pairs(labels: np.ndarray, pairs: np.ndarray) -> None:
    i, j, same = pairs.T
    assert np.all(i != j)
    assert np.array_equal(labels[i] == labels[j], same == 1)


@pytest.mark.parametrize("fraction", [0.5, 0.3, 0.8, 0.0, 1.0])
def test_positive_fraction_within_two_percent(fraction):
    labels = _labels()
    pairs = pair_indices(labels, len(labels), fraction, np.random.default_rng(1))
    assert pairs.shape == (len(labels), 3)
    _check_pairs(labels, pairs)
    assert abs(pairs[:, 2].mean() - fraction) <= 0.02


def test_every_identity_with_two_images_is_used():
    labels = _labels()
    counts = np.bincount(labels)
    pairs = pair_indices(labels, len(labels), 0.5, np.random.default_rng(2))
    positives = pairs[pairs[:, 2] == 1]
    assert set(labels[positives[:, 0]]) == set(np.flatnonzero(counts >= 2))
    # negatives cycle through every image as an anchor (either side of the pair)
    negatives = pairs[pairs[:, 2] == 0]
    assert len(set(negatives[:, :2].ravel())) >= 0.6 * len(labels)


def test_same_seed_same_pairs_and_errors():
    labels = _labels()
    a = pair_indices(labels, 500, 0.5, np.random.default_rng(7))
    b = pair_indices(labels, 500, 0.5, np.random.default_rng(7))
    c = pair_indices(labels, 500, 0.5, np.random.default_rng(8))
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    with pytest.raises(PairSamplingError, match="no identity has two images"):
        pair_indices(np.arange(10), 10, 0.5, np.random.default_rng(0))
    assert pair_indices(np.arange(10), 10, 0.0, np.random.default_rng(0))[:, 2].sum() == 0
    with pytest.raises(PairSamplingError, match="two identities"):
        pair_indices(np.zeros(5, dtype=int), 10, 0.5, np.random.default_rng(0))
    with pytest.raises(PairSamplingError, match="positive_fraction"):
        pair_indices(labels, 10, 1.5, np.random.default_rng(0))


@pytest.fixture
def records(tmp_path) -> list[ImageRecord]:
    out = []
    for label in range(6):
        for k in range(1 + label % 3):
            path = tmp_path / f"{label + 1:04d}_c{k + 1}s1_{len(out):06d}_00.jpg"
            Image.new("RGB", (16, 32), (label * 40, k * 60, 100)).save(path)
            out.append(ImageRecord(str(path), label + 1, k + 1, label))
    return out


def test_pair_dataset_epochs_and_items(records):
    data = PairDataset(records, build_test_transform(32, 16),
                       PairSampling(positive_fraction=0.5, pairs_per_epoch=200, seed=3))
    assert len(data) == 200 and abs(data.positive_count / 200 - 0.5) <= 0.02
    first = list(data.pairs)
    data.set_epoch(1)
    assert data.pairs != first
    data.set_epoch(0)
    assert data.pairs == first
    assert PairDataset(records, None, PairSampling(0.5, 200, seed=3)).pairs == first
    assert PairDataset(records, None, PairSampling(0.5, 200, seed=4)).pairs != first
    img1, img2, label1, label2, same = data[0]
    i, j, s = data.pairs[0]
    assert img1.shape == img2.shape == (3, 32, 16)
    assert (label1, label2, same) == (records[i].label, records[j].label, float(s))
    assert isinstance(same, float) and (same == 1.0) == (label1 == label2)
    batch = next(iter(torch.utils.data.DataLoader(data, batch_size=8)))
    assert batch[0].shape == (8, 3, 32, 16) and batch[2].dtype == torch.int64


def test_pair_dataset_default_length_and_errors(records):
    assert len(PairDataset(records)) == len(records)
    singles = [r for r in records if r.label % 3 == 0]  # one image each
    with pytest.raises(PairSamplingError, match="no identity has two images"):
        PairDataset(singles)
    with pytest.raises(PairSamplingError, match="no training records"):
        PairDataset([])
    with pytest.raises(PairSamplingError, match="pairs_per_epoch must be >= 1, got 0"):
        PairSampling(pairs_per_epoch=0)
    with pytest.raises(PairSamplingError, match="world must be >= 1, got 0"):
        PairSampling(world=0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        PairSampling().seed = 1  # type: ignore[misc]  settings are fixed once a dataset holds them


def _clustered_features(labels: np.ndarray, seed: int = 0) -> torch.Tensor:
    """Features whose identity centroids lie on a line: identity i's nearest are i-1 and i+1."""
    gen = torch.Generator().manual_seed(seed)
    angle = torch.as_tensor(labels, dtype=torch.float32) * 0.02
    base = torch.stack([torch.cos(angle), torch.sin(angle)], 1)
    return base + 0.001 * torch.randn(len(labels), 2, generator=gen)


def test_nearest_identities_are_other_identities_nearest_first():
    labels = _labels()
    table = nearest_identities(_clustered_features(labels), labels, k=2)
    assert set(table) == set(labels.tolist())
    for label, near in table.items():
        assert label not in near and len(near) == 2
        assert set(near) <= {label - 2, label - 1, label + 1, label + 2}
        assert abs(near[0] - label) == 1


def test_hard_negatives_are_other_identities_from_the_table_and_seeded():
    labels = _labels()
    table = nearest_identities(_clustered_features(labels), labels, k=3)
    pairs = pair_indices(labels, 400, 0.5, np.random.default_rng(5), hard_fraction=1.0, neighbours=table)
    _check_pairs(labels, pairs)  # negatives never pair an identity with itself
    negatives = pairs[pairs[:, 2] == 0]
    assert len(negatives) == 200
    near = [labels[j] in table[labels[i]] or labels[i] in table[labels[j]] for i, j, _ in negatives]
    assert all(near)  # every negative is a hard one (either side may be the anchor after the swap)
    again = pair_indices(labels, 400, 0.5, np.random.default_rng(5), hard_fraction=1.0, neighbours=table)
    assert np.array_equal(pairs, again)
    other = pair_indices(labels, 400, 0.5, np.random.default_rng(6), hard_fraction=1.0, neighbours=table)
    assert not np.array_equal(pairs, other)
    half = pair_indices(labels, 400, 0.5, np.random.default_rng(5), hard_fraction=0.5, neighbours=table)
    _check_pairs(labels, half)


def test_hard_fraction_zero_keeps_the_papers_draws_and_bad_fractions_fail():
    labels = _labels()
    table = nearest_identities(_clustered_features(labels), labels, k=3)
    plain = pair_indices(labels, 300, 0.5, np.random.default_rng(7))
    assert np.array_equal(plain, pair_indices(labels, 300, 0.5, np.random.default_rng(7), 0.0, table))
    assert np.array_equal(plain, pair_indices(labels, 300, 0.5, np.random.default_rng(7), 0.5, None))
    with pytest.raises(PairSamplingError, match="hard_fraction"):
        pair_indices(labels, 10, 0.5, np.random.default_rng(0), hard_fraction=1.5, neighbours=table)


def test_pair_dataset_uses_the_epochs_neighbour_table(records):
    dataset = PairDataset(records, sampling=PairSampling(pairs_per_epoch=40, seed=1, hard_fraction=1.0))
    labels = dataset.labels
    table = {int(l): [int(m) for m in np.unique(labels) if m != l][:1] for l in np.unique(labels)}
    dataset.set_epoch(0, table)
    for i, j, same in dataset.pairs:
        if not same:
            assert labels[j] in table[labels[i]] or labels[i] in table[labels[j]]


def _batch_ids(labels, batch) -> set:
    return set(labels[batch[:, 0]].tolist()) | set(labels[batch[:, 1]].tolist())


@pytest.mark.parametrize("batch_size, fraction", [(16, 0.5), (8, 0.25), (6, 0.5)])
def test_identity_batches_draw_each_batch_from_its_positive_identities(batch_size, fraction):
    labels = _labels()
    pairs = identity_batch_pair_indices(labels, 200, fraction, batch_size, np.random.default_rng(2))
    assert pairs.shape == (200, 3)
    _check_pairs(labels, pairs)
    per_batch = int(round(batch_size * fraction))
    for start in range(0, 200 - batch_size + 1, batch_size):
        batch = pairs[start:start + batch_size]
        positives = batch[batch[:, 2] == 1]
        assert len(positives) == per_batch
        ids = set(labels[positives[:, 0]].tolist())
        assert len(ids) == per_batch  # one positive pair per identity, no identity twice
        assert _batch_ids(labels, batch) == ids  # negatives join two of the batch's identities
    # every identity with two images is used over an epoch; singletons never are
    used = set(labels[pairs[:, :2].ravel()].tolist())
    counts = np.bincount(labels)
    assert used == set(np.flatnonzero(counts >= 2).tolist())
    again = identity_batch_pair_indices(labels, 200, fraction, batch_size, np.random.default_rng(2))
    assert np.array_equal(pairs, again)


def test_identity_batches_are_whole_on_every_process():
    from torch.utils.data import DistributedSampler

    labels = _labels()
    world, batch_size = 3, 8
    pairs = identity_batch_pair_indices(labels, 240, 0.5, batch_size, np.random.default_rng(0), world=world)
    single = identity_batch_pair_indices(labels, 240, 0.5, batch_size, np.random.default_rng(0))
    assert sorted(map(tuple, pairs.tolist())) == sorted(map(tuple, single.tolist()))  # the same pairs, laid out
    for rank in range(world):
        mine = pairs[list(DistributedSampler(range(len(pairs)), world, rank, shuffle=False))]
        for start in range(0, len(mine), batch_size):
            batch = mine[start:start + batch_size]
            assert len(set(labels[batch[batch[:, 2] == 1, 0]].tolist())) == 4
            assert len(_batch_ids(labels, batch)) == 4  # a whole identity batch, as with one process


def test_identity_batches_refuse_what_they_cannot_draw(records):
    labels = _labels()
    with pytest.raises(PairSamplingError, match="2 to 16 positive pairs per batch of 16; positive_fraction 0.05"):
        identity_batch_pair_indices(labels, 10, 0.05, 16, np.random.default_rng(0))
    with pytest.raises(PairSamplingError, match="need 50 identities with two images; found"):
        identity_batch_pair_indices(labels, 10, 0.5, 100, np.random.default_rng(0))
    with pytest.raises(PairSamplingError, match="cannot be combined with hard negatives"):
        PairSampling(0.5, 40, hard_fraction=0.5, identity_batch=8)
    data = PairDataset(records, None, PairSampling(0.5, 40, identity_batch=4))
    assert len(data) == 40 and data.positive_count == 20
