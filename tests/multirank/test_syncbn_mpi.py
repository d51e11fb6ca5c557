"""Multi-rank SyncBatchNorm tests: tests/support/mpi_workers/mpi_syncbn.py under mpirun at P = 1, 2, 3, 4."""
import re

import pytest

from mpi_harness import run_pytest_mpi


@pytest.mark.parametrize("nprocs", [1, 2, 3, 4])
def test_syncbatchnorm_on_p_ranks(nprocs):
    job = run_pytest_mpi(nprocs, "tests/support/mpi_workers/mpi_syncbn.py", timeout=240).check()
    summaries = re.findall(r"^(\d+) passed(?:, (\d+) skipped)?", job.output, re.M)
    assert len(summaries) == nprocs, job.output[-3000:]  # one report per rank
    if nprocs == 4:  # the golden cases (recorded on 4 ranks) ran, none skipped
        assert all(s[1] == "" and int(s[0]) >= 20 for s in summaries), summaries


@pytest.mark.child_kernels("numpy")  # subject: the error and the job's end (conftest.py _child_kernels)
def test_rank_in_eval_while_others_train_ends_the_job_with_a_clear_error():
    import time

    from mpi_harness import run_mpi
    t = time.monotonic()
    job = run_mpi(2, ["tests/support/jobs/eval_rank.py"], timeout=60)
    took = time.monotonic() - t
    assert not job.timed_out and job.returncode != 0, job.output[-3000:]
    assert "JOB-WENT-ON" not in job.output
    assert re.search(r"CollectiveTimeoutError: forward Allreduce of SyncBatchNorm #\d+ \(2 channels\) "
                     r"in ProcessGroup\(world, ranks=\[0, 1\]\) did not complete within 2 s", job.output)
    assert took < 45, took
