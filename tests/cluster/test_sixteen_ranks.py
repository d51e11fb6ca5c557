"""16 ranks on a fake cluster of 4 hosts x 4 ranks (netns_cluster.py; oversubscribed on a small
machine, so the tensors are small):

* SyncBatchNorm with `split_by_node()` (one group per host), with 4 groups of 4 spread across the
  hosts (one member on each) and with the world group: each equal to single-process BatchNorm on its
  group's concatenated batch (tests/support/jobs/sbn_groups.py);
* the training equivalence: 16 ranks across the hosts follow the trajectory of one process training
  on the union of their batches (`syncnorm.train --check-equivalence`, float64);
* a rank killed on one host ends the whole job on every host within 5 s (the bound
  docs/launching/failures.md states).

Each test prints its run time (run with -s). Skipped, with the reason, only where network
namespaces cannot be made (not root, no iproute2).
"""
from __future__ import annotations

import ast
import os
import re
import signal
import sys
import time
from pathlib import Path

import pytest

from job_watch import Watched, finish, rank_pids, report, watch_until_gone
from netns_cluster import NetnsCluster

ROOT = Path(__file__).resolve().parents[2]
PY = sys.executable
HOSTS, PER_HOST = 4, 4
RANKS = HOSTS * PER_HOST
GROUPS = str(ROOT / "tests/support/jobs/sbn_groups.py")
LOOP = str(ROOT / "tests/support/jobs/sbn_loop.py")
KILL_BOUND = 5.0  # seconds: docs/launching/failures.md
#: syncnorm-launch's grace for an Open MPI launcher that hangs after giving the job up
#: (`syncnorm.launch.supervise`): the launcher's own bound is then KILL_BOUND + MPI_GRACE
MPI_GRACE = 5.0
#: 4 slots on hosts that have the machine's cores (maybe 2): Open MPI would refuse to bind 4 ranks to
#: 2 cores per host ("more cpus than are available")
NO_BINDING = ("--mpi-arg=--bind-to", "--mpi-arg=none")

# Subject: 16 ranks on 4 hosts (groups by host and across hosts, a kill at that scale); the
# compiled kernels' parity across ranks is run on the default engine by multirank/
# test_syncbn_mpi.py, test_train_mpi.py and test_determinism.py, and 16 ranks each paying
# numba's import and kernel loading would cost ~10 s of CPU per job (conftest.py _child_kernels).
pytestmark = [pytest.mark.skipif(NetnsCluster.unavailable() is not None,
                                 reason=str(NetnsCluster.unavailable())),
              pytest.mark.child_kernels("numpy")]


@pytest.fixture(scope="module")
def cluster():
    with NetnsCluster(hosts=HOSTS, slots=PER_HOST) as cl:
        yield cl


def job_env() -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1", OPENBLAS_NUM_THREADS="1",
                OMP_NUM_THREADS="1")


def host_of(rank: int) -> str:
    """Where the hostfile (4 slots per host, filled in order) puts a rank."""
    return f"h{rank // PER_HOST + 1}"


def test_syncbatchnorm_by_node_spread_and_world_groups_on_16_ranks(cluster):
    res = cluster.run("h1", cluster.launch_line(RANKS, [PY, "-m", "mpi4py", GROUPS], timeout=400,
                                                    extra=NO_BINDING),
                      timeout=450, env=job_env(), cwd=ROOT)
    assert res.returncode == 0, res.output[-5000:]
    nodes = ast.literal_eval(re.search(r"^NODES (.*)$", res.output, re.M)[1])
    assert nodes == [list(range(h * PER_HOST, (h + 1) * PER_HOST)) for h in range(HOSTS)], nodes
    ok = re.findall(r"^GROUPS (\w+) rank (\d+) host (\S+) members (\[.*\]) OK$", res.output, re.M)
    by_kind = {k: {int(r): (h, ast.literal_eval(m)) for kk, r, h, m in ok if kk == k}
               for k in ("node", "spread", "world")}
    for kind, ranks in by_kind.items():
        assert sorted(ranks) == list(range(RANKS)), (kind, sorted(ranks), res.output[-3000:])
        for r, (host, members) in ranks.items():
            assert host == host_of(r), (kind, r, host)
            if kind == "node":
                assert {host_of(m) for m in members} == {host_of(r)} and len(members) == PER_HOST
            elif kind == "spread":
                assert sorted(host_of(m) for m in members) == [f"h{i}" for i in range(1, 5)]
                assert r in members
            else:
                assert members == list(range(RANKS))
    print(f"\n[16 ranks] SyncBatchNorm by node / spread / world groups, 4 hosts: {res.seconds:.1f} s")


def test_training_on_16_ranks_across_hosts_follows_the_single_process_run(cluster):
    args = ["-m", "syncnorm.train", "--max-train", "256", "--batch-size", "4", "--width", "4",
            "--epochs", "0", "--check-equivalence", "3", "--dtype", "float64", "--progress", "none"]
    res = cluster.run("h1", cluster.launch_line(RANKS, [PY, "-m", "mpi4py", *args], timeout=400,
                                                    extra=NO_BINDING),
                      timeout=450, env=job_env(), cwd=ROOT)
    assert res.returncode == 0, res.output[-5000:]
    m = re.search(r"EQUIVALENCE ranks=(\d+) bn=(\w+) group=(\d+) loss_diff=(\S+) param_diff=(\S+) "
                  r"buffer_diff=(\S+) match=(\d)", res.output)
    assert m, res.output[-3000:]
    assert int(m[1]) == RANKS and m[7] == "1", m[0]
    assert max(float(m[4]), float(m[5]), float(m[6])) < 1e-12, m[0]
    print(f"\n[16 ranks] training equivalence (3 steps, float64), 4 hosts: {res.seconds:.1f} s")


def test_a_rank_killed_on_one_host_ends_the_16_rank_job_within_the_bound(cluster):
    job = Watched(cluster, cluster.launch_line(RANKS, [PY, "-m", "mpi4py", LOOP, "--seconds", "300",
                                                      "--channels", "4", "--every", "10"],
                                               timeout=400, extra=NO_BINDING), job_env())
    try:
        for h in cluster.hosts:
            job.wait_for(rf"^rank \d+ host {h} step", count=PER_HOST, timeout=240)
        victim = rank_pids(cluster, "h3", LOOP)[0]
        t_fault = time.monotonic()
        os.kill(victim, signal.SIGKILL)
        seen = watch_until_gone(cluster, job, LOOP, bound=60, since=t_fault)
        report("SIGKILL of one rank on h3 (16 ranks, 4 hosts)", seen,
               f", launcher exit code {job.proc.returncode}, job ran {t_fault - job.t0:.1f} s")
        assert job.proc.returncode not in (None, 0), job.output[-3000:]
        bounds = {k: KILL_BOUND + (MPI_GRACE if k == "launcher exit" else 0.0) for k in seen}
        assert all(v is not None and v <= bounds[k] for k, v in seen.items()), (seen,
                                                                                job.output[-3000:])
    finally:
        finish(cluster, job)
