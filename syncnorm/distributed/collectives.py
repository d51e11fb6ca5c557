"""Group-level collectives on numpy arrays: `all_reduce`, `all_gather`, `broadcast`.

What applications (the training job, DistributedDataParallel) use to talk between ranks, so that
only `syncnorm.distributed` touches MPI. Each call is ONE MPI collective over `group` (None: the
world; a ProcessGroup or an mpi4py communicator), and none in a group of one rank. `timeout`
(seconds) bounds the wait: None takes SYNCNORM_COLLECTIVE_TIMEOUT, or waits for ever when it is
unset; past it `CollectiveTimeoutError` is raised and the process ends (see `comm`). `label` names
the call in that error.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from . import comm as comm_mod
from .group import ProcessGroup, as_group

__all__ = ["all_reduce", "all_gather", "broadcast"]

_OPS = ("sum", "max", "min")


def _member(group: Any, what: str) -> ProcessGroup:
    g = as_group(group)
    if not g.is_member:
        raise ValueError(f"{what}: this rank is not a member of {g}; only members take part")
    return g


def _buffer(values: Any, what: str, kinds: str, inplace: bool) -> np.ndarray:
    """The contiguous array the collective works on: `values` itself when `inplace`, else a copy
    (lists and scalars become float64 or int64 arrays)."""
    if inplace:
        if not (isinstance(values, np.ndarray) and values.flags.c_contiguous and values.flags.writeable):
            raise TypeError(f"{what}(inplace=True) needs a C-contiguous writable numpy array, got "
                            f"{type(values).__name__}")
        buf = values
    else:
        buf = np.array(values, order="C", copy=True)
    if buf.dtype.kind not in kinds:
        raise TypeError(f"{what}: expected a numeric array (dtype kinds {', '.join(kinds)}), got "
                        f"dtype {buf.dtype}")
    return buf


def all_reduce(values: Any, group: Any = None, op: str = "sum", *, timeout: float | None = None,
               label: str = "all_reduce", inplace: bool = False) -> np.ndarray:
    """Element-wise `op` ("sum", "max" or "min") of `values` over the ranks of `group`.

    values: an array of any shape (S...) and numeric dtype, the same shape and dtype on every rank.
    Returns an array of shape (S...) with the reduced values, equal on every rank. `values` is left
    alone unless `inplace=True` (then it must be a C-contiguous writable array, and is returned).
    """
    if op not in _OPS:
        raise ValueError(f"all_reduce: op must be one of {', '.join(_OPS)}, got {op!r}")
    g = _member(group, "all_reduce")
    t = _timeout(timeout, "all_reduce")
    buf = _buffer(values, "all_reduce", "iuf", inplace)
    if g.size > 1:
        comm_mod.allreduce_sum(buf, g.comm, t, label, op)
    return buf


def all_gather(values: Any, group: Any = None, *, timeout: float | None = None,
               label: str = "all_gather") -> np.ndarray:
    """Every rank's `values`, stacked in group-rank order.

    values: shape (S...), the same shape and dtype on every rank. Returns shape (P, S...) where P
    is the group's size; row r is rank r's `values`.
    """
    g = _member(group, "all_gather")
    t = _timeout(timeout, "all_gather")
    buf = _buffer(values, "all_gather", "biuf", False)
    if g.size == 1:
        return buf[None]
    return comm_mod.allgather(buf, g.comm, t, label)


def broadcast(values: Any, group: Any = None, root: int = 0, *, timeout: float | None = None,
              label: str = "broadcast", inplace: bool = False) -> np.ndarray:
    """Group rank `root`'s `values` on every rank.

    values: shape (S...), the same shape and dtype on every rank (the others' contents are ignored).
    Returns shape (S...): root's values. With `inplace=True` the array itself is overwritten (it
    must be C-contiguous and writable) and returned.
    """
    g = _member(group, "broadcast")
    if isinstance(root, bool) or not isinstance(root, (int, np.integer)) or not 0 <= root < g.size:
        raise ValueError(f"broadcast: root must be a rank of the group (0..{g.size - 1}), got {root!r}")
    t = _timeout(timeout, "broadcast")
    buf = _buffer(values, "broadcast", "biuf", inplace)
    if g.size > 1:
        comm_mod.broadcast(buf, g.comm, int(root), t, label)
    return buf


def _timeout(timeout: float | None, what: str) -> float | None:
    if timeout is None:
        return comm_mod.default_timeout()
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout > 0:
        raise ValueError(f"{what}: timeout must be a number of seconds > 0 (or None), got {timeout!r}")
    return float(timeout)
