"""The statistics exchange of one synchronized normalization layer: ONE Allreduce each way.

Forward sends [fingerprint(4), errors, count, S1(C), S2(C)] and backward [fingerprint(4), errors,
0, sum dy (C), sum dy*(x-mean) (C)], all float64 (2C+6 values each way), in buffers made once per
layer: the bytes per step do not depend on the group size (all-gather designs send P*(2C+1) values
per rank). Used by `nn.SyncBatchNorm` and by the PyTorch adapter alike; the statistics step
(`functional.stats.group_stats`) receives it as a value. The backward buffer carries
one unused value so that both directions have the same size: a rank that skips a backward (or runs
a forward twice) then meets its peers' other-phase call with a buffer of the same length, and the
fingerprint catches it on every rank; with lengths that differ, MPI's collective can hang (Open MPI
at 4 ranks) instead of failing.

Ranks out of step fail loudly instead of mixing statistics. Each rank adds two 16-bit values v and
their squares v*v. The reduced sums are the same on every rank, and P * sum(v*v) == sum(v)**2 holds
exactly when all ranks sent the same v (Cauchy-Schwarz), so every rank reaches the same verdict with
no extra message. v1 hashes the layer's identity (`identity.first_use`: the order of its first
training use in the group, the same on every rank that runs the same layers, whatever else a rank
built), its call counter, its channel count and the phase; v2 hashes what else must
agree (the dtype, and the statistics shift, which must be equal on all ranks for the sums to be
exact). The fingerprint leads the buffer, so even a partial message is caught.

A rank whose input is bad still joins the collective with `errors` = 1 and then raises its own
error; the other ranks see errors > 0 and raise too, so no rank waits for ever on a peer that left.

The group is an MPI communicator (`group.ProcessGroup`) or a torch.distributed group
(`torch_backend.TorchGroup`): the same buffer, the same one collective, through either transport.

Limit (the transports', not ours): two ranks whose calls pair layers with *different* channel counts
pass buffers of different lengths, which MPI defines as erroneous; Open MPI reports a truncation
(raised here as RanksOutOfStepError) for small buffers on 2 ranks, but may hang on more ranks or
corrupt memory for large buffers; gloo aborts the process (SIGABRT, "Received data size doesn't
match expected size"). Set
SYNCNORM_CHECK_ORDER=1 (or `check_order=True`) while debugging: each call then first exchanges a
fixed-size fingerprint (a second, 64-byte collective), which turns every such case into a clean error.
"""
from __future__ import annotations

import os
import zlib
from typing import Any

import numpy as np

from .comm import BufferMismatchError, default_timeout
from .group import ProcessGroup, get_world_group, layer_group
from .identity import LayerIdentity, creation_order, first_use, restart
from .torch_backend import TorchGroup

__all__ = ["StatsExchange", "exchange_for", "RanksOutOfStepError", "PeerInputError", "creation_order",
           "fingerprint"]

_HEAD = 5  # v1, v1*v1, v2, v2*v2, errors


class RanksOutOfStepError(RuntimeError):
    """The ranks of a group did not all make the same synchronized call (raised on every rank)."""


class PeerInputError(ValueError):
    """Another rank of the group had bad input for this call (it raised its own error)."""


def fingerprint(*parts: Any) -> int:
    """A 16-bit value: its square and P times its square stay exact in float64 for P < 2**20."""
    return zlib.crc32(repr(parts).encode()) & 0xFFFF


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


