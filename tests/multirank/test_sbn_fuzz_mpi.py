"""The slow multi-rank property run: tests/support/mpi_workers/mpi_syncbn.py's equivalence property
(SyncBatchNorm over random subgroups, uneven batches with empty ranks, dtypes, modes, 1-3 steps,
against single-process BatchNorm on the group's batch) with 1,000 examples on 3 ranks, from a fresh
seed each run (printed, to replay: SYNCNORM_FUZZ_SEED=<seed>). The normal run does 25 examples at
each of P = 1..4 (tests/multirank/test_syncbn_mpi.py)."""
import os
import random
import re

import pytest

from mpi_harness import run_pytest_mpi


@pytest.mark.slow
def test_syncbatchnorm_property_1000_examples_on_3_ranks():
    seed = int(os.environ.get("SYNCNORM_FUZZ_SEED") or random.randrange(2**31))
    print(f"SYNCNORM_FUZZ_SEED={seed}")
    job = run_pytest_mpi(3, "tests/support/mpi_workers/mpi_syncbn.py", timeout=1500,
                         extra=("-k", "single_process"),
                         env={"SYNCNORM_FUZZ_EXAMPLES": "1000", "SYNCNORM_FUZZ_SEED": str(seed),
                              "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"})
    assert job.returncode == 0 and not job.timed_out, f"seed {seed}:\n{job.output[-6000:]}"
    assert len(re.findall(r"^1 passed", job.output, re.M)) == 3, job.output[-3000:]
