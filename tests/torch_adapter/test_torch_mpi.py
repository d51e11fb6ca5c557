"""Multi-rank tests of syncnorm.torch: tests/support/mpi_workers/mpi_torch_*.py under mpirun
(skipped without torch)."""
import re

import pytest

pytest.importorskip("torch", reason="syncnorm.torch needs PyTorch (pip install 'syncnorm[torch]')")

from mpi_harness import run_mpi, run_pytest_mpi  # noqa: E402

# one torch thread per rank (ranks oversubscribe 2 cores), hangs turned into errors, gloo on loopback
ENV = {"OMP_NUM_THREADS": "1", "SYNCNORM_COLLECTIVE_TIMEOUT": "120", "GLOO_SOCKET_IFNAME": "lo"}


def summaries(job, nprocs):
    found = re.findall(r"^(\d+) passed(?:, (\d+) skipped)?", job.output, re.M)
    assert len(found) == nprocs, job.output[-3000:]  # one report per rank
    return found


@pytest.mark.parametrize("nprocs", [1, 2, 3, 4])
def test_against_torch_batchnorm_on_p_ranks(nprocs):
    job = run_pytest_mpi(nprocs, "tests/support/mpi_workers/mpi_torch_reference.py", timeout=400,
                         env=ENV).check()
    found = summaries(job, nprocs)
    if nprocs > 1:  # every test ran on every rank, none skipped
        assert all(skipped == "" for _, skipped in found), found


def test_against_pytorch_cuda_syncbatchnorm_golden_results():
    job = run_pytest_mpi(4, "tests/support/mpi_workers/mpi_torch_golden.py", timeout=300, env=ENV).check()
    assert all(s == ("8", "") for s in summaries(job, 4)), job.output[-2000:]


def test_ddp_training_follows_the_single_process_large_batch_run():
    job = run_pytest_mpi(4, "tests/support/mpi_workers/mpi_torch_ddp.py", timeout=400, env=ENV).check()
    assert all(skipped == "" for _, skipped in summaries(job, 4)), job.output[-2000:]


@pytest.mark.child_kernels("numpy")  # subject: the timeout, not the kernels (conftest.py _child_kernels)
def test_timeout_keyword_ends_a_job_whose_rank_never_arrives(tmp_path):
    script = tmp_path / "skip.py"
    script.write_text("import time, torch\nfrom mpi4py import MPI\nfrom syncnorm.torch import SyncBatchNorm\n"
                      "m = SyncBatchNorm(3, timeout=1.0)\n"
                      "if MPI.COMM_WORLD.rank == 1:\n    time.sleep(120)  # never joins the collective\n"
                      "m(torch.randn(4, 3))\n")
    job = run_mpi(2, [str(script)], timeout=100, env=ENV)
    assert job.returncode != 0 and not job.timed_out, job.output[-3000:]
    assert "CollectiveTimeoutError" in job.output and "did not complete within 1 s" in job.output
