"""Process groups shaped like torch.distributed's, over MPI communicators.

A `ProcessGroup` is a set of world ranks; members hold an MPI communicator over them. The world of a
plain `python` process is a group of size 1 that never touches MPI. Anywhere a group is accepted, an
mpi4py communicator is accepted too; a synchronized layer also accepts a torch.distributed group
(`torch_backend.TorchGroup`), and `layer_group` says which group `process_group=None` means.
"""
from __future__ import annotations

import os
from typing import Any, Sequence

import numpy as np

from . import torch_backend
from .comm import BufferMismatchError, allgather, allreduce_sum, create_group, mpi, split, split_shared
from .env import check_launcher_family, check_world, launcher_info, wants_mpi

__all__ = ["ProcessGroup", "get_world_group", "get_rank", "get_world_size", "new_group",
           "new_subgroups", "new_subgroups_by_enumeration", "split_by_node", "as_group",
           "check_process_group", "layer_group"]


class ProcessGroup:
    """A group of ranks. `comm` is None for a group of size 1 without MPI and for a group that
    this rank is not a member of (a descriptor of others' group)."""

    def __init__(self, comm: Any, ranks: Sequence[int], my_world_rank: int, name: str) -> None:
        self.comm = comm
        self.ranks = tuple(int(r) for r in ranks)
        self.name = name
        self.rank = self.ranks.index(my_world_rank) if my_world_rank in self.ranks else -1
        self.size = len(self.ranks)

    backend = "mpi"

    @property
    def is_member(self) -> bool:
        """True when this process belongs to the group (it has a rank in it)."""
        return self.rank >= 0

    @property
    def key(self) -> Any:
        """What identifies the group's stream of collectives (its communicator)."""
        return self.comm

    def __repr__(self) -> str:
        return f"ProcessGroup({self.name}, ranks={list(self.ranks)})"

    def allreduce_sum(self, buf: np.ndarray, timeout: float | None, what: str) -> np.ndarray:
        """Sum contiguous `buf` in place over the group (ONE Allreduce); MPI's error for buffers
        of different sizes becomes `comm.BufferMismatchError`."""
        try:
            return allreduce_sum(buf, self.comm, timeout, what)
        except mpi().Exception as e:
            raise BufferMismatchError(str(e)) from e


_WORLD: ProcessGroup | None = None


def get_world_group() -> ProcessGroup:
    """The group of all ranks (size 1 and no MPI in a plain process)."""
    global _WORLD
    if _WORLD is None:
        if wants_mpi():
            check_launcher_family()
            w = mpi().COMM_WORLD
            check_world(w.Get_size())
            _WORLD = ProcessGroup(w, range(w.Get_size()), w.Get_rank(), "world")
        else:
            _WORLD = ProcessGroup(None, [0], 0, "world")
    return _WORLD


def get_rank(group: Any = None) -> int:
    """This process's rank in `group` (default world); -1 when it is not a member."""
    return as_group(group).rank


def get_world_size(group: Any = None) -> int:
    """Number of ranks in `group` (default world)."""
    return as_group(group).size


def _world_ranks_of(communicator: Any) -> list[int]:
    w = get_world_group()
    size = communicator.Get_size()
    if w.comm is None:
        return [0] * size
    return list(communicator.Get_group().Translate_ranks(list(range(size)), w.comm.Get_group()))


def as_group(group: Any) -> ProcessGroup | torch_backend.TorchGroup:
    """Accept None (world), a ProcessGroup, an mpi4py communicator or a torch.distributed group."""
    if group is None:
        return get_world_group()
    if isinstance(group, (ProcessGroup, torch_backend.TorchGroup)):
        return group
    check_process_group(group)
    if torch_backend.is_torch_group(group):
        return torch_backend.wrap(group)
    w = get_world_group()
    ranks = _world_ranks_of(group)
    me = ranks[group.Get_rank()] if w.comm is not None else 0
    return ProcessGroup(group, ranks, me, f"communicator {getattr(group, 'name', '')!s}".strip())


def _is_communicator(obj: Any) -> bool:
    return all(hasattr(obj, a) for a in ("Get_size", "Get_rank", "Allreduce", "Get_group"))


def check_process_group(process_group: Any) -> None:
    """Raise a TypeError unless `process_group` is None, a ProcessGroup, an mpi4py communicator or
    a torch.distributed group (checked without starting MPI or importing torch; every
    `process_group=` argument goes through here)."""
    if (process_group is None or isinstance(process_group, (ProcessGroup, torch_backend.TorchGroup))
            or _is_communicator(process_group) or torch_backend.is_torch_group(process_group)):
        return
    raise TypeError("process_group must be a syncnorm ProcessGroup, an mpi4py communicator, a "
                    f"torch.distributed group or None; got {type(process_group).__name__}")