class StatsExchange:
    """Counters, buffers and the two collectives of one layer within `group`."""

    def __init__(self, group: ProcessGroup | TorchGroup, layer_index: int | LayerIdentity,
                 channels: int, label: str, timeout: float | None = None,
                 check_order: bool | None = None) -> None:
        self.group = group
        self.layer_index = layer_index
        self.channels = channels
        self.label = label
        self.timeout = timeout
        self.check_order = _env_flag("SYNCNORM_CHECK_ORDER") if check_order is None else check_order
        self.forward_calls = 0
        self.backward_calls = 0
        self._fwd = np.empty(_HEAD + 1 + 2 * channels)
        self._bwd = np.empty(_HEAD + 1 + 2 * channels)  # as long as _fwd (see the module doc)
        self._pre = np.empty(4)

    @property
    def size(self) -> int:
        """The number of ranks in the group."""
        return self.group.size

    @property
    def collective_calls(self) -> int:
        """Allreduces made so far (forward + backward; none in a group of size 1)."""
        return 0 if self.group.size == 1 else self.forward_calls + self.backward_calls

    def describe(self) -> str:
        return f"{self.label} #{self.layer_index} ({self.channels} channels) in {self.group}"

    # ------------------------------------------------------------------ the collective
    def _reduce(self, buf: np.ndarray, what: str) -> None:
        timeout = self.timeout if self.timeout is not None else default_timeout()
        try:
            self.group.allreduce_sum(buf, timeout, f"{what} of {self.describe()}")
        except BufferMismatchError as e:  # MPI reported a truncation: buffers of other sizes
            restart(self.group.key)  # the peers raise out-of-step in this call too
            raise RanksOutOfStepError(
                f"{self.describe()}: MPI failed in the {what} ({e}); the ranks passed buffers of "
                "different sizes, so they are not calling the same layer. Every rank of a group "
                "must run the same synchronized layers in the same order.") from e

    def _check(self, v_sum: float, v_sq: float, name: str, phase: str) -> None:
        if self.group.size * int(v_sq) != int(v_sum) ** 2:
            restart(self.group.key)  # every rank sees the same sums: all restart the numbering
            raise RanksOutOfStepError(
                f"{self.describe()}: the ranks' {phase} calls do not match ({name} fingerprints "
                "differ): some rank skipped a layer, called layers in another order, ran an extra "
                "step, is in eval mode, or holds different running statistics or dtypes. Every "
                "rank of a group must run the same synchronized layers in the same order.")

    def _exchange(self, buf: np.ndarray, v1: int, v2: int, phase: str, failed: bool) -> None:
        if self.check_order:  # debug mode: a fixed-size pre-check, so sizes can never differ
            pre = self._pre
            pre[:] = (v1, v1 * v1, buf.size, buf.size * buf.size)
            self._reduce(pre, f"{phase} order check")
            self._check(pre[0], pre[1], "layer/step", phase)
            self._check(pre[2], pre[3], "buffer size", phase)
        buf[:_HEAD] = (v1, v1 * v1, v2, v2 * v2, 1.0 if failed else 0.0)
        self._reduce(buf, f"{phase} Allreduce")
        if failed:
            return  # the caller raises its own error
        if buf[4] > 0:
            raise PeerInputError(
                f"{self.describe()}: {int(buf[4])} rank(s) of the group had bad input in this "
                f"{phase} call and raised; raising here too so that no rank waits for ever")
        self._check(buf[0], buf[1], "layer/step", phase)
        self._check(buf[2], buf[3], "dtype/shift", phase)

    # ------------------------------------------------------------------ the two phases
    def forward(self, n: float, s1: np.ndarray, s2: np.ndarray,
                agree: tuple = ()) -> tuple[float, np.ndarray, np.ndarray]:
        """Sum (count, S1, S2) over the group. `agree`: values that must be equal on every rank."""
        self.forward_calls += 1
        if self.group.size == 1:
            return n, s1, s2
        c, buf = self.channels, self._fwd
        buf[_HEAD] = n
        buf[_HEAD + 1:_HEAD + 1 + c] = s1
        buf[_HEAD + 1 + c:] = s2
        self._exchange(buf, fingerprint(self.layer_index, self.forward_calls, c, "forward"),
                       fingerprint(*agree), "forward", False)
        return float(buf[_HEAD]), buf[_HEAD + 1:_HEAD + 1 + c].copy(), buf[_HEAD + 1 + c:].copy()

    def backward(self, g: np.ndarray, h: np.ndarray, agree: tuple = ()) -> tuple[np.ndarray, np.ndarray]:
        """Sum (sum dy, sum dy*(x-mean)) over the group."""
        self.backward_calls += 1
        if self.group.size == 1:
            return g, h
        c, buf = self.channels, self._bwd
        buf[_HEAD] = 0.0
        buf[_HEAD + 1:_HEAD + 1 + c] = g
        buf[_HEAD + 1 + c:] = h
        self._exchange(buf, fingerprint(self.layer_index, self.backward_calls, c, "backward"),
                       fingerprint(*agree), "backward", False)
        return buf[_HEAD + 1:_HEAD + 1 + c].copy(), buf[_HEAD + 1 + c:].copy()

    def fail(self, phase: str) -> None:
        """Join this call's collective with the error flag set (this rank's input was bad), so the
        other ranks raise instead of waiting. The caller then raises its own error."""
        if self.group.size == 1:
            return
        if phase == "forward":
            self.forward_calls += 1
            buf, calls = self._fwd, self.forward_calls
        else:
            self.backward_calls += 1
            buf, calls = self._bwd, self.backward_calls
        buf[_HEAD:] = 0.0
        self._exchange(buf, fingerprint(self.layer_index, calls, self.channels, phase), 0,
                       phase, True)


def exchange_for(current: StatsExchange | None, process_group: Any, created: int,
                 channels: int, label: str, timeout: float | None,
                 check: Any = None) -> StatsExchange:
    """A layer's StatsExchange: `current` while it still fits the layer (channels, timeout), else
    a new one over `process_group` resolved now (`group.layer_group`: None = the world of the
    launcher), with the identity and call counters carried over. A layer's first exchange numbers
    it in its group (`identity.first_use`; `created`: its creation order on this rank).
    `check(group)` may veto the group. Raises ValueError when this rank is not a member."""
    if current is not None and current.channels == channels and current.timeout == timeout:
        return current
    g = layer_group(process_group)
    if not g.is_member:
        raise ValueError(f"{label}: process_group {g} does not contain this rank (world rank "
                         f"{_world_rank(g)}); pass the group this rank belongs to")
    if check is not None:
        check(g)
    ident = current.layer_index if current is not None else first_use(g.key, created)
    ex = StatsExchange(g, ident, channels, label, timeout)
    if current is not None:
        ex.forward_calls, ex.backward_calls = current.forward_calls, current.backward_calls
    return ex


def _world_rank(g: ProcessGroup | TorchGroup) -> int:
    if isinstance(g, TorchGroup):
        import torch.distributed as dist
        return dist.get_rank()
    w = get_world_group()
    return w.ranks[w.rank]
