import pytest

from mpi_harness import run_mpi, run_pytest_mpi

# Subject: the MPI harness itself (a smoke run, an aborting rank, a bounded hang); the ranks
# need not pay for numba's import and kernel loading (conftest.py _child_kernels).
pytestmark = pytest.mark.child_kernels("numpy")


def test_pytest_mpi_smoke_on_2_ranks():
    job = run_pytest_mpi(2, "tests/support/mpi_workers/mpi_smoke.py", timeout=120).check()
    assert "1 passed" in job.output


def test_exception_on_one_rank_aborts_the_job(tmp_path):
    script = tmp_path / "boom.py"
    script.write_text("from mpi4py import MPI\nimport time\nc = MPI.COMM_WORLD\n"
                      "if c.rank == 1: raise RuntimeError('boom on rank 1')\n"
                      "c.Barrier()\n")
    job = run_mpi(2, [str(script)], timeout=60)
    assert job.returncode != 0 and not job.timed_out
    assert "boom on rank 1" in job.output


def test_a_hang_is_bounded(tmp_path):
    script = tmp_path / "hang.py"
    script.write_text("from mpi4py import MPI\nimport time\nc = MPI.COMM_WORLD\n"
                      "if c.rank == 1: time.sleep(3600)\nc.Barrier()\n")
    job = run_mpi(2, [str(script)], timeout=8)
    assert job.timed_out and job.returncode == 124
