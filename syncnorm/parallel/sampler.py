"""`DistributedSampler`: each rank's share of a data set's indices, with torch's semantics.

Per epoch the n indices are shuffled (when `shuffle`) by a generator seeded with seed + epoch (the
same on every rank), then made divisible by the number of replicas: `drop_last=False` pads by
repeating indices from the start (wrapping around as often as needed), `drop_last=True` drops the
tail. Rank r takes every num_replicas-th index starting at r. Differences from torch: the shuffle is
numpy's (`default_rng(seed + epoch).permutation(n)`), so the order is not torch's `randperm`; the
rest (sizes, padding, striding, set_epoch) is identical.
"""
from __future__ import annotations

import math
from typing import Any, Iterator

import numpy as np

from ..distributed.group import get_world_group

__all__ = ["DistributedSampler"]


class DistributedSampler:
    """Indices of `dataset` (anything with len(), or an int) for rank `rank` of `num_replicas`.

    num_replicas and rank default to the world's size and this process's rank. Call
    `set_epoch(e)` before each epoch for a new shuffle. `len(sampler)` is the number of indices
    per rank (equal on every rank).
    """

    def __init__(self, dataset: Any, num_replicas: int | None = None, rank: int | None = None,
                 shuffle: bool = True, seed: int = 0, drop_last: bool = False) -> None:
        n = dataset if isinstance(dataset, (int, np.integer)) and not isinstance(dataset, bool) \
            else len(dataset)
        if n < 0:
            raise ValueError(f"the data set size must be >= 0, got {n}")
        if num_replicas is None or rank is None:
            w = get_world_group()
            num_replicas = w.size if num_replicas is None else num_replicas
            rank = w.rank if rank is None else rank
        if num_replicas <= 0:
            raise ValueError(f"num_replicas must be a positive integer, got {num_replicas}")
        if rank >= num_replicas or rank < 0:
            raise ValueError(f"Invalid rank {rank}, rank should be in the interval [0, {num_replicas - 1}]")
        self.dataset_len = int(n)
        self.num_replicas = int(num_replicas)
        self.rank = int(rank)
        self.epoch = 0
        self.drop_last = bool(drop_last)
        self.shuffle = bool(shuffle)
        self.seed = int(seed)
        if self.drop_last and self.dataset_len % self.num_replicas != 0:
            self.num_samples = math.ceil((self.dataset_len - self.num_replicas) / self.num_replicas)
        else:
            self.num_samples = math.ceil(self.dataset_len / self.num_replicas)
        self.total_size = self.num_samples * self.num_replicas

    def global_indices(self) -> np.ndarray:
        """The epoch's padded (or cut) index list of all ranks, before striding: (total_size,)."""
        n = self.dataset_len
        if self.shuffle:
            idx = np.random.default_rng(self.seed + self.epoch).permutation(n).astype(np.int64)
        else:
            idx = np.arange(n, dtype=np.int64)
        if not self.drop_last:
            pad = self.total_size - n
            if pad > 0:
                if n == 0:
                    raise ValueError("cannot pad an empty data set to the number of replicas")
                idx = np.concatenate([idx, np.resize(idx, pad)])
        else:
            idx = idx[:self.total_size]
        return idx

    def indices(self) -> np.ndarray:
        """This rank's indices for the current epoch: (num_samples,) int64."""
        idx = self.global_indices()[self.rank:self.total_size:self.num_replicas]
        assert idx.size == self.num_samples
        return idx

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices().tolist())

    def __len__(self) -> int:
        return self.num_samples

    def set_epoch(self, epoch: int) -> None:
        """Use a new shuffle for `epoch` (the same on every rank)."""
        self.epoch = int(epoch)

    def state_dict(self) -> dict[str, int | bool]:
        """What `load_state_dict` needs to resume: the epoch, and the settings that must match."""
        return {"epoch": self.epoch, "seed": self.seed, "num_replicas": self.num_replicas,
                "rank": self.rank, "shuffle": self.shuffle, "drop_last": self.drop_last,
                "dataset_len": self.dataset_len}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the epoch; the data set size, seed, shuffle, drop_last and replica count must
        match (they decide which sample goes where)."""
        for k in ("seed", "num_replicas", "shuffle", "drop_last", "dataset_len"):
            if k in state and state[k] != getattr(self, k):
                raise ValueError(f"DistributedSampler state was saved with {k}={state[k]!r}; this "
                                 f"sampler has {k}={getattr(self, k)!r}")
        self.epoch = int(state["epoch"])
