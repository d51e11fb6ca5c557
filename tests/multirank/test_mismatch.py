"""Rank/size detection from the launcher's environment, and MPIMismatchError for real.

The mismatches are produced for real: MPICH's launcher (hydra, from the `mpich` wheel) starting
ranks whose mpi4py loads Open MPI (each rank's MPI_Init makes a singleton world of 1), and Open
MPI's mpirun starting ranks whose mpi4py loads MPICH (MPICH's MPI_Init cannot join; syncnorm says so
before calling it). The Slurm case (`srun --mpi=none`) runs in tests/cluster/test_job_templates.py
where Slurm can be started. The environment tables below are what the launchers set (checked on this
machine with Open MPI 5.0.11, MPICH 5.0.2 hydra and Slurm 22.05 where noted).
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from mpich_runtime import mpich_env, mpich_prefix
from syncnorm.distributed import env as E
from syncnorm.distributed.env import MPIMismatchError

ROOT = Path(__file__).resolve().parents[2]
PY = sys.executable

# Subject: which launcher and MPI library a rank sees, and the errors when they differ; the ranks
# need not pay for numba's import and kernel loading (conftest.py _child_kernels).
pytestmark = pytest.mark.child_kernels("numpy")

PROBE = ("from syncnorm.distributed import get_world_group\n"
         "w = get_world_group()\n"
         "import sys; sys.stdout.write(f'SIZEIS {w.rank} {w.size}\\n'); sys.stdout.flush()\n")


@pytest.fixture(scope="module")
def mpich():
    prefix, why = mpich_prefix()
    if prefix is None:
        pytest.skip(why)
    return prefix


def _run(line: list[str], env: dict[str, str], timeout: float = 90) -> subprocess.CompletedProcess:
    env = dict(env, PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1")
    return subprocess.run(line, env=env, cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                          start_new_session=True)


def test_mpich_launcher_with_open_mpi_ranks_raises_mpimismatcherror(mpich):
    env = dict(os.environ)
    env.pop("MPI4PY_LIBMPI", None)  # mpi4py loads the project's Open MPI
    r = _run([str(mpich / "bin" / "mpiexec"), "-n", "2", PY, "-c", PROBE], env)
    out = r.stdout + r.stderr
    assert r.returncode != 0, out
    assert "SIZEIS" not in out
    # each rank fails on its own; hydra may kill one before it prints, so at least one reports
    assert re.search(r"MPIMismatchError: this process was started by a PMI launcher \(MPICH/Intel "
                     r"MPI mpiexec, hydra, srun --mpi=pmi2, Cray\) as rank [01] of 2 "
                     r"\(PMI_SIZE=2\), but MPI \(Open MPI v5", out), out
    assert "sees a world of size 1" in out and "syncnorm-launch" in out


def test_open_mpi_launcher_with_mpich_ranks_is_refused_before_mpi_init(mpich):
    env = mpich_env(mpich)
    env.update(OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
    r = _run([str(Path(PY).parent / "mpirun"), "-n", "2", "-x", "MPI4PY_LIBMPI", "-x", "PYTHONPATH",
              PY, "-c", PROBE], env)
    out = r.stdout + r.stderr
    assert r.returncode != 0, out
    assert "SIZEIS" not in out
    # the first rank to fail makes mpirun kill the other one: either may be the one that reports
    assert re.search(r"MPIMismatchError: this process was started by Open MPI mpirun as rank [01] "
                     r"of 2 \(OMPI_COMM_WORLD_SIZE=2\), but mpi4py loads an MPICH-family MPI "
                     r"library", out), out
    assert "Internal MPI error" not in out  # MPICH's MPI_Init was never reached


def test_matching_launchers_give_the_right_world(mpich):
    ompi = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
    ompi.pop("MPI4PY_LIBMPI", None)
    for line, env in (([str(Path(PY).parent / "mpirun"), "-n", "2", "--oversubscribe", "-x",
                        "PYTHONPATH", PY, "-c", PROBE], ompi),
                      ([str(mpich / "bin" / "mpiexec"), "-n", "2", PY, "-c", PROBE],
                       mpich_env(mpich))):
        r = _run(line, env)
        assert r.returncode == 0, r.stdout + r.stderr
        assert sorted(re.findall(r"SIZEIS \d \d", r.stdout)) == ["SIZEIS 0 2", "SIZEIS 1 2"]


# ------------------------------------------------------------------------- what launchers set
_ENVS = {
    "plain": ({}, None),
    "open mpi mpirun": ({"OMPI_COMM_WORLD_SIZE": "4", "OMPI_COMM_WORLD_RANK": "2",
                         "PMIX_RANK": "2"}, (4, 2, "OMPI_COMM_WORLD_SIZE")),
    "hydra": ({"PMI_SIZE": "3", "PMI_RANK": "1"}, (3, 1, "PMI_SIZE")),
    # srun --mpi=pmix: PMIx gives the rank only; the size comes from the step
    "srun --mpi=pmix": ({"PMIX_RANK": "3", "PMIX_NAMESPACE": "slurm.pmix.5.0",
                         "SLURM_STEP_NUM_TASKS": "4", "SLURM_PROCID": "3", "SLURM_NTASKS": "4"},
                        (4, 3, "SLURM_STEP_NUM_TASKS")),
    "srun --mpi=pmi2": ({"PMI_SIZE": "4", "PMI_RANK": "1", "PMI_FD": "5",
                         "SLURM_STEP_NUM_TASKS": "4", "SLURM_PROCID": "1"}, (4, 1, "PMI_SIZE")),
    "srun --mpi=none": ({"SLURM_STEP_NUM_TASKS": "2", "SLURM_PROCID": "1", "SLURM_NTASKS": "2"},
                        (2, 1, "SLURM_STEP_NUM_TASKS")),
    # the batch script itself: SLURM_* set, but no step, so a plain `python` line is a world of 1
    "sbatch batch script": ({"SLURM_JOB_ID": "7", "SLURM_NTASKS": "4", "SLURM_PROCID": "0",
                             "SLURM_NPROCS": "4"}, None),
    # mpirun inside an allocation: the ranks inherit the batch variables; mpirun's come first
    "mpirun under sbatch": ({"SLURM_JOB_ID": "7", "SLURM_NTASKS": "4", "OMPI_COMM_WORLD_SIZE": "4",
                             "OMPI_COMM_WORLD_RANK": "0"}, (4, 0, "OMPI_COMM_WORLD_SIZE")),
    "cray pals": ({"PALS_SIZE": "8", "PALS_RANKID": "5"}, (8, 5, "PALS_SIZE")),
    "flux": ({"FLUX_JOB_SIZE": "2", "FLUX_TASK_RANK": "1"}, (2, 1, "FLUX_JOB_SIZE")),
    "pmix without size": ({"PMIX_RANK": "1"}, (0, 1, "PMIX_RANK")),
}


@pytest.fixture
def clean_env(monkeypatch):
    for k in list(os.environ):
        if k.startswith(("OMPI_COMM_WORLD", "PMI_", "PMIX_", "SLURM_", "PALS_", "FLUX_", "JSM_",
                         "MV2_", "SYNCNORM_USE_MPI")):
            monkeypatch.delenv(k)
    return monkeypatch


@pytest.mark.parametrize("name", list(_ENVS))
def test_launcher_info_reads_each_launchers_variables(clean_env, name):
    variables, want = _ENVS[name]
    for k, v in variables.items():
        clean_env.setenv(k, v)
    info = E.launcher_info()
    if want is None:
        assert info is None and not E.wants_mpi()
    else:
        assert (info.size, info.rank, info.variable) == want
        size, rank, launcher = info  # the earlier tuple form still unpacks
        assert E.wants_mpi()


def test_check_world_names_launcher_and_both_sizes(clean_env):
    clean_env.setenv("SLURM_STEP_NUM_TASKS", "4")
    clean_env.setenv("SLURM_PROCID", "2")
    E.check_world(4)  # agrees: fine
    with pytest.raises(MPIMismatchError, match=r"Slurm srun as rank 2 of 4 \(SLURM_STEP_NUM_TASKS=4\)"
                       r".* sees a world of size 1"):
        E.check_world(1)
    with pytest.raises(MPIMismatchError, match="sees a world of size 2.*stale"):
        E.check_world(2)
    clean_env.setenv("SYNCNORM_USE_MPI", "0")
    assert not E.wants_mpi()
