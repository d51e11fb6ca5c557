"""Threads per rank: the share of a host's cores that each rank's math libraries may use.

numpy's BLAS (OpenBLAS, MKL), OpenMP (torch's intra-op pool), Numba and syncnorm's own kernels
each start one thread per core unless told otherwise; P ranks on one host then run P x cores
threads that fight for the cores (4 ranks on 2 cores trained ~10x slower). `syncnorm-launch`
gives every rank `cores per host // ranks per host` threads (at least 1) through the variables
below, except those the user has set (in the environment or with --env).

Ranks per host, the rule:
- one host (no --hosts/--hostfile, and not a Slurm allocation of several nodes): all N ranks run
  here, on the CPUs this launcher may use (`os.sched_getaffinity`);
- --hosts HOST:SLOTS,...: the ranks fill the slots in order (how Open MPI and hydra place them by
  default) and a host's slots stand for its cores (the launcher cannot see another host's
  CPUs); each host's share is its slots // its ranks, and the smallest share is passed, as one
  value reaches every rank;
- --hostfile, or Slurm with several nodes: the MPI or Slurm places the ranks, so the launcher
  cannot count them per host; it passes 1 (the share when a host runs one rank per core).
"""
from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

__all__ = ["THREAD_VARS", "describe", "ranks_per_host", "thread_limits", "usable_cores"]

#: read when the library loads: OpenMP (also torch's intra-op threads), OpenBLAS, MKL, Numba,
#: and syncnorm's kernel threads
THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS",
               "SYNCNORM_NUM_THREADS")


def usable_cores() -> int:
    """The CPUs this process may run on (its affinity mask; os.cpu_count() where there is none)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def ranks_per_host(nprocs: int, hosts: Sequence[tuple[str, int]]) -> list[tuple[str, int, int]]:
    """(host, slots, ranks) for each host that gets a rank, the ranks filling the slots in order.
    [('h1', 2), ('h2', 2)], 3 ranks -> [('h1', 2, 2), ('h2', 2, 1)]."""
    out, left = [], nprocs
    for name, slots in hosts:
        if left <= 0:
            break
        n = min(slots, left)
        out.append((name, slots, n))
        left -= n
    return out


def thread_limits(nprocs: int, *, hosts: Sequence[tuple[str, int]] | None = None,
                  hostfile: str | None = None, multi_node: bool = False, cores: int | None = None,
                  user_set: Mapping[str, str] | Sequence[str] = ()) -> tuple[dict[str, str], str]:
    """The thread variables to give every rank (those not in `user_set`), and how the count was
    found (for the launcher's message). See the module docstring for the rule."""
    if hostfile is not None or multi_node:
        count = 1
        why = "ranks placed by " + ("the hostfile" if hostfile is not None else "Slurm")
    elif hosts:
        placed = ranks_per_host(nprocs, hosts)
        count = max(1, min(slots // n for _, slots, n in placed))
        why = "ranks per host: " + ", ".join(f"{n} on {h} ({s} slots)" for h, s, n in placed)
    else:
        cores = cores or usable_cores()
        count = max(1, cores // nprocs)
        why = f"{nprocs} rank{'s' if nprocs != 1 else ''} on this host's {cores} " \
              f"core{'s' if cores != 1 else ''}"
    return {v: str(count) for v in THREAD_VARS if v not in user_set}, why


def describe(limits: Mapping[str, str], why: str, kept: Mapping[str, str]) -> str:
    """The launcher's one line about the thread variables: what it set, why, what it kept."""
    parts = []
    if limits:
        parts.append("set " + " ".join(f"{k}={v}" for k, v in limits.items()) + " for every rank")
    if kept:
        parts.append("kept your " + " ".join(f"{k}={v}" for k, v in kept.items()))
    return f"syncnorm-launch: {'; '.join(parts)} ({why}; --no-thread-limits turns this off)"
