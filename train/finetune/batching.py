"""Length-bucketed distributed batching: less padding, the same number of steps on every rank."""
from __future__ import annotations

import math
from typing import Iterator, Sequence

import torch
from torch.utils.data import Sampler

BUCKET_BATCHES = 50  # sort windows of this many batches by length


class LengthBucketSampler(Sampler[list[int]]):
    """Yields batches of row indices for one rank of ``world``.

    Each epoch: a seeded permutation (the same on every rank) is padded to a multiple
    of ``world`` and dealt out round-robin, as ``DistributedSampler`` does. Each rank
    then sorts windows of ``BUCKET_BATCHES`` batches by token length, cuts batches and
    shuffles their order, so a batch holds texts of similar length and
    right-padding trims to little. Every rank yields ``len(self)`` batches.

    ``bucket_batches=1`` keeps batch composition random (as ``DistributedSampler``):
    training uses that, because length-sorted batches of templated or small data are
    correlated and slowed convergence in our runs; evaluation uses the default.
    """

    def __init__(self, lengths: Sequence[int], batch_size: int, rank: int = 0, world: int = 1,
                 seed: int = 0, shuffle: bool = True, bucket_batches: int = BUCKET_BATCHES):
        self.lengths = torch.as_tensor(list(lengths))
        self.bucket_batches = bucket_batches
        self.batch_size, self.rank, self.world = batch_size, rank, world
        self.seed, self.shuffle, self.epoch = seed, shuffle, 0
        self.per_rank = math.ceil(len(self.lengths) / world)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return math.ceil(self.per_rank / self.batch_size)

    def __iter__(self) -> Iterator[list[int]]:
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        n = len(self.lengths)
        order = torch.randperm(n, generator=generator) if self.shuffle else torch.arange(n)
        padded = torch.cat([order, order[: self.per_rank * self.world - n]])
        mine = padded[self.rank::self.world]
        window = self.batch_size * self.bucket_batches
        batches: list[list[int]] = []
        for start in range(0, len(mine), window):
            chunk = mine[start:start + window]
            chunk = chunk[torch.argsort(self.lengths[chunk], stable=True)]
            batches += [chunk[i:i + self.batch_size].tolist() for i in range(0, len(chunk), self.batch_size)]
        if self.shuffle:
            batches = [batches[i] for i in torch.randperm(len(batches), generator=generator).tolist()]
        return iter(batches)
