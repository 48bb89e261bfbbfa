"""Image pairs for CASN's Siamese branch (paper sec. 3.3, eq. 3: same/different binary loss).

Each epoch draws ``pairs_per_epoch`` pairs, ``round(pairs_per_epoch * positive_fraction)`` of them
positive (the paper uses half positive, half negative). Positive pairs cycle through the identities
that have at least two images, so every such identity is used; negative pairs cycle through every
image as an anchor and pair it with an image of another identity. Pairs depend only on
``(seed, epoch)`` (and, with hard negatives, on the neighbour table given for that epoch).

Hard negatives are ours, not the paper's (the paper draws negatives at random): a
``hard_fraction`` of the negative pairs takes its partner from one of the anchor identity's
``k`` nearest other identities in feature space (:func:`nearest_identities`, on identity centroids
of L2-normalised features; "batch hard" mining of Hermans et al., 2017, at the identity level).
The default 0 keeps the paper's sampling, draw for draw.

Identity batches are ours too (:func:`identity_batch_pair_indices`): every run of ``batch_size``
consecutive pairs is drawn from ``round(batch_size * positive_fraction)`` identities only, one positive
pair each, and its negative pairs join two of those same identities. Each image of a batch then has other
images of its identity and of other identities beside it, which a batch-hard triplet term needs (the
P x K batches of Hermans et al., 2017, built from pairs); independent pairs leave the images of the
negative pairs without a positive in their batch.
"""
from __future__ import annotations

from dataclasses import dataclass
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


def nearest_identities(features: torch.Tensor | np.ndarray, labels: Sequence[int] | np.ndarray,
                       k: int = 10) -> dict[int, list[int]]:
    """For every label, the ``k`` other labels whose centroids of L2-normalised features are nearest.

    Returns ``{label: [other labels, nearest first]}`` (fewer than ``k`` when there are fewer other
    labels); the table :func:`pair_indices` takes as ``neighbours``.
    """
    feats = torch.as_tensor(np.asarray(features, dtype=np.float32))
    labels = np.asarray(labels)
    if feats.ndim != 2 or feats.shape[0] != labels.shape[0]:
        raise PairSamplingError(f"features {tuple(feats.shape)} do not match {labels.shape[0]} labels")
    unique, inverse = np.unique(labels, return_inverse=True)
    feats = torch.nn.functional.normalize(feats, dim=1)
    sums = torch.zeros(unique.size, feats.shape[1]).index_add_(0, torch.as_tensor(inverse), feats)
    return neighbours_from_centroids(sums, unique, k)


def neighbours_from_centroids(centroid_sums: torch.Tensor, labels: Sequence[int] | np.ndarray,
                              k: int = 10) -> dict[int, list[int]]:
    """:func:`nearest_identities` from per-label sums of normalised features (rows in ``labels`` order).

    Labels whose row is all zero (no feature seen) get no neighbours and so random negatives.
    """
    labels = np.asarray(labels)
    centroids = torch.nn.functional.normalize(centroid_sums.float(), dim=1)
    seen = centroid_sums.abs().sum(dim=1) > 0
    dist = torch.cdist(centroids, centroids)
    dist[~seen] = float("inf")
    dist[:, ~seen] = float("inf")
    dist.fill_diagonal_(float("inf"))
    take = min(k, max(labels.size - 1, 0))
    table: dict[int, list[int]] = {}
    if take == 0:
        return table
    near = torch.topk(dist, take, dim=1, largest=False)
    for row, (values, indices) in enumerate(zip(near.values.tolist(), near.indices.tolist())):
        if seen[row]:
            table[int(labels[row])] = [int(labels[j]) for v, j in zip(values, indices) if v != float("inf")]
    return table