def layer_group(process_group: Any) -> ProcessGroup | torch_backend.TorchGroup:
    """The group a synchronized layer uses. `process_group=None` means:

    - in an MPI job of several ranks (an MPI launcher started this process): the MPI world; when
      torch.distributed is initialized with several ranks too, it must be as many (else refused:
      which world was meant?);
    - else, when torch.distributed is initialized (torchrun, Lightning, a manual rendezvous):
      torch's default group (an MPI world of 1, e.g. MPI initialized by a library, does not count);
    - else a world of 1, unless torchrun started this process as one of several (refused: the
      statistics would silently stay local).
    """
    if process_group is not None:
        return as_group(process_group)
    world = get_world_group() if wants_mpi() else None
    n = torch_backend.loaded_dist().get_world_size() if torch_backend.torch_initialized() else 0
    if world is not None and world.size > 1:
        if n > 1 and n != world.size:
            info = launcher_info()
            by = f" ({info.launcher})" if info is not None else ""
            raise RuntimeError(
                f"process_group=None is ambiguous: this process is rank {world.rank} of an MPI "
                f"world of {world.size}{by} and of a torch.distributed world of {n}. Start the "
                "job with one launcher (torchrun alone, or an MPI launcher with "
                "syncnorm.torch.init_process_group), or pass process_group explicitly (a "
                "torch.distributed group or a syncnorm ProcessGroup).")
        return world
    if n:
        return torch_backend.wrap(None)
    if torch_backend.started_by_torchrun():
        raise RuntimeError(
            f"this process is rank {os.environ.get('RANK')} of {os.environ.get('WORLD_SIZE')} "
            "started by torchrun (RANK, LOCAL_RANK and WORLD_SIZE are set), but torch.distributed "
            "is not initialized: SyncBatchNorm would only see this rank's batch. Call "
            "torch.distributed.init_process_group('gloo') before the first training step.")
    return world if world is not None else get_world_group()


def _check_ranks(ranks: Sequence[int], world_size: int, what: str) -> list[int]:
    out = []
    for r in ranks:
        if not isinstance(r, (int, np.integer)) or isinstance(r, bool):
            raise TypeError(f"{what}: ranks must be integers, got {r!r}")
        if not 0 <= r < world_size:
            raise ValueError(f"{what}: rank {r} is outside the world of size {world_size}")
        out.append(int(r))
    if len(set(out)) != len(out):
        raise ValueError(f"{what}: rank list {out} names a rank twice")
    if not out:
        raise ValueError(f"{what}: a group needs at least one rank")
    return out


def new_group(ranks: Sequence[int] | None = None) -> ProcessGroup:
    """A group of `ranks` (world ranks, in group-rank order). Collective over the members only:
    members must call it; non-members may, and get a non-member descriptor without communicating."""
    w = get_world_group()
    if ranks is None:
        return w
    ranks = _check_ranks(ranks, w.size, "new_group")
    me = w.ranks[w.rank]
    if me not in ranks or w.comm is None:
        return ProcessGroup(None, ranks, me, f"group {ranks}")
    return ProcessGroup(create_group(w.comm, ranks), ranks, me, f"group {ranks}")


def new_subgroups_by_enumeration(ranks_per_subgroup_list: Sequence[Sequence[int]]
                                 ) -> tuple[ProcessGroup | None, list[ProcessGroup]]:
    """Disjoint subgroups from explicit rank lists; collective over the world.

    Returns (this rank's subgroup or None when it is in none, all subgroups)."""
    w = get_world_group()
    lists = [_check_ranks(r, w.size, "new_subgroups_by_enumeration") for r in ranks_per_subgroup_list]
    seen: dict[int, int] = {}
    for i, rl in enumerate(lists):
        for r in rl:
            if r in seen:
                raise ValueError(f"new_subgroups_by_enumeration: rank {r} is in subgroup {seen[r]} "
                                 f"and subgroup {i}; subgroups must be disjoint")
            seen[r] = i
    me = w.ranks[w.rank]
    n = len(lists)
    if w.comm is None:
        groups = [ProcessGroup(None, rl, me, f"subgroup {i} of {n}") for i, rl in enumerate(lists)]
        return (groups[seen[me]] if me in seen else None), groups
    color = seen.get(me)
    sub = split(w.comm, color, lists[color].index(me) if color is not None else 0)
    groups = [ProcessGroup(sub if i == color else None, rl, me, f"subgroup {i} of {n}")
              for i, rl in enumerate(lists)]
    return (groups[color] if color is not None else None), groups


def new_subgroups(group_size: int | None = None) -> tuple[ProcessGroup, list[ProcessGroup]]:
    """Contiguous subgroups of `group_size` ranks ([0..g-1], [g..2g-1], ...); collective over the
    world. Without a size: one subgroup per node (see `split_by_node`)."""
    w = get_world_group()
    if group_size is None:
        return split_by_node()
    if not isinstance(group_size, (int, np.integer)) or group_size <= 0:
        raise ValueError(f"group_size must be a positive integer, got {group_size!r}")
    if w.size % group_size:
        raise ValueError(f"the world size {w.size} is not divisible by group_size {group_size}")
    lists = [list(range(s, s + group_size)) for s in range(0, w.size, group_size)]
    cur, groups = new_subgroups_by_enumeration(lists)
    assert cur is not None
    return cur, groups


def split_by_node() -> tuple[ProcessGroup, list[ProcessGroup]]:
    """One subgroup per machine (ranks that share memory); collective over the world."""
    w = get_world_group()
    if w.comm is None:
        return w, [w]
    node = split_shared(w.comm)
    me = w.ranks[w.rank]
    leaders = allgather(np.array([min(allgather(np.array([me]), node)[:, 0])]), w.comm)[:, 0]
    order = sorted(set(int(x) for x in leaders))
    groups = []
    for i, lead in enumerate(order):
        ranks = [r for r in range(w.size) if leaders[r] == lead]
        groups.append(ProcessGroup(node if me in ranks else None, ranks, me, f"node {i} of {len(order)}"))
    cur = next(g for g in groups if g.is_member)
    return cur, groups
