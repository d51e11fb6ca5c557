"""Faults on a fake two-host cluster (netns_cluster.py): nothing hangs, nothing is lost.

* A rank killed mid-job (SIGKILL on h2): the job ends with a non-zero exit and no rank is left on
  any host within 5 s; when the job is the training demo writing checkpoints, the last checkpoint
  on disk is intact (checksum verified) and loadable.
* A link cut mid-collective (`ip link set eth0 down` in h2): no RST, no FIN, so MPI alone would wait
  until TCP gives up (~15 min). SyncBatchNorm's collective timeout (SYNCNORM_COLLECTIVE_TIMEOUT)
  expires on every rank; the ranks on h1 print the fatal line naming the layer and the group; every
  rank on both hosts ends (through MPI_Abort, or the exit watchdog when MPI_Finalize hangs); and
  syncnorm-launch kills the Open MPI launcher, which waits for ever for h2's daemon.

Each test is bounded by its own deadline after which everything in the cluster is killed, and each
prints its timings (run with -s to see them).
"""
from __future__ import annotations

import os
import re
import signal
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from job_watch import Watched, finish, rank_pids, report, watch_until_gone
from mpich_runtime import mpich_env, mpich_prefix
from netns_cluster import NetnsCluster
from syncnorm import checkpoint as ck

ROOT = Path(__file__).resolve().parents[2]
PY = sys.executable
LOOP = str(ROOT / "tests/support/jobs/sbn_loop.py")

# Subject: faults (a killed rank, a cut link) and what is left after them; the ranks
# need not pay for numba's import and kernel loading (conftest.py _child_kernels).
pytestmark = [pytest.mark.skipif(NetnsCluster.unavailable() is not None,
                                 reason=str(NetnsCluster.unavailable())),
              pytest.mark.child_kernels("numpy")]


@pytest.fixture(scope="module")
def cluster():
    with NetnsCluster(hosts=2, slots=2) as cl:
        yield cl


def base_env(mpi: str = "openmpi", **extra: str) -> dict[str, str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1", OPENBLAS_NUM_THREADS="1",
               **extra)
    if mpi == "mpich":  # mpi4py loads the `mpich` wheel's library; syncnorm-launch finds hydra
        prefix, why = mpich_prefix()
        if prefix is None:
            pytest.skip(why)
        env = mpich_env(prefix, env)
    return env


# ------------------------------------------------------------------------------- a rank killed
def within_bounds(seen: dict) -> bool:
    """Every rank gone within 5 s of the kill (docs/launching/failures.md), and the launcher exited
    within 5 s, or within 5 s more when Open MPI's launcher hung after giving the job up and
    syncnorm-launch ended it (`cli-launch-mpi-hung`)."""
    return all(v is not None and v <= (10.0 if k == "launcher exit" else 5.0) for k, v in seen.items())


@pytest.mark.parametrize("mpi", ["openmpi", "mpich"])
def test_a_killed_rank_ends_the_job_on_every_host_within_5_s(cluster, mpi):
    env = base_env(mpi)
    job = Watched(cluster, cluster.launch_line(4, [PY, "-m", "mpi4py", LOOP, "--seconds", "120"],
                                               timeout=150, mpi=mpi), env)
    try:
        job.wait_for(r"^rank \d host h2 step", count=2)
        job.wait_for(r"^rank \d host h1 step", count=2)
        victim = rank_pids(cluster, "h2", LOOP)[0]
        t_fault = time.monotonic()
        os.kill(victim, signal.SIGKILL)
        seen = watch_until_gone(cluster, job, LOOP, bound=30, since=t_fault)
        report(f"{mpi}: SIGKILL of one rank on h2 (4 ranks, 2 hosts)", seen,
               f", launcher exit code {job.proc.returncode}")
        assert job.proc.returncode not in (None, 0), job.output[-3000:]
        assert within_bounds(seen), (seen, job.output[-3000:])
    finally:
        finish(cluster, job)


