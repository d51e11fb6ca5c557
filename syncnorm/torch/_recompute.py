"""Activation checkpointing: a recomputed training forward reuses the first forward's statistics.

`torch.utils.checkpoint` runs a segment's forward twice: once in the forward pass, then again during
the backward pass to rebuild what it did not keep. A synchronized layer that computed its
statistics again would run a second forward Allreduce (every rank alike, so it would not fail, but
it costs a collective) and update the running statistics twice (torch's own BatchNorm does; the fix
is old in fairscale's SyncBatchNorm, PR 694).

Here every training forward leaves a `StashEntry` (its shift, this rank's local shifted sums, and
the group's count, mean and invstd) in the layer's `StatsStash`. A training forward that runs while
autograd is executing a backward pass (`torch._C._current_graph_task_id() != -1`: both the reentrant
and the non-reentrant checkpoint recompute there) first sums its input about each stashed shift; an
entry whose local sums are bitwise equal is the same input seen before: its statistics are used, no
collective runs and the running statistics stay. The backward of a step drops its entry; a bounded
number of entries (`MAX_ENTRIES`) covers forwards that never see a backward (under no_grad).
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np
import torch

from ..functional.moments import moments
from ..functional.stats import Exchange

__all__ = ["StashEntry", "StatsStash", "CapturingExchange", "recomputing", "MAX_ENTRIES"]

#: entries kept per layer (forwards whose backward has not run yet, e.g. checkpointed segments)
MAX_ENTRIES = 16


_graph_task_id = getattr(torch._C, "_current_graph_task_id", lambda: -1)  # absent: no reuse


def recomputing() -> bool:
    """True while autograd runs a backward pass (where torch.utils.checkpoint recomputes)."""
    return _graph_task_id() != -1


@dataclass(eq=False)
class StashEntry:
    """One training forward: shift (C,), local (n, s1 (C,), s2 (C,)) about it, group n, mean, invstd."""

    shift: np.ndarray
    local: tuple[float, np.ndarray, np.ndarray]
    n: float
    mean: np.ndarray | None
    invstd: np.ndarray | None


class CapturingExchange:
    """An exchange that passes every call to `inner` and keeps the local sums of the FIRST forward
    call (the one about the plan's shift; a second call re-sums about the mean found)."""

    def __init__(self, inner: Exchange) -> None:
        self.inner = inner
        self.size = inner.size
        self.first: tuple[float, np.ndarray, np.ndarray] | None = None

    def forward(self, n: float, s1: np.ndarray, s2: np.ndarray,
                agree: tuple = ()) -> tuple[float, np.ndarray, np.ndarray]:
        if self.first is None:
            self.first = (float(n), s1.copy(), s2.copy())
        return self.inner.forward(n, s1, s2, agree)

    def backward(self, g: np.ndarray, h: np.ndarray, agree: tuple = ()) -> tuple[np.ndarray, np.ndarray]:
        return self.inner.backward(g, h, agree)

    def fail(self, phase: str) -> None:
        self.inner.fail(phase)


class StatsStash:
    """The recent training forwards of one layer (see the module doc)."""

    def __init__(self) -> None:
        self._entries: deque[StashEntry] = deque(maxlen=MAX_ENTRIES)

    def __len__(self) -> int:
        return len(self._entries)

    def put(self, entry: StashEntry) -> None:
        self._entries.append(entry)

    def drop(self, entry: StashEntry | None) -> None:
        """Forget `entry` (its backward ran); nothing when it is gone already."""
        try:
            self._entries.remove(entry)  # type: ignore[arg-type]
        except ValueError:
            pass

    def take(self, x3: np.ndarray) -> StashEntry | None:
        """The entry whose forward saw exactly this (A, C, M) input, removed; else None."""
        for e in reversed(self._entries):  # the latest first: a checkpoint recomputes the last segment first
            if e.shift.shape != (x3.shape[1],):
                continue
            n, s1, s2 = moments(x3, e.shift)
            ln, ls1, ls2 = e.local
            if float(n) == ln and np.array_equal(s1, ls1) and np.array_equal(s2, ls2):
                self._entries.remove(e)
                return e
        return None
