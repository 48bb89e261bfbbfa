"""Image pairs for CASN's Siamese branch (paper sec. 3.3, eq. 3: same/different binary loss).

Each epoch draws ``pairs_per_epoch`` pairs, ``round(pairs_per_epoch * positive_fraction)`` of them
positive (the paper uses half positive, half negative). Positive pairs cycle through the identities
that have at least two images, so every such identity is used; negative pairs cycle through every
image as an anchor and pair it with an image of another identity. Pairs depend only on
``(seed, epoch)``.
"""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from casn_core.data.market import ImageRecord, read_image


class PairSamplingError(ValueError):
    """The labels cannot give the requested pairs (e.g. no identity has two images)."""


def _cycled_permutations(n: int, count: int, rng: np.random.Generator) -> np.ndarray:
    """``count`` values from back-to-back random permutations of ``range(n)``."""
    if count <= 0:
        return np.zeros(0, dtype=np.int64)
    rounds = -(-count // n)
    return np.concatenate([rng.permutation(n) for _ in range(rounds)])[:count]


def pair_indices(labels: Sequence[int] | np.ndarray, num_pairs: int, positive_fraction: float,
                 rng: np.random.Generator) -> np.ndarray:
    """``(num_pairs, 3)`` int64 array of ``(index1, index2, same)`` rows, in random order.

    Exactly ``round(num_pairs * positive_fraction)`` rows are positive (same label, two different
    images); the others pair images of different labels.
    """
    labels = np.asarray(labels)
    if not 0.0 <= positive_fraction <= 1.0:
        raise PairSamplingError(f"positive_fraction must be in [0, 1], got {positive_fraction}")
    if num_pairs < 0:
        raise PairSamplingError(f"num_pairs must be >= 0, got {num_pairs}")
    num_pos = int(round(num_pairs * positive_fraction))
    num_neg = num_pairs - num_pos
    unique, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
    order = np.argsort(inverse, kind="stable")  # image indices grouped by identity
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])

    pos = np.zeros((0, 3), dtype=np.int64)
    if num_pos:
        eligible = np.flatnonzero(counts >= 2)
        if eligible.size == 0:
            raise PairSamplingError(
                f"no identity has two images ({len(labels)} images, {len(unique)} identities), so no positive "
                f"pair exists; use positive_fraction=0 or add images"
            )
        ids = eligible[_cycled_permutations(eligible.size, num_pos, rng)]
        n = counts[ids]
        a = rng.integers(0, n)
        b = rng.integers(0, n - 1)
        b = b + (b >= a)
        pos = np.stack([order[starts[ids] + a], order[starts[ids] + b], np.ones(num_pos, dtype=np.int64)], 1)

    neg = np.zeros((0, 3), dtype=np.int64)
    if num_neg:
        if unique.size < 2:
            raise PairSamplingError(f"negative pairs need two identities, found {unique.size}")
        anchors = _cycled_permutations(len(labels), num_neg, rng)
        own = inverse[anchors]
        other = rng.integers(0, unique.size - 1, size=num_neg)
        other = other + (other >= own)
        partner = order[starts[other] + rng.integers(0, counts[other])]
        neg = np.stack([anchors, partner, np.zeros(num_neg, dtype=np.int64)], 1)

    pairs = np.concatenate([pos, neg]).astype(np.int64)
    swap = rng.random(len(pairs)) < 0.5
    pairs[swap, :2] = pairs[swap, 1::-1]
    return pairs[rng.permutation(len(pairs))]


class PairDataset(Dataset):
    """Pairs of training images: item ``i`` is ``(img1, img2, label1, label2, same)``.

    ``same`` is 1.0 or 0.0. :attr:`pairs` lists ``(index1, index2, same)`` into ``records``;
    :meth:`set_epoch` redraws them from ``(seed, epoch)``.
    """

    def __init__(self, records: Sequence[ImageRecord], transform: Callable | None = None,
                 positive_fraction: float = 0.5, pairs_per_epoch: int | None = None, seed: int = 0) -> None:
        self.records = list(records)
        if not self.records:
            raise PairSamplingError("no training records to pair")
        if transform is None:
            from torchvision import transforms as T

            transform = T.ToTensor()
        self.transform = transform
        self.positive_fraction = float(positive_fraction)
        self.pairs_per_epoch = len(self.records) if pairs_per_epoch is None else int(pairs_per_epoch)
        if self.pairs_per_epoch < 1:
            raise PairSamplingError(f"pairs_per_epoch must be >= 1, got {self.pairs_per_epoch}")
        self.seed = int(seed)
        self.labels = np.array([r.label for r in self.records], dtype=np.int64)
        self.epoch = 0
        self.pairs: list[tuple[int, int, int]] = []
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        """Draw this epoch's pairs (deterministic in ``(seed, epoch)``)."""
        self.epoch = int(epoch)
        rng = np.random.default_rng([self.seed, self.epoch])
        rows = pair_indices(self.labels, self.pairs_per_epoch, self.positive_fraction, rng)
        self.pairs = [tuple(int(v) for v in row) for row in rows]

    @property
    def positive_count(self) -> int:
        return sum(same for _, _, same in self.pairs)

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, int, int, float]:
        i, j, same = self.pairs[index]
        first, second = self.records[i], self.records[j]
        return (self.transform(read_image(first.path)), self.transform(read_image(second.path)),
                first.label, second.label, float(same))
