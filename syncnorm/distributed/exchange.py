"""The statistics exchange of one synchronized normalization layer: ONE Allreduce each way.

Forward sends [count, S1(C), S2(C), fingerprint(4)] and backward [sum dy (C), sum dy*(x-mean) (C),
fingerprint(4)], all float64, in buffers made once per layer: the bytes per step do not depend on
the group size (all-gather designs send P*(2C+1) values per rank). Used by `nn.SyncBatchNorm` and by
the PyTorch adapter alike.

The fingerprint makes ranks that are out of step fail loudly instead of mixing statistics. Each rank
adds two 16-bit values v and their squares v*v. The reduced sums are the same on every rank, and
P * sum(v*v) == sum(v)**2 holds exactly when all ranks sent the same v (Cauchy-Schwarz), so every rank
reaches the same verdict with no extra message. v1 hashes the layer's identity (its creation order,
the same on every rank that builds the same model), its call counter, its channel count and the
phase; v2 hashes what else must agree (the dtype, and the statistics shift, which must be equal on all
ranks for the sums to be exact).
"""
from __future__ import annotations

import itertools
import zlib
from typing import Any

import numpy as np

from . import comm as C
from .group import ProcessGroup

__all__ = ["StatsExchange", "RanksOutOfStepError", "next_layer_index"]

_layer_ids = itertools.count()


def next_layer_index() -> int:
    """A per-process creation counter: equal on every rank that builds the same model."""
    return next(_layer_ids)


class RanksOutOfStepError(RuntimeError):
    """The ranks of a group did not all make the same synchronized call (raised on every rank)."""


def fingerprint(*parts: Any) -> int:
    """A 16-bit value: its square and P times its square stay exact in float64 for P < 2**20."""
    return zlib.crc32(repr(parts).encode()) & 0xFFFF


class StatsExchange:
    """Counters, buffers and the two collectives of one layer within `group`."""

    def __init__(self, group: ProcessGroup, layer_index: int, channels: int, label: str,
                 timeout: float | None = None) -> None:
        self.group = group
        self.layer_index = layer_index
        self.channels = channels
        self.label = label
        self.timeout = timeout
        self.forward_calls = 0
        self.backward_calls = 0
        self._fwd = np.empty(2 * channels + 5)
        self._bwd = np.empty(2 * channels + 4)

    def describe(self) -> str:
        return f"{self.label} #{self.layer_index} ({self.channels} channels) in {self.group}"

    def _allreduce(self, buf: np.ndarray, v1: int, v2: int, phase: str) -> None:
        buf[-4:] = (v1, v1 * v1, v2, v2 * v2)
        timeout = self.timeout if self.timeout is not None else C.default_timeout()
        C.allreduce_sum(buf, self.group.comm, timeout, f"{phase} Allreduce of {self.describe()}")
        P = self.group.size
        for s, q, name in ((buf[-4], buf[-3], "layer/step"), (buf[-2], buf[-1], "dtype/shift")):
            if P * int(q) != int(s) ** 2:
                raise RanksOutOfStepError(
                    f"{self.describe()}: the ranks' {phase} calls do not match ({name} fingerprints "
                    "differ): some rank skipped a layer, called layers in another order, ran an extra "
                    "step, is in eval mode, or holds different running statistics or dtypes. Every "
                    "rank of a group must run the same synchronized layers in the same order.")

    def forward(self, n: float, s1: np.ndarray, s2: np.ndarray,
                agree: tuple = ()) -> tuple[float, np.ndarray, np.ndarray]:
        """Sum (count, S1, S2) over the group. `agree`: values that must be equal on every rank."""
        self.forward_calls += 1
        if self.group.size == 1:
            return n, s1, s2
        c, buf = self.channels, self._fwd
        buf[0] = n
        buf[1:c + 1] = s1
        buf[c + 1:2 * c + 1] = s2
        self._allreduce(buf, fingerprint(self.layer_index, self.forward_calls, c, "forward"),
                        fingerprint(*agree), "forward")
        return float(buf[0]), buf[1:c + 1].copy(), buf[c + 1:2 * c + 1].copy()

    def backward(self, g: np.ndarray, h: np.ndarray, agree: tuple = ()) -> tuple[np.ndarray, np.ndarray]:
        """Sum (sum dy, sum dy*(x-mean)) over the group."""
        self.backward_calls += 1
        if self.group.size == 1:
            return g, h
        c, buf = self.channels, self._bwd
        buf[:c] = g
        buf[c:2 * c] = h
        self._allreduce(buf, fingerprint(self.layer_index, self.backward_calls, c, "backward"),
                        fingerprint(*agree), "backward")
        return buf[:c].copy(), buf[c:2 * c].copy()
