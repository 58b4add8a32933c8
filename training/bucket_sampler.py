"""Bucketed, distributed, resumable batch sampler.

Each epoch has a plan, the same on every rank (seeded by (seed, epoch)): within each bucket the
rows are shuffled and cut into steps of `world_size × batch_size` samples (the last step of a
bucket wraps around to its first rows, so every row is seen each epoch and batches stay full), and
the steps of all buckets are shuffled together. At each step every rank takes its own batch of the
same bucket, so all ranks run the same shapes at the same time. The position in the plan is what a
checkpoint stores; `set_epoch(epoch, start_step)` continues from it.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterator, Sequence

import numpy as np
from torch.utils.data import Sampler

from .buckets import Bucket
from .data import SampleKey


class BucketBatchSampler(Sampler[list[SampleKey]]):
    def __init__(
        self,
        buckets: Sequence[Bucket | None],
        batch_size: int,
        *,
        world_size: int = 1,
        rank: int = 0,
        seed: int = 0,
        shuffle: bool = True,
    ):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside world size {world_size}")
        self.by_bucket: dict[Bucket, list[int]] = defaultdict(list)
        for index, bucket in enumerate(buckets):
            if bucket is not None:
                self.by_bucket[bucket].append(index)
        self.excluded = sum(b is None for b in buckets)
        self.batch_size, self.world_size, self.rank = batch_size, world_size, rank
        self.seed, self.shuffle = seed, shuffle
        self.epoch, self.start_step = 0, 0
        self._plan: list[tuple[Bucket, np.ndarray]] | None = None

    def plan(self, epoch: int) -> list[tuple[Bucket, np.ndarray]]:
        """Steps of an epoch: (bucket, indices of shape (world_size, batch_size))."""
        rng = np.random.default_rng([self.seed, epoch])
        per_step = self.world_size * self.batch_size
        steps: list[tuple[Bucket, np.ndarray]] = []
        for bucket in sorted(self.by_bucket):
            indices = np.asarray(self.by_bucket[bucket])
            if self.shuffle:
                indices = rng.permutation(indices)
            n_steps = math.ceil(len(indices) / per_step)
            padded = np.resize(indices, n_steps * per_step)  # wraps around the bucket's own rows
            steps += [
                (bucket, chunk.reshape(self.world_size, self.batch_size))
                for chunk in np.split(padded, n_steps)
            ]
        if self.shuffle:
            steps = [steps[i] for i in rng.permutation(len(steps))]
        return steps

    def set_epoch(self, epoch: int, start_step: int = 0) -> None:
        self.epoch, self.start_step = epoch, start_step
        self._plan = self.plan(epoch)

    def steps_per_epoch(self) -> int:
        if self._plan is None:
            self._plan = self.plan(self.epoch)
        return len(self._plan)

    def __len__(self) -> int:
        return self.steps_per_epoch() - self.start_step

    def __iter__(self) -> Iterator[list[SampleKey]]:
        if self._plan is None:
            self._plan = self.plan(self.epoch)
        for _, batch in self._plan[self.start_step :]:
            yield [SampleKey(int(i), self.epoch) for i in batch[self.rank]]

    def buckets_used(self) -> dict[str, int]:
        """Rows per bucket (for the run log)."""
        return {str(b): len(v) for b, v in sorted(self.by_bucket.items())}
