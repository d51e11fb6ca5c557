"""syncnorm.distributed.all_reduce / all_gather / broadcast: in one process (a world of 1, no MPI)
and on 2 and 3 MPI ranks (tests/support/mpi_workers/mpi_collectives.py)."""
import re

import numpy as np
import pytest
from mpi_harness import run_pytest_mpi

from syncnorm import distributed as dist
from syncnorm.distributed.group import ProcessGroup


def test_a_world_of_one_returns_its_own_values():
    x = np.arange(6.0).reshape(2, 3)
    for op in ("sum", "max", "min"):
        out = dist.all_reduce(x, op=op)
        np.testing.assert_array_equal(out, x)
        assert out is not x
    assert dist.all_reduce(x, inplace=True) is x
    assert dist.all_reduce([1, 2]).dtype == np.int64
    g = dist.all_gather(x)
    assert g.shape == (1, 2, 3) and np.array_equal(g[0], x)
    np.testing.assert_array_equal(dist.broadcast(x), x)
    assert dist.broadcast(x, inplace=True) is x


@pytest.mark.parametrize("call,error,message", [
    (lambda: dist.all_reduce(np.zeros(2), op="mean"), ValueError, "op must be one of sum, max, min"),
    (lambda: dist.all_reduce(np.array(["a"])), TypeError, "expected a numeric array"),
    (lambda: dist.all_reduce(np.zeros(2, bool)), TypeError, "got dtype bool"),
    (lambda: dist.all_reduce(np.zeros((2, 2))[:, 0], inplace=True), TypeError, "C-contiguous writable"),
    (lambda: dist.all_reduce([1.0], inplace=True), TypeError, "got list"),
    (lambda: dist.broadcast(np.zeros(2), root=1), ValueError, r"root must be a rank of the group \(0..0\)"),
    (lambda: dist.broadcast(np.zeros(2), root=True), ValueError, "root must be"),
    (lambda: dist.all_gather(np.zeros(2), timeout=0), ValueError, "timeout must be a number of seconds > 0"),
    (lambda: dist.all_reduce(np.zeros(2), ProcessGroup(None, [3], 0, "others")), ValueError,
     r"this rank is not a member of ProcessGroup\(others"),
    (lambda: dist.all_reduce(np.zeros(2), "world"), TypeError, "process_group must be"),
])
def test_bad_arguments_are_refused(call, error, message):
    with pytest.raises(error, match=message):
        call()


@pytest.mark.parametrize("nprocs", [2, 3])
def test_collectives_on_p_ranks(nprocs):
    job = run_pytest_mpi(nprocs, "tests/support/mpi_workers/mpi_collectives.py", timeout=180,
                         env={"OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}).check()
    summaries = re.findall(r"^(\d+) passed(?:, (\d+) skipped)?", job.output, re.M)
    assert len(summaries) == nprocs, job.output[-3000:]
    expected = ("13", "1") if nprocs == 2 else ("14", "")  # the subgroup test needs 3 ranks
    assert all(s == expected for s in summaries), summaries
