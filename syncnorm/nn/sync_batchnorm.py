"""SyncBatchNorm: BatchNorm whose training statistics span every rank of a process group.

Forward sends [count, S1(C), S2(C), fingerprint(4)] and backward [sum dy (C), sum dy*(x-mean) (C),
fingerprint(4)] in ONE Allreduce each, all float64, in buffers made once per layer: the bytes per
step do not depend on the group size (all-gather designs send P*(2C+1) values per rank).

The fingerprint makes ranks that are out of step fail loudly instead of mixing statistics. Each rank
adds two 16-bit values v and their squares v*v. The reduced sums are the same on every rank, and
P * sum(v*v) == sum(v)**2 holds exactly when all ranks sent the same v (Cauchy-Schwarz), so every rank
reaches the same verdict with no extra message. v1 hashes the layer's identity (its creation order,
the same on every rank that builds the same model), its call counter and its channel count; v2 hashes
the dtype and the statistics shift, which must be equal on all ranks for the sums to be exact.
"""
from __future__ import annotations

import itertools
import zlib
from typing import Any

import numpy as np

from ..distributed import comm as C
from ..distributed.group import ProcessGroup, as_group, get_world_group
from .batchnorm import _BatchNorm

__all__ = ["SyncBatchNorm", "RanksOutOfStepError"]

_layer_ids = itertools.count()


class RanksOutOfStepError(RuntimeError):
    """The ranks of a group did not all make the same SyncBatchNorm call (raised on every rank)."""


def _fp(*parts: Any) -> int:
    return zlib.crc32(repr(parts).encode()) & 0xFFFF


class SyncBatchNorm(_BatchNorm):
    """BatchNorm over (N, C, *) inputs (any rank >= 2) with statistics summed over `process_group`.

    Args as torch.nn.SyncBatchNorm; `process_group` is a syncnorm ProcessGroup, an mpi4py
    communicator, or None (the world). `timeout` (seconds, keyword-only) bounds each collective;
    None takes SYNCNORM_COLLECTIVE_TIMEOUT from the environment, or waits for ever when it is unset.

    Exact for uneven batches and for ranks with 0 samples (they still take part in both
    collectives). A step where the whole group has 0 samples leaves the running statistics alone.
    running_var is unbiased with the group's count. Eval mode and a group of size 1 never
    communicate. Weight and bias gradients stay local, as in torch.
    """

    _SYNC_ATTRS = ("process_group", "timeout", "_original_class", "_layer_index", "_fwd_calls",
                   "_bwd_calls", "_group", "_fwd_buf", "_bwd_buf", "_x_dtype")

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float | None = 0.1,
                 affine: bool = True, track_running_stats: bool = True, process_group: Any = None,
                 device: Any = None, dtype: Any = None, *, timeout: float | None = None) -> None:
        super().__init__(num_features, eps, momentum, affine, track_running_stats, device, dtype)
        self._sync_init(process_group, None, timeout)

    def _sync_init(self, process_group: Any, original: type | None, timeout: float | None) -> None:
        if process_group is not None and not isinstance(process_group, ProcessGroup):
            as_group(process_group)  # type check now, not at the first forward
        self.process_group = process_group
        self.timeout = timeout
        self._original_class = original
        self._layer_index = next(_layer_ids)
        self._fwd_calls = 0
        self._bwd_calls = 0
        self._group: ProcessGroup | None = None
        self._fwd_buf: np.ndarray | None = None
        self._bwd_buf: np.ndarray | None = None
        self._x_dtype: Any = None

    # ------------------------------------------------------------------ checks
    def _check_input_dim(self, x: np.ndarray) -> None:
        if self._original_class is not None:
            self._original_class._check_input_dim(self, x)
        elif x.ndim < 2:
            raise ValueError(f"expected at least 2D input (got {x.ndim}D input)")

    def _get_group(self) -> ProcessGroup:
        if self._group is None:
            g = as_group(self.process_group)
            if not g.is_member:
                w = get_world_group()
                raise ValueError(f"SyncBatchNorm: process_group {g} does not contain this rank "
                                 f"(world rank {w.ranks[w.rank]}); pass the group this rank belongs to")
            self._group = g
        return self._group

    def _syncs(self) -> bool:
        return self._get_group().size > 1

    def _describe(self) -> str:
        return (f"SyncBatchNorm #{self._layer_index} ({self.num_features} channels) in "
                f"{self._get_group()}")

    # ------------------------------------------------------------------ the two collectives
    def _exchange(self, buf: np.ndarray, v1: int, v2: int, phase: str) -> np.ndarray:
        g = self._get_group()
        buf[-4:] = (v1, v1 * v1, v2, v2 * v2)
        timeout = self.timeout if self.timeout is not None else C.default_timeout()
        C.allreduce_sum(buf, g.comm, timeout, f"{phase} Allreduce of {self._describe()}")
        P = g.size
        for s, q, name in ((buf[-4], buf[-3], "layer/step"), (buf[-2], buf[-1], "dtype/shift")):
            if P * int(q) != int(s) ** 2:
                raise RanksOutOfStepError(
                    f"{self._describe()}: the ranks' {phase} calls do not match ({name} fingerprints "
                    "differ): some rank skipped a layer, called layers in another order, ran an extra "
                    "step, is in eval mode, or holds different running statistics. Every rank of a "
                    "group must run the same SyncBatchNorm layers in the same order.")
        return buf

    def _reduce_stats(self, n: int, s1: np.ndarray, s2: np.ndarray,
                      shift: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
        g = self._get_group()
        self._fwd_calls += 1
        if g.size == 1:
            return n, s1, s2
        c = self.num_features
        if self._fwd_buf is None or self._fwd_buf.shape[0] != 2 * c + 5:
            self._fwd_buf = np.empty(2 * c + 5)
        buf = self._fwd_buf
        buf[0] = n
        buf[1:c + 1] = s1
        buf[c + 1:2 * c + 1] = s2
        v1 = _fp(self._layer_index, self._fwd_calls, c, "forward")
        v2 = _fp(str(self._x_dtype), shift.tobytes())
        self._exchange(buf, v1, v2, "forward")
        return buf[0], buf[1:c + 1].copy(), buf[c + 1:2 * c + 1].copy()

    def _reduce_grads(self, g_: np.ndarray, h: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        g = self._get_group()
        self._bwd_calls += 1
        if g.size == 1:
            return g_, h
        c = self.num_features
        if self._bwd_buf is None or self._bwd_buf.shape[0] != 2 * c + 4:
            self._bwd_buf = np.empty(2 * c + 4)
        buf = self._bwd_buf
        buf[:c] = g_
        buf[c:2 * c] = h
        self._exchange(buf, _fp(self._layer_index, self._bwd_calls, c, "backward"),
                       _fp(str(self._x_dtype)), "backward")
        return buf[:c].copy(), buf[c:2 * c].copy()

    def forward(self, x: np.ndarray) -> np.ndarray:
        """x: (N, C, *) -> y; in training, one Allreduce within the group."""
        self._x_dtype = getattr(x, "dtype", None)
        return super().forward(x)

    # ------------------------------------------------------------------ convert / revert
    @staticmethod
    def convert_sync_batchnorm(module: Any, process_group: Any = None) -> Any:
        """See `syncnorm.nn.convert_sync_batchnorm`."""
        from .convert import convert_sync_batchnorm
        return convert_sync_batchnorm(module, process_group)