def pair_indices(labels: Sequence[int] | np.ndarray, num_pairs: int, positive_fraction: float,
                 rng: np.random.Generator, hard_fraction: float = 0.0,
                 neighbours: dict[int, Sequence[int]] | None = None) -> np.ndarray:
    """``(num_pairs, 3)`` int64 array of ``(index1, index2, same)`` rows, in random order.

    Exactly ``round(num_pairs * positive_fraction)`` rows are positive (same label, two different
    images); the others pair images of different labels. With ``hard_fraction`` > 0 and a
    ``neighbours`` table (``{label: nearby other labels}``), that fraction of the negatives (ours, see
    the module docstring) pairs its anchor with an image of one of its label's neighbours; anchors
    whose label has no neighbours keep a random partner.
    """
    labels = np.asarray(labels)
    if not 0.0 <= positive_fraction <= 1.0:
        raise PairSamplingError(f"positive_fraction must be in [0, 1], got {positive_fraction}")
    if not 0.0 <= hard_fraction <= 1.0:
        raise PairSamplingError(f"hard_fraction must be in [0, 1], got {hard_fraction}")
    if num_pairs < 0:
        raise PairSamplingError(f"num_pairs must be >= 0, got {num_pairs}")
    num_pos = int(round(num_pairs * positive_fraction))
    num_neg = num_pairs - num_pos
    groups = _Identities.of(labels)
    unique, counts = groups.unique, groups.counts

    pos = np.zeros((0, 3), dtype=np.int64)
    if num_pos:
        eligible = np.flatnonzero(counts >= 2)
        if eligible.size == 0:
            raise PairSamplingError(
                f"no identity has two images ({len(labels)} images, {len(unique)} identities), so no positive "
                f"pair exists; use positive_fraction=0 or add images"
            )
        ids = eligible[_cycled_permutations(eligible.size, num_pos, rng)]
        pos = groups.positive_pairs(ids, rng)

    neg = np.zeros((0, 3), dtype=np.int64)
    if num_neg:
        if unique.size < 2:
            raise PairSamplingError(f"negative pairs need two identities, found {unique.size}")
        anchors = _cycled_permutations(len(labels), num_neg, rng)
        own = groups.inverse[anchors]
        other = rng.integers(0, unique.size - 1, size=num_neg)
        other = other + (other >= own)
        if hard_fraction > 0 and neighbours:
            other = _hard_partners(other, own, unique, hard_fraction, neighbours, rng)
        partner = groups.one_image(other, rng)
        neg = np.stack([anchors, partner, np.zeros(num_neg, dtype=np.int64)], 1)

    pairs = np.concatenate([pos, neg]).astype(np.int64)
    swap = rng.random(len(pairs)) < 0.5
    pairs[swap, :2] = pairs[swap, 1::-1]
    return pairs[rng.permutation(len(pairs))]


