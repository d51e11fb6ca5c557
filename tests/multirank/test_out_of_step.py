"""Ranks out of step: every rank raises within the one collective, nothing hangs, the job ends.

tests/support/mpi_workers/mpi_out_of_step.py (4 ranks) covers calls that disagree while every rank
still calls (skipped layers, another order, skipped backward, retried forward, another dtype, lazy
sizes, one subgroup). The rank that calls once more than everyone else has no partner at all: only
the collective timeout can end that wait, which the job below checks (and
tests/docs/test_error_table.py checks its message).
"""
import re
import time

import pytest

from mpi_harness import run_mpi, run_pytest_mpi


def test_out_of_step_scenarios_on_4_ranks():
    job = run_pytest_mpi(4, "tests/support/mpi_workers/mpi_out_of_step.py", timeout=240,
                         env={"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}).check()
    summaries = re.findall(r"^(\d+) passed", job.output, re.M)
    assert len(summaries) == 4 and all(int(s) == 11 for s in summaries), job.output[-3000:]


@pytest.mark.child_kernels("numpy")  # subject: the collective timeout (conftest.py _child_kernels)
def test_a_rank_running_an_extra_step_while_the_others_work_on_ends_the_job():
    """Rank 0 runs one more SyncBatchNorm step; the others go on with 60 s of work that does not
    communicate. Rank 0's Allreduce times out after 2 s, it prints the fatal line and raises, and
    the job ends long before the others' work would have."""
    t = time.monotonic()
    job = run_mpi(2, ["tests/support/jobs/extra_step.py", "sleep"], timeout=90)
    took = time.monotonic() - t
    out = job.output
    assert not job.timed_out and job.returncode != 0, out[-3000:]
    assert "IN-STEP rank 0" in out and "IN-STEP rank 1" in out, out[-3000:]
    assert "JOB-WENT-ON" not in out, out[-3000:]
    ended = re.search(r"EXTRA-STEP-ENDED after (\d+\.\d) s", out)
    assert ended and 2.0 <= float(ended.group(1)) < 30, out[-3000:]  # the 2 s timeout, not the peers
    assert re.search(r"\[syncnorm fatal\] world rank 0 on \S+: CollectiveTimeoutError: forward Allreduce "
                     r"of SyncBatchNorm #0 \(3 channels\) in ProcessGroup\(world, ranks=\[0, 1\]\) did "
                     r"not complete within 2 s", out), out[-3000:]
    assert took < 45, took