def test_a_killed_rank_leaves_the_last_training_checkpoint_intact(cluster, tmp_path):
    ckdir = tmp_path / "ck"
    train = [PY, "-m", "mpi4py", "-m", "syncnorm.train", "--max-train", "512", "--batch-size", "8",
             "--width", "4", "--epochs", "200", "--checkpoint-dir", str(ckdir),
             "--checkpoint-every", "1", "--progress", "lines"]
    job = Watched(cluster, cluster.launch_line(4, train, timeout=150), base_env())
    try:
        deadline = time.monotonic() + 90
        while not (ckdir / "checkpoint.npz").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert (ckdir / "checkpoint.npz").exists(), job.output[-3000:]
        time.sleep(1.0)  # several more checkpoints are written (one per step)
        victim = rank_pids(cluster, "h2", "syncnorm.train")[0]
        t_fault = time.monotonic()
        os.kill(victim, signal.SIGKILL)
        seen = watch_until_gone(cluster, job, "syncnorm.train", bound=30, since=t_fault)
        report("SIGKILL of one training rank on h2, checkpoint every step", seen,
               f", launcher exit code {job.proc.returncode}")
        assert job.proc.returncode not in (None, 0), job.output[-3000:]
        assert within_bounds(seen), (seen, job.output[-3000:])
        c = ck.load_checkpoint(ckdir / "checkpoint.npz")  # verifies format and SHA-256
        assert c.meta["global_step"] >= 1
        assert all(np.all(np.isfinite(a)) for a in c.model.values() if a.dtype.kind == "f")
        stray = [p.name for p in ckdir.iterdir() if p.name != "checkpoint.npz"]
        print(f"[fault] last checkpoint intact at step {c.meta['global_step']}; "
              f"leftover temporary files: {stray}")
    finally:
        finish(cluster, job)


# ------------------------------------------------------------------------------- a link cut
@pytest.mark.parametrize("mpi, runner", [("openmpi", ["-m", "mpi4py"]), ("openmpi", []),
                                         ("mpich", ["-m", "mpi4py"])],
                         ids=["openmpi, python -m mpi4py", "openmpi, plain python",
                              "mpich, python -m mpi4py"])
def test_a_cut_link_times_out_clearly_and_the_job_ends(cluster, mpi, runner):
    env = base_env(mpi, SYNCNORM_COLLECTIVE_TIMEOUT="3", SYNCNORM_ABORT_GRACE="3")
    line = cluster.launch_line(4, [PY, *runner, LOOP, "--seconds", "120"], timeout=150,
                               extra=("--abort-grace", "4"), mpi=mpi)
    job = Watched(cluster, line, env)
    try:
        job.wait_for(r"^rank \d host h2 step", count=2)
        job.wait_for(r"^rank \d host h1 step", count=2)
        t_fault = time.monotonic()
        cluster.cut("h2")
        seen = watch_until_gone(cluster, job, LOOP, bound=60, since=t_fault)
        first_error = job.first(r"\[syncnorm fatal\]")
        seen = {"first fatal line": None if first_error is None else first_error - t_fault, **seen}
        report(f"{mpi}: h2's link cut, collective timeout 3 s, abort grace 3 s (ranks), 4 s "
               f"(launcher), {' '.join(runner) or 'plain python'}", seen,
               f", launcher exit code {job.proc.returncode}")
        out = job.output
        assert job.proc.returncode not in (None, 0), out[-3000:]
        # the surviving ranks on h1 say which layer and group timed out (h2's output cannot reach
        # the launcher any more). Under `python -m mpi4py` the first one's MPI_Abort may kill the
        # other before its own deadline, so there one line is required; plain scripts print both.
        reporters = [rank for rank in (0, 1) if re.search(
            rf"\[syncnorm fatal\] world rank {rank} on h1: CollectiveTimeoutError: (forward|backward) "
            r"Allreduce of SyncBatchNorm #\d+ \(16 channels\) in ProcessGroup\(world, ranks=\[0, 1, "
            r"2, 3\]\) did not complete within 3 s", out)]
        assert len(reporters) >= (1 if runner else 2), out[-3000:]
        assert all(v is not None for v in seen.values()), (seen, out[-3000:])
    finally:
        cluster.heal("h2")
        finish(cluster, job)
