"""Multi-rank SyncBatchNorm tests: tests/mpi/mpi_syncbn.py under mpirun at P = 1, 2, 3, 4."""
import re

import pytest

from mpi_harness import run_pytest_mpi


@pytest.mark.parametrize("nprocs", [1, 2, 3, 4])
def test_syncbatchnorm_on_p_ranks(nprocs):
    job = run_pytest_mpi(nprocs, "tests/mpi/mpi_syncbn.py", timeout=400).check()
    summaries = re.findall(r"^(\d+) passed(?:, (\d+) skipped)?", job.output, re.M)
    assert len(summaries) == nprocs, job.output[-3000:]  # one report per rank
    if nprocs == 4:  # the golden cases (recorded on 4 ranks) ran, none skipped
        assert all(s == ("17", "") for s in summaries), summaries
