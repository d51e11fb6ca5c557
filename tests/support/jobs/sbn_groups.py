"""SyncBatchNorm over three kinds of groups in one job, each against single-process BatchNorm on its
group's concatenated batch (run by tests/cluster/test_sixteen_ranks.py: 4 hosts x 4 ranks).

    python -m mpi4py tests/support/jobs/sbn_groups.py [--steps K]

The groups: `split_by_node()` (one group per host), the same number of groups spread across the
hosts (group j holds the j-th rank of every host), and the world. Every rank draws the whole
world's batch of each step (uneven shards, some empty) from one seed and keeps its shard; for each
kind of group it checks its SyncBatchNorm2d's output, input gradient, parameter gradients (summed
over the group) and running statistics against nn.BatchNorm2d run here on the group's
concatenated batch (float64). Prints `GROUPS <kind> rank R host H members [...] OK` per kind, and
`NODES [[...], ...]`; a mismatch raises (and `python -m mpi4py` aborts the job).
"""
from __future__ import annotations

import argparse
import socket
import sys

import numpy as np
from mpi4py import MPI

from syncnorm import distributed as dist
from syncnorm import nn

C, H, W = 3, 2, 2  # small tensors: 16 ranks share 2 cores
TOL = 1e-9  # float64; see mpi_syncbn.py for why not bitwise


def spread(nodes: list[list[int]]) -> list[list[int]]:
    """Group j = the j-th rank of every node (one member on each host)."""
    per_node = {len(n) for n in nodes}
    if len(per_node) != 1:
        raise ValueError(f"spread groups need as many ranks on every node, got {nodes}")
    return [[n[j] for n in nodes] for j in range(per_node.pop())]


def check(kind: str, group: dist.ProcessGroup, steps: int, seed: int) -> None:
    world = dist.get_world_group()
    me = world.rank
    members = list(group.ranks)
    rng = np.random.default_rng(seed)
    ref = nn.BatchNorm2d(C, dtype="float64")
    sync = nn.SyncBatchNorm(C, dtype="float64", process_group=group)
    w, b = rng.uniform(0.5, 1.5, C), rng.normal(size=C)
    for m in (ref, sync):
        m.weight.data[...] = w
        m.bias.data[...] = b
    for _ in range(steps):
        ns = rng.integers(0, 4, world.size)  # uneven shards, empty ones included
        ns[members[0]] = max(ns[members[0]], 2)  # the group's batch has more than 1 value
        xs = [7.0 + rng.normal(0, 2, (n, C, H, W)) for n in ns]
        dys = [rng.normal(0, 1, (n, C, H, W)) for n in ns]
        pos = sum(int(ns[r]) for r in members[:members.index(me)])
        here = slice(pos, pos + int(ns[me]))
        for m in (ref, sync):
            m.zero_grad()
        y_ref = ref(np.concatenate([xs[r] for r in members]))
        dx_ref = ref.backward(np.concatenate([dys[r] for r in members]))
        y = sync(xs[me])
        dx = sync.backward(dys[me])
        np.testing.assert_allclose(y, y_ref[here], atol=TOL, rtol=TOL, err_msg=f"{kind} y")
        np.testing.assert_allclose(dx, dx_ref[here], atol=TOL * 10, rtol=TOL, err_msg=f"{kind} dx")
        g = np.concatenate([sync.weight.grad, sync.bias.grad])
        g = _sum(g, group)
        g_ref = np.concatenate([ref.weight.grad, ref.bias.grad])
        np.testing.assert_allclose(g, g_ref, atol=TOL * (1 + np.abs(g_ref).max()), rtol=TOL,
                                   err_msg=f"{kind} parameter gradients")
        np.testing.assert_allclose(sync.running_mean, ref.running_mean, atol=TOL, rtol=TOL)
        np.testing.assert_allclose(sync.running_var, ref.running_var, atol=TOL, rtol=TOL)
    print(f"GROUPS {kind} rank {me} host {socket.gethostname()} members {members} OK", flush=True)


def _sum(values: np.ndarray, group: dist.ProcessGroup) -> np.ndarray:
    """The sum over the group's ranks (mpi4py directly: the test's own arithmetic, not syncnorm's)."""
    comm = MPI.COMM_WORLD.Create_group(MPI.COMM_WORLD.Get_group().Incl(list(group.ranks)))
    out = np.empty_like(values)
    comm.Allreduce(values, out)
    comm.Free()
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=2)
    a = p.parse_args(argv)
    world = dist.get_world_group()
    node, nodes = dist.split_by_node()
    node_lists = [list(g.ranks) for g in nodes]
    if world.rank == 0:
        print(f"NODES {node_lists}", flush=True)
    mine, _ = dist.new_subgroups_by_enumeration(spread(node_lists))
    check("node", node, a.steps, seed=1)
    check("spread", mine, a.steps, seed=2)
    check("world", world, a.steps, seed=3)
    return 0


if __name__ == "__main__":
    sys.exit(main())
