"""The job scripts in launch/ work as they are.

* every script parses (`bash -n`) and prints the command it would run (SYNCNORM_DRY_RUN=1) given
  the variables its scheduler sets;
* Slurm: both sbatch templates run for real on a one-node Slurm that the test starts and stops
  (tests/support/slurm_cluster.py), with Open MPI through `srun --mpi=pmix` and through mpirun, with
  MPICH through `srun --mpi=pmi2`; `srun --mpi=none` gives MPIMismatchError. Skipped (with the reason)
  where Slurm is not installed; .ci/run installs it;
* PBS: no PBS server exists for Debian 12, so pbs.sh runs outside PBS with the variables PBS sets
  (PBS_NODEFILE, PBS_O_WORKDIR, PBS_JOBID) naming this machine;
* hostfile.sh: runs for real on two hosts of the netns test cluster (ssh replaced by its agent).
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from mpich_runtime import mpich_env, mpich_prefix
from netns_cluster import NetnsCluster
from slurm_cluster import SlurmCluster

ROOT = Path(__file__).resolve().parents[2]
PY = sys.executable

# Subject: the scheduler job scripts and their plumbing (Slurm, PBS, hostfile); the ranks
# need not pay for numba's import and kernel loading (conftest.py _child_kernels).
pytestmark = pytest.mark.child_kernels("numpy")

SCRIPTS = ["slurm-srun.sbatch", "slurm-mpirun.sbatch", "pbs.sh", "hostfile.sh"]


def job_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("SLURM_", "PBS_", "OMPI_COMM_WORLD", "PMI"))}
    env.update(PYTHON=PY, **extra)
    return env


def bash(script: str, *args: str, env: dict[str, str], timeout: float = 120,
         cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(ROOT / "launch" / script), *args], env=env, cwd=cwd,
                          capture_output=True, text=True, timeout=timeout, start_new_session=True)


@pytest.mark.parametrize("script", SCRIPTS)
def test_script_parses_and_is_executable(script):
    path = ROOT / "launch" / script
    assert os.access(path, os.X_OK)
    r = subprocess.run(["bash", "-n", str(path)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


# ------------------------------------------------------------------------- dry runs (always)
def test_dry_runs_print_the_commands(tmp_path):
    r = bash("slurm-srun.sbatch", env=job_env(SYNCNORM_DRY_RUN="1", SLURM_NTASKS="4"))
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[-1].strip() == (
        f"srun --mpi=pmix --kill-on-bad-exit=1 {PY} -m mpi4py -m syncnorm.check")
    r = bash("slurm-srun.sbatch", "-m", "syncnorm.train", "--epochs", "2",
             env=job_env(SYNCNORM_DRY_RUN="1", SYNCNORM_SRUN_MPI="pmi2"))
    assert r.stdout.splitlines()[-1].strip().endswith(
        f"--mpi=pmi2 --kill-on-bad-exit=1 {PY} -m mpi4py -m syncnorm.train --epochs 2")

    # mpirun inside a 2-node allocation: no --oversubscribe (Open MPI 5 would pile ranks on node 1)
    r = bash("slurm-mpirun.sbatch", env=job_env(SYNCNORM_DRY_RUN="1", SLURM_NTASKS="8",
                                                SLURM_JOB_NUM_NODES="2"))
    assert r.returncode == 0, r.stderr
    line = r.stdout.splitlines()[-1]
    assert f"/mpirun -n 8 --timeout 540" in line and "--oversubscribe" not in line
    assert line.endswith(f"{PY} -m mpi4py -m syncnorm.check")
    r = bash("slurm-mpirun.sbatch", env=job_env(SYNCNORM_DRY_RUN="1"))
    assert r.returncode != 0 and "not inside a Slurm allocation" in r.stderr

    nodefile = tmp_path / "nodefile"
    nodefile.write_text("n1\nn1\nn2\nn2\nn3\n")
    r = bash("pbs.sh", env=job_env(SYNCNORM_DRY_RUN="1", PBS_NODEFILE=str(nodefile),
                                   SYNCNORM_JOB="-m syncnorm.train --epochs 1"))
    assert r.returncode == 0, r.stderr
    assert "/mpirun -n 5 --host n1:2,n2:2,n3:1 --timeout 540" in r.stdout
    assert r.stdout.rstrip().endswith(f"{PY} -m mpi4py -m syncnorm.train --epochs 1")
    r = bash("pbs.sh", env=job_env(SYNCNORM_DRY_RUN="1"))
    assert r.returncode != 0 and "not inside a PBS job" in r.stderr

    hostfile = tmp_path / "hostfile"
    hostfile.write_text("# a comment\nh1 slots=2\nh2:3   # MPICH style\nh3\n")
    r = bash("hostfile.sh", str(hostfile), env=job_env(SYNCNORM_DRY_RUN="1",
                                                       SYNCNORM_TCP="10.77.0.0/24"))
    assert r.returncode == 0, r.stderr
    assert "--host h1:2,h2:3,h3:1" in r.stdout and "-n 6 " in r.stdout
    assert "--mca btl_tcp_if_include 10.77.0.0/24" in r.stdout
    r = bash("hostfile.sh", env=job_env())
    assert r.returncode == 2 and "HOSTFILE" in r.stdout


# ------------------------------------------------------------------------- PBS (environment of PBS)
def test_pbs_script_runs_with_the_variables_pbs_sets(tmp_path):
    nodefile = tmp_path / "nodefile"
    nodefile.write_text("localhost\nlocalhost\n")  # PBS: one line per rank slot
    r = bash("pbs.sh", env=job_env(PBS_NODEFILE=str(nodefile), PBS_O_WORKDIR=str(ROOT),
                                   PBS_JOBID="1.test", SYNCNORM_JOB_TIMEOUT="120"),
             cwd=tmp_path, timeout=180)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "2 ranks on localhost:2" in r.stdout
    assert "SyncBatchNorm on 2 rank(s)" in r.stdout and "MATCH" in r.stdout


# ------------------------------------------------------------------------- hostfile on 2 netns hosts
@pytest.mark.skipif(NetnsCluster.unavailable() is not None, reason=str(NetnsCluster.unavailable()))
def test_hostfile_script_runs_across_two_hosts(tmp_path):
    hostfile = tmp_path / "hosts"
    hostfile.write_text("h1 slots=2\nh2 slots=1\n")
    with NetnsCluster(hosts=2) as cl:
        res = cl.run("h1", ["bash", str(ROOT / "launch/hostfile.sh"), str(hostfile),
                            "-m", "syncnorm.check"],
                     timeout=150, cwd=ROOT,
                     env=job_env(SYNCNORM_RSH_AGENT=cl.agent, SYNCNORM_TCP=cl.cidr,
                                 SYNCNORM_JOB_TIMEOUT="120", PYTHONUNBUFFERED="1"))
    assert res.returncode == 0, res.output
    assert "3 ranks on h1:2,h2:1" in res.output
    assert "SyncBatchNorm on 3 rank(s)" in res.output and "MATCH" in res.output


# ------------------------------------------------------------------------- Slurm, for real
@pytest.fixture(scope="module")
def slurm():
    why = SlurmCluster.unavailable()
    if why:
        pytest.skip(why)
    with SlurmCluster() as sl:
        yield sl


def test_slurm_srun_pmix_template_runs_open_mpi_ranks(slurm, tmp_path):
    r = slurm.sbatch(ROOT / "launch/slurm-srun.sbatch", env=job_env(), cwd=tmp_path, timeout=180)
    assert r.state == "COMPLETED" and r.returncode == 0, r.output
    assert "srun --mpi=pmix" in r.output
    assert "SyncBatchNorm on 4 rank(s)" in r.output and "MATCH" in r.output
    print(f"sbatch launch/slurm-srun.sbatch (pmix, Open MPI): {r.seconds:.1f} s")


def test_slurm_mpirun_template_runs_through_syncnorm_launch(slurm, tmp_path):
    r = slurm.sbatch(ROOT / "launch/slurm-mpirun.sbatch", ["-m", "syncnorm.check", "--steps", "2"],
                     env=job_env(), cwd=tmp_path, timeout=180)
    assert r.state == "COMPLETED" and r.returncode == 0, r.output
    assert "SyncBatchNorm on 4 rank(s)" in r.output and "MATCH" in r.output
    print(f"sbatch launch/slurm-mpirun.sbatch (mpirun): {r.seconds:.1f} s")


def test_slurm_srun_pmi2_template_runs_mpich_ranks(slurm, tmp_path):
    prefix, why = mpich_prefix()
    if prefix is None:
        pytest.skip(why)
    env = mpich_env(prefix, job_env(SYNCNORM_SRUN_MPI="pmi2"))
    r = slurm.sbatch(ROOT / "launch/slurm-srun.sbatch", env=env, cwd=tmp_path, timeout=180)
    assert r.state == "COMPLETED" and r.returncode == 0, r.output
    assert "srun --mpi=pmi2" in r.output
    assert "SyncBatchNorm on 4 rank(s)" in r.output and "MATCH" in r.output


def test_slurm_training_checkpoint_and_failure_exit_code(slurm, tmp_path):
    """A short training run writes its checkpoint; a job whose rank fails ends FAILED."""
    r = slurm.sbatch(ROOT / "launch/slurm-srun.sbatch",
                     ["-m", "syncnorm.train", "--max-train", "128", "--batch-size", "8", "--width",
                      "4", "--epochs", "1", "--progress", "none", "--checkpoint-dir",
                      str(tmp_path / "ck")], env=job_env(), cwd=tmp_path, timeout=240)
    assert r.state == "COMPLETED", r.output
    assert "RESULT test_accuracy=" in r.output and (tmp_path / "ck" / "checkpoint.npz").exists()
    bad = slurm.sbatch(ROOT / "launch/slurm-srun.sbatch",
                       ["-c", "from mpi4py import MPI; import sys; c = MPI.COMM_WORLD; "
                              "sys.exit(7) if c.rank == 2 else c.Barrier()"],
                       env=job_env(), cwd=tmp_path, timeout=120)
    assert bad.state == "FAILED" and bad.returncode != 0, bad.output


def test_srun_without_mpi_plugin_gives_mpimismatcherror(slurm, tmp_path):
    probe = ("from syncnorm.distributed import get_world_group\n"
             "print('SIZEIS', get_world_group().size)\n")
    r = slurm.srun(["--mpi=none", "-n", "2", "--overcommit", PY, "-c", probe], env=job_env(),
                   cwd=tmp_path, timeout=120)
    out = r.stdout + r.stderr
    assert r.returncode != 0, out
    assert "SIZEIS" not in out
    assert re.search(r"MPIMismatchError: this process was started by Slurm srun as rank [01] of 2 "
                     r"\(SLURM_STEP_NUM_TASKS=2\), but MPI \(Open MPI v5[^)]*\) sees a world of "
                     r"size 1", out), out
