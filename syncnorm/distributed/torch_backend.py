"""torch.distributed as a transport for syncnorm's exchange: every torch collective syncnorm makes.

A `TorchGroup` wraps a torch.distributed process group (the default group, `new_group`,
`new_subgroups`) with the interface of `group.ProcessGroup` that the exchange uses: `ranks`,
`rank`, `size`, `is_member` and `allreduce_sum`. The buffer stays a numpy array: a CPU tensor
sharing its memory (`torch.from_numpy`) is all-reduced in place, so gloo (or any backend that
all-reduces CPU float64 tensors) moves exactly the bytes MPI would.

torch is never imported from here unless the program imported it already: `import syncnorm`
stays torch-free, and `loaded_dist()` answers None in a process that has not imported torch.
"""
from __future__ import annotations

import datetime
import os
import socket
import sys
from typing import Any

import numpy as np

from . import comm, failsafe

__all__ = ["TorchGroup", "loaded_dist", "torch_initialized", "is_torch_group", "started_by_torchrun",
           "wrap"]


def loaded_dist() -> Any | None:
    """torch.distributed when the program has imported torch and torch.distributed is available;
    None otherwise (torch is not imported here)."""
    if "torch" not in sys.modules:
        return None
    import torch.distributed as dist
    return dist if dist.is_available() else None


def torch_initialized() -> bool:
    """True when torch.distributed's default group exists (init_process_group was called)."""
    dist = loaded_dist()
    return bool(dist is not None and dist.is_initialized())


def started_by_torchrun() -> bool:
    """True when torchrun (torch.distributed.run) or a launcher that imitates it (Lightning's DDP
    launcher) started this process as one of several: it sets RANK, LOCAL_RANK and WORLD_SIZE."""
    try:
        return all(v in os.environ for v in ("RANK", "LOCAL_RANK")) and int(os.environ["WORLD_SIZE"]) > 1
    except (KeyError, ValueError):
        return False


def is_torch_group(obj: Any) -> bool:
    """True for a torch.distributed process group, or torch's marker for a group this rank is not
    a member of (new_group returns it to non-members). Never imports torch."""
    t = type(obj)
    if t.__module__.startswith("torch") and t.__name__ == "ProcessGroup":
        return True
    dist = loaded_dist()
    return (dist is not None and isinstance(obj, int) and not isinstance(obj, bool)
            and obj == dist.GroupMember.NON_GROUP_MEMBER)


class TorchGroup:
    """A torch.distributed group as the exchange sees it. `ranks` are torch world ranks in group
    order; `rank` is -1 (and `ranks` empty) on a rank that is not a member."""

    backend = "torch"

    def __init__(self, pg: Any) -> None:
        import torch.distributed as dist
        self.pg = pg
        if isinstance(pg, int):  # GroupMember.NON_GROUP_MEMBER
            self.ranks: tuple[int, ...] = ()
            self.rank = -1
        else:
            self.ranks = tuple(int(r) for r in dist.get_process_group_ranks(pg))
            self.rank = int(dist.get_rank(pg))
        self.size = len(self.ranks)
        default = dist.group.WORLD
        self.name = ("torch default group" if pg is default else
                     "torch group" if self.ranks else "torch group this rank is not a member of")

    @property
    def is_member(self) -> bool:
        """True when this process belongs to the group."""
        return self.rank >= 0

    @property
    def key(self) -> Any:
        """What identifies the group's stream of collectives (the torch group object)."""
        return self.pg

    def __repr__(self) -> str:
        return f"ProcessGroup({self.name}, ranks={list(self.ranks)})"

    def allreduce_sum(self, buf: np.ndarray, timeout: float | None, what: str) -> np.ndarray:
        """Sum contiguous float64 `buf` in place over the group: ONE all_reduce on a tensor that
        shares buf's memory. With a timeout, waits on the work handle until then and raises
        CollectiveTimeoutError; a broken transport (a peer that died) raises torch's error after
        printing it with syncnorm's fatal marker and arming the exit watchdog (`failsafe`)."""
        import torch
        import torch.distributed as dist
        t = torch.from_numpy(buf)
        where = self._where()
        try:
            work = dist.all_reduce(t, op=dist.ReduceOp.SUM, group=self.pg, async_op=True)
            if timeout is None:
                work.wait()
            else:
                work.wait(timeout=datetime.timedelta(seconds=timeout))
        except RuntimeError as e:
            if timeout is not None and "timed out" in str(e).lower():
                raise comm.timed_out(what, timeout, where) from e
            # gloo's message names the peer and the cause ("Connection closed by peer"); the
            # group cannot be used again, so make sure this process ends (as after a timeout)
            failsafe.report_fatal(f"{type(e).__name__} in the torch.distributed {what}: {e}", where)
            raise
        return buf

    def _where(self) -> str:
        import torch.distributed as dist
        return f"world rank {dist.get_rank()} on {socket.gethostname()}"


def wrap(pg: Any) -> TorchGroup:
    """The TorchGroup of a torch process group (None: torch's default group)."""
    import torch.distributed as dist
    return TorchGroup(dist.group.WORLD if pg is None else pg)
