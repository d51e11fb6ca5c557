"""syncnorm.distributed's group collectives on the ranks of an MPI job (run by tests/test_collectives.py).

Results are compared with values every rank can compute alone (each rank's input is a function of
its rank), so a collective that reduced, gathered or broadcast the wrong thing fails here.
"""
from __future__ import annotations

import numpy as np
import pytest
from mpi4py import MPI

from syncnorm import distributed as dist

P, RANK = MPI.COMM_WORLD.Get_size(), MPI.COMM_WORLD.Get_rank()


def mine(rank: int, dtype=np.float64) -> np.ndarray:
    """Rank `rank`'s input: shape (2, 3)."""
    return (np.arange(6).reshape(2, 3) * (rank + 1) - rank).astype(dtype)


@pytest.mark.mpi(min_size=2)
@pytest.mark.parametrize("op,ref", [("sum", np.sum), ("max", np.max), ("min", np.min)])
@pytest.mark.parametrize("dtype", [np.float64, np.float32, np.int64])
def test_all_reduce_over_the_world(op, ref, dtype):
    x = mine(RANK, dtype)
    before = x.copy()
    out = dist.all_reduce(x, op=op)
    want = ref(np.stack([mine(r, dtype) for r in range(P)]), axis=0)
    assert out.dtype == np.dtype(dtype) and out.shape == (2, 3)
    np.testing.assert_array_equal(out, want)
    np.testing.assert_array_equal(x, before)  # not in place unless asked


@pytest.mark.mpi(min_size=2)
def test_all_reduce_in_place_with_a_timeout():
    x = mine(RANK)
    out = dist.all_reduce(x, timeout=60, inplace=True, label="test Allreduce")  # the polled path
    assert out is x
    np.testing.assert_array_equal(x, sum(mine(r) for r in range(P)))


@pytest.mark.mpi(min_size=2)
def test_all_gather_in_rank_order():
    out = dist.all_gather(mine(RANK), timeout=60)
    assert out.shape == (P, 2, 3)
    for r in range(P):
        np.testing.assert_array_equal(out[r], mine(r))
    np.testing.assert_array_equal(dist.all_gather(np.array([RANK])), np.arange(P)[:, None])


@pytest.mark.mpi(min_size=2)
@pytest.mark.parametrize("inplace", [False, True])
def test_broadcast_from_the_last_rank(inplace):
    x = mine(RANK)
    out = dist.broadcast(x, root=P - 1, inplace=inplace)
    np.testing.assert_array_equal(out, mine(P - 1))
    assert (out is x) == inplace
    if not inplace and RANK != P - 1:
        np.testing.assert_array_equal(x, mine(RANK))


@pytest.mark.mpi(min_size=3)
def test_a_subgroup_reduces_over_its_members_only():
    g = dist.new_group([0, 2])
    if g.is_member:
        out = dist.all_reduce(np.array([float(RANK + 1)]), g)
        np.testing.assert_array_equal(out, [1.0 + 3.0])
        np.testing.assert_array_equal(dist.all_gather(np.array([RANK]), g)[:, 0], [0, 2])
        np.testing.assert_array_equal(dist.broadcast(np.array([RANK]), g, root=1), [2])
    else:
        with pytest.raises(ValueError, match="not a member"):
            dist.all_reduce(np.zeros(1), g)
    # an mpi4py communicator is a group too
    out = dist.all_reduce(np.ones(1), MPI.COMM_WORLD)
    np.testing.assert_array_equal(out, [P])
