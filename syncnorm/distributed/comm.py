"""Every MPI call syncnorm makes lives in this file (grep it for the collectives).

All data moves through mpi4py's buffer methods (upper-case: `Allreduce`, `Bcast`, ...) on contiguous
numpy arrays: no pickling between ranks. A collective can take a timeout (seconds; default from the
environment variable SYNCNORM_COLLECTIVE_TIMEOUT): it then runs as a nonblocking call polled against
a deadline and raises `CollectiveTimeoutError` when a peer never arrives (a dead link, a rank that
skipped the call) instead of hanging until TCP gives up.
"""
from __future__ import annotations

import os
import time
from typing import Any

import numpy as np

from . import failsafe

__all__ = ["mpi", "allreduce_sum", "broadcast", "allgather", "split", "create_group",
           "split_shared", "abort", "CollectiveTimeoutError", "BufferMismatchError", "timed_out",
           "default_timeout"]


class CollectiveTimeoutError(RuntimeError):
    """A collective did not complete before its deadline on this rank."""


def mpi() -> Any:
    """The mpi4py.MPI module (importing it initializes MPI)."""
    from mpi4py import MPI
    return MPI


def default_timeout() -> float | None:
    """Seconds from SYNCNORM_COLLECTIVE_TIMEOUT, or None (wait for ever) when unset or 0."""
    raw = os.environ.get("SYNCNORM_COLLECTIVE_TIMEOUT", "").strip()
    if not raw:
        return None
    try:
        t = float(raw)
    except ValueError:
        raise ValueError(f"SYNCNORM_COLLECTIVE_TIMEOUT must be a number of seconds, got {raw!r}") from None
    return t if t > 0 else None


class BufferMismatchError(RuntimeError):
    """The transport refused a collective because the ranks passed buffers of different sizes
    (MPI's truncation error); the exchange turns it into RanksOutOfStepError."""


def timed_out(what: str, timeout: float, where: str) -> CollectiveTimeoutError:
    """The error for a collective that missed its deadline, after saying so on stderr and arming
    the exit watchdog (`failsafe`): the transport is unusable from here, on MPI and gloo alike."""
    err = CollectiveTimeoutError(
        f"{what} did not complete within {timeout:g} s: a rank of the group is dead, "
        "unreachable, or not making the same call (ranks out of step). Aborting is the only "
        "safe way on from here.")
    # say so now and make sure this process ends (MPI's own abort can hang on a dead link)
    failsafe.report_fatal(f"CollectiveTimeoutError: {err}", where)
    return err


def _wait(req: Any, timeout: float, what: str, comm: Any = None) -> None:
    deadline = time.monotonic() + timeout
    pause = 0.0
    while not req.Test():
        if time.monotonic() > deadline:
            raise timed_out(what, timeout, _where(comm))
        time.sleep(pause)
        pause = min(1e-3, pause + 2e-5)


def _where(comm: Any) -> str:
    """'rank R of the world on HOST' for error lines (no communication)."""
    import socket
    try:
        rank = mpi().COMM_WORLD.Get_rank()
    except Exception:  # noqa: BLE001 - only for a message
        rank = comm.Get_rank() if comm is not None else "?"
    return f"world rank {rank} on {socket.gethostname()}"


def allreduce_sum(buf: np.ndarray, comm: Any, timeout: float | None = None,
                  what: str = "Allreduce", op: str = "sum") -> np.ndarray:
    """Reduce contiguous `buf` (float64 or int64) in place across `comm` (op "sum", "max" or
    "min"); ONE collective."""
    MPI = mpi()
    mop = {"sum": MPI.SUM, "max": MPI.MAX, "min": MPI.MIN}[op]
    if timeout is None:
        comm.Allreduce(MPI.IN_PLACE, buf, op=mop)
    else:
        _wait(comm.Iallreduce(MPI.IN_PLACE, buf, op=mop), timeout, what, comm)
    return buf


def broadcast(buf: np.ndarray, comm: Any, root: int = 0, timeout: float | None = None,
              what: str = "Bcast") -> np.ndarray:
    """Overwrite contiguous `buf` on every rank with root's copy; ONE collective."""
    if timeout is None:
        comm.Bcast(buf, root=root)
    else:
        _wait(comm.Ibcast(buf, root=root), timeout, what, comm)
    return buf


def allgather(values: np.ndarray, comm: Any, timeout: float | None = None,
              what: str = "Allgather") -> np.ndarray:
    """Gather a small contiguous array from every rank: result shape (size, *values.shape)."""
    out = np.empty((comm.Get_size(),) + values.shape, values.dtype)
    if timeout is None:
        comm.Allgather(np.ascontiguousarray(values), out)
    else:
        _wait(comm.Iallgather(np.ascontiguousarray(values), out), timeout, what, comm)
    return out


def split(comm: Any, color: int | None, key: int) -> Any:
    """MPI_Comm_split; color None means MPI_UNDEFINED (the result is COMM_NULL)."""
    MPI = mpi()
    return comm.Split(MPI.UNDEFINED if color is None else color, key)


def create_group(comm: Any, ranks: list[int], tag: int = 0) -> Any:
    """MPI_Comm_create_group over `ranks` of `comm`: collective over the members only."""
    return comm.Create_group(comm.Get_group().Incl(ranks), tag)


def split_shared(comm: Any) -> Any:
    """The ranks of `comm` that share this node's memory (MPI_COMM_TYPE_SHARED)."""
    MPI = mpi()
    return comm.Split_type(MPI.COMM_TYPE_SHARED, key=comm.Get_rank())


def abort(comm: Any, code: int = 1) -> None:
    """End every rank of the job now."""
    comm.Abort(code)
