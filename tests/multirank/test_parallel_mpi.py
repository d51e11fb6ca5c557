"""DistributedDataParallel on P ranks: tests/support/mpi_workers/mpi_ddp.py under mpirun at P = 1, 2, 4."""
import re

import pytest

from mpi_harness import run_pytest_mpi

ENV = {"OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}


@pytest.mark.parametrize("nprocs", [1, 2, 4])
def test_ddp_on_p_ranks(nprocs):
    job = run_pytest_mpi(nprocs, "tests/support/mpi_workers/mpi_ddp.py", timeout=240, env=ENV).check()
    summaries = re.findall(r"^(\d+) passed(?:, (\d+) skipped)?", job.output, re.M)
    assert len(summaries) == nprocs, job.output[-3000:]
    expected = ("7", "2") if nprocs == 1 else ("9", "")  # two tests need 2+ ranks
    assert all(s == expected for s in summaries), summaries