@dataclass(frozen=True)
class _Identities:
    """Image indices grouped by identity: identity i (the i-th of ``unique``) owns the ``counts[i]`` images
    ``order[starts[i]:starts[i] + counts[i]]``; ``inverse`` maps each image to its identity."""

    unique: np.ndarray
    inverse: np.ndarray
    counts: np.ndarray
    order: np.ndarray
    starts: np.ndarray

    @classmethod
    def of(cls, labels: np.ndarray) -> "_Identities":
        unique, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
        order = np.argsort(inverse, kind="stable")
        return cls(unique, inverse, counts, order, np.concatenate([[0], np.cumsum(counts)[:-1]]))

    def one_image(self, who: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """A random image of each identity in ``who`` (any shape)."""
        return self.order[self.starts[who] + rng.integers(0, self.counts[who])]

    def positive_pairs(self, ids: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Rows ``(index1, index2, 1)`` of two different images of each identity in ``ids`` (any shape;
        the rows add a last axis of 3)."""
        n = self.counts[ids]
        a = rng.integers(0, n)
        b = rng.integers(0, n - 1)
        b = b + (b >= a)  # a second, different image: draw among the n - 1 others
        first = self.starts[ids]
        return np.stack([self.order[first + a], self.order[first + b], np.ones_like(ids)], axis=-1)


def identity_batch_pair_indices(labels: Sequence[int] | np.ndarray, num_pairs: int, positive_fraction: float,
                                batch_size: int, rng: np.random.Generator, world: int = 1) -> np.ndarray:
    """``(num_pairs, 3)`` rows ``(index1, index2, same)`` in batches of ``batch_size`` pairs drawn from few
    identities (module docstring).

    A batch has ``P = round(batch_size * positive_fraction)`` positive pairs, one per identity, the
    identities cycling through random permutations of those with two images or more; each of its
    ``batch_size - P`` negative pairs takes an image of one of the P identities (in turn) and an image of
    another of them. ``world`` processes: the rows are laid out so that a ``DistributedSampler`` without
    shuffling (process r takes rows r, r + world, ...) gives every process whole batches.
    """
    labels = np.asarray(labels)
    if batch_size < 2:
        raise PairSamplingError(f"identity batches need at least 2 pairs per batch, got {batch_size}")
    per_batch = int(round(batch_size * positive_fraction))
    if not 2 <= per_batch <= batch_size:
        raise PairSamplingError(f"identity batches need 2 to {batch_size} positive pairs per batch of {batch_size}; "
                                f"positive_fraction {positive_fraction} gives {per_batch}")
    if num_pairs < 0 or world < 1:
        raise PairSamplingError(f"num_pairs must be >= 0 and world >= 1, got {num_pairs} and {world}")
    groups = _Identities.of(labels)
    eligible = np.flatnonzero(groups.counts >= 2)
    if eligible.size < per_batch:
        raise PairSamplingError(f"identity batches of {per_batch} identities need {per_batch} identities with two "
                                f"images; found {eligible.size}")
    num_batches = -(-num_pairs // batch_size)
    ids = eligible[_cycled_permutations(eligible.size, num_batches * per_batch, rng)].reshape(num_batches, per_batch)
    for row in ids:  # a permutation boundary can repeat an identity inside a batch: redraw that batch's ids
        if len(set(row.tolist())) < per_batch:
            row[:] = rng.choice(eligible, per_batch, replace=False)
    positive = groups.positive_pairs(ids, rng)
    negatives = batch_size - per_batch
    slot = np.arange(negatives) % per_batch
    shift = 1 + rng.integers(0, per_batch - 1, size=(num_batches, negatives))
    anchor_ids = ids[:, slot]
    partner_ids = np.take_along_axis(ids, (slot + shift) % per_batch, axis=1)
    negative = np.stack([groups.one_image(anchor_ids, rng), groups.one_image(partner_ids, rng),
                         np.zeros_like(anchor_ids)], axis=2)
    batches = np.concatenate([positive, negative], axis=1)  # (batches, batch_size, 3)
    swap = rng.random(batches.shape[:2]) < 0.5
    batches[swap, :2] = batches[swap, 1::-1]
    for one in batches:
        one[:] = one[rng.permutation(batch_size)]
    rows = batches.reshape(-1, 3)[:num_pairs].astype(np.int64)
    if world > 1:  # row i of the sequence goes to process i % world: batch t of process r is group t * world + r
        group = np.arange(len(rows)) // batch_size
        position = (group // world) * world * batch_size + (np.arange(len(rows)) % batch_size) * world + group % world
        if position.max(initial=-1) >= len(rows):  # an incomplete round of groups at the end: keep the prefix
            keep = (len(rows) // (world * batch_size)) * world * batch_size
            rows, position = rows[:keep], position[:keep]
        laid = np.empty_like(rows)
        laid[position] = rows
        rows = laid
    return rows


def _hard_partners(other: np.ndarray, own: np.ndarray, unique: np.ndarray, hard_fraction: float,
                   neighbours: dict[int, Sequence[int]], rng: np.random.Generator) -> np.ndarray:
    """Replace the random partner identity (indices into ``unique``) of a ``hard_fraction`` of the
    negatives by a neighbour of the anchor's identity; never the anchor's own identity."""
    index = {int(label): i for i, label in enumerate(unique)}
    count = int(round(other.size * hard_fraction))
    chosen = rng.permutation(other.size)[:count]
    draws = rng.random(count)
    other = other.copy()
    for row, draw in zip(chosen, draws):
        near = [index[int(n)] for n in neighbours.get(int(unique[own[row]]), ()) if int(n) in index]
        near = [n for n in near if n != own[row]]
        if near:
            other[row] = near[int(draw * len(near))]
    return other


@dataclass(frozen=True)
class PairSampling:
    """How :class:`PairDataset` draws an epoch's pairs.

    ``positive_fraction`` of the ``pairs_per_epoch`` pairs (default: one per record) are positive;
    ``seed`` and the epoch fix the draw. ``hard_fraction``: that share of the negatives pairs an image
    with a nearby identity (:func:`pair_indices`). ``identity_batch``: draw the pairs in identity batches
    of that many pairs (:func:`identity_batch_pair_indices`), laid out for ``world`` processes.
    """

    positive_fraction: float = 0.5
    pairs_per_epoch: int | None = None
    seed: int = 0
    hard_fraction: float = 0.0
    identity_batch: int | None = None
    world: int = 1

    def __post_init__(self) -> None:
        if self.pairs_per_epoch is not None and self.pairs_per_epoch < 1:
            raise PairSamplingError(f"pairs_per_epoch must be >= 1, got {self.pairs_per_epoch}")
        if self.world < 1:
            raise PairSamplingError(f"world must be >= 1, got {self.world}")
        if self.identity_batch is not None and self.hard_fraction > 0:
            raise PairSamplingError("identity batches choose each negative's identity among the batch's; "
                                    "they cannot be combined with hard negatives")


class PairDataset(Dataset):
    """Pairs of training images: item ``i`` is ``(img1, img2, label1, label2, same)``.

    ``same`` is 1.0 or 0.0. :attr:`pairs` lists ``(index1, index2, same)`` into ``records``;
    :meth:`set_epoch` redraws them as ``sampling`` says, from its seed and the epoch. ``images``: a
    sequence whose item ``i`` is the input of ``transform`` for ``records[i]`` (e.g.
    :class:`casn_core.data.decoded.DecodedImages`); default, the file read as a PIL image.
    """

    def __init__(self, records: Sequence[ImageRecord], transform: Callable | None = None,
                 sampling: PairSampling = PairSampling(), images: Sequence | None = None) -> None:
        self.records = list(records)
        # images[i] is what ``transform`` takes for records[i]; default: the file read as a PIL image
        self.images = images
        if not self.records:
            raise PairSamplingError("no training records to pair")
        if transform is None:
            from torchvision import transforms as T

            transform = T.ToTensor()
        self.transform = transform
        self.sampling = sampling
        self.pairs_per_epoch = len(self.records) if sampling.pairs_per_epoch is None else sampling.pairs_per_epoch
        self.neighbours: dict[int, list[int]] | None = None
        self.labels = np.array([r.label for r in self.records], dtype=np.int64)
        self.epoch = 0
        self.pairs: list[tuple[int, int, int]] = []
        self.set_epoch(0)

    def set_epoch(self, epoch: int, neighbours: dict[int, list[int]] | None = None) -> None:
        """Draw this epoch's pairs (deterministic in ``(seed, epoch)`` and ``neighbours``, the hard-negative
        table of :func:`nearest_identities`; without one, negatives are random)."""
        self.epoch = int(epoch)
        self.neighbours = neighbours
        sampling = self.sampling
        rng = np.random.default_rng([sampling.seed, self.epoch])
        if sampling.identity_batch is not None:
            rows = identity_batch_pair_indices(self.labels, self.pairs_per_epoch, sampling.positive_fraction,
                                               sampling.identity_batch, rng, sampling.world)
        else:
            rows = pair_indices(self.labels, self.pairs_per_epoch, sampling.positive_fraction, rng,
                                sampling.hard_fraction, neighbours)
        self.pairs = [tuple(int(v) for v in row) for row in rows]

    @property
    def positive_count(self) -> int:
        return sum(same for _, _, same in self.pairs)

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, int, int, float]:
        i, j, same = self.pairs[index]
        first, second = self.records[i], self.records[j]
        return (self.transform(self._image(i)), self.transform(self._image(j)),
                first.label, second.label, float(same))

    def _image(self, index: int):
        return read_image(self.records[index].path) if self.images is None else self.images[index]
