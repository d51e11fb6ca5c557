"""SyncBatchNorm across hosts that talk TCP: a fake cluster of network namespaces (netns_cluster.py).

Ranks run on h1..h3 (each its own network namespace and host name, joined by veth links to a
bridge; Open MPI restricted to TCP on the cluster's 10.77.0.0/24), launched by `syncnorm-launch`
with a hostfile or a host list and an rsh agent instead of ssh. Results must equal the single-host
run bit for bit, and `python -m syncnorm.check` must print MATCH. Skipped, with the reason, only
where namespaces cannot be made (not root, no iproute2).
"""
from __future__ import annotations

import os
import re
import sys
from pathlib import Path

import numpy as np
import pytest

from mpi_harness import run_mpi
from netns_cluster import NetnsCluster

ROOT = Path(__file__).resolve().parents[2]
PY = sys.executable

# Subject: ranks on several hosts talking TCP; each run is compared with a single-host run on
# the same engine. The compiled kernels' parity across ranks is run on the default engine by
# multirank/test_syncbn_mpi.py, test_train_mpi.py and test_determinism.py; the ranks here
# need not pay for numba's import and kernel loading (conftest.py _child_kernels).
pytestmark = [pytest.mark.skipif(NetnsCluster.unavailable() is not None,
                                 reason=str(NetnsCluster.unavailable())),
              pytest.mark.child_kernels("numpy")]


@pytest.fixture(scope="module")
def cluster():
    with NetnsCluster(hosts=3, slots=2) as cl:
        yield cl


def job_env() -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1")


def load_ranks(d: Path, n: int) -> list[dict[str, np.ndarray]]:
    out = []
    for r in range(n):
        with np.load(d / f"rank{r}.npz", allow_pickle=False) as z:
            out.append({k: z[k] for k in z.files})
    return out


@pytest.mark.parametrize("nprocs, hosts", [(4, "h1:2,h2:1,h3:1"), (3, None)],
                         ids=["4 ranks on 3 hosts", "3 ranks by hostfile"])
def test_syncbatchnorm_across_hosts_equals_the_single_host_run(cluster, tmp_path, nprocs, hosts):
    multi, single = tmp_path / "multi", tmp_path / "single"
    job = [PY, "-m", "mpi4py", str(ROOT / "tests/support/jobs/sbn_equiv.py")]
    res = cluster.run("h1", cluster.launch_line(nprocs, [*job, str(multi)], hosts, timeout=90),
                      timeout=150, env=job_env(), cwd=ROOT)
    assert res.returncode == 0, res.output
    run_mpi(nprocs, [str(ROOT / "tests/support/jobs/sbn_equiv.py"), str(single)], timeout=150).check()
    got, want = load_ranks(multi, nprocs), load_ranks(single, nprocs)
    hosts_used = [str(g["host"]) for g in got]
    expected = (["h1", "h1", "h2", "h3"] if hosts else ["h1", "h1", "h2"])
    assert hosts_used == expected, hosts_used
    for r in range(nprocs):
        assert set(got[r]) == set(want[r])
        for k in got[r]:
            if k != "host":
                np.testing.assert_array_equal(got[r][k], want[r][k], err_msg=f"rank {r} {k}")


def test_check_prints_match_across_three_hosts(cluster):
    res = cluster.run("h1", cluster.launch_line(
        4, [PY, "-m", "mpi4py", "-m", "syncnorm.check", "--steps", "4"], "h1:2,h2:1,h3:1",
        timeout=90), timeout=150, env=job_env(), cwd=ROOT)
    assert res.returncode == 0, res.output
    assert "SyncBatchNorm on 4 rank(s)" in res.output and "MATCH" in res.output
    print(f"syncnorm.check on 4 ranks / 3 hosts: {res.seconds:.1f} s")


def test_ranks_really_talk_tcp_between_namespaces(cluster):
    """While a job runs, h2's rank holds TCP connections to 10.77.0.1 (h1): the links are used."""
    probe = ("import subprocess, socket, time\n"
             "from mpi4py import MPI\n"
             "c = MPI.COMM_WORLD\n"
             "c.Allreduce(MPI.IN_PLACE, __import__('numpy').ones(4))\n"
             "c.Barrier()\n"
             "if c.rank == 1:\n"
             "    print('SS', socket.gethostname(), subprocess.run(['ss', '-tn'], capture_output=True,"
             " text=True).stdout.replace(chr(10), ' | '), flush=True)\n"
             "c.Barrier()\n")
    res = cluster.run("h1", cluster.launch_line(2, [PY, "-c", probe], "h1:1,h2:1", timeout=60),
                      timeout=90, env=job_env(), cwd=ROOT)
    assert res.returncode == 0, res.output
    line = next(x for x in res.output.splitlines() if x.startswith("SS "))
    assert line.startswith("SS h2 ")
    assert re.search(r"ESTAB\s+\d+\s+\d+\s+10\.77\.0\.2:\d+\s+10\.77\.0\.1:\d+", line), line


def test_training_steps_across_hosts_equal_the_single_host_run(cluster, tmp_path):
    """An epoch of the training demo (DDP + SyncBatchNorm, float64, 8 steps) on 4 ranks over h1..h3
    and on 4 ranks on one host: the final checkpoints hold the same model to float64 rounding.
    Not bitwise: Open MPI's hierarchical Allreduce (coll/han) sums DDP's gradient buckets in an
    order that depends on how ranks sit on nodes (measured: 1.2e-16 apart; with `--mca coll ^han`
    on both runs they are bitwise equal). SyncBatchNorm's own small Allreduces are bitwise equal,
    see test_syncbatchnorm_across_hosts_equals_the_single_host_run."""
    args = ["-m", "syncnorm.train", "--max-train", "256", "--batch-size", "8", "--width", "4",
            "--epochs", "1", "--dtype", "float64", "--progress", "none"]
    env = job_env()
    env["OPENBLAS_NUM_THREADS"] = "1"
    res = cluster.run("h1", cluster.launch_line(
        4, [PY, "-m", "mpi4py", *args, "--checkpoint-dir", str(tmp_path / "multi")],
        "h1:2,h2:1,h3:1", timeout=150), timeout=200, env=env, cwd=ROOT)
    assert res.returncode == 0, res.output
    run_mpi(4, [*args, "--checkpoint-dir", str(tmp_path / "single")], timeout=200,
            env={"OPENBLAS_NUM_THREADS": "1"}).check()
    from syncnorm import checkpoint as ck
    a = ck.load_checkpoint(tmp_path / "multi" / "checkpoint.npz")
    b = ck.load_checkpoint(tmp_path / "single" / "checkpoint.npz")
    assert a.meta["global_step"] == b.meta["global_step"] > 0
    assert set(a.model) == set(b.model)
    for k in a.model:
        np.testing.assert_allclose(a.model[k], b.model[k], rtol=0, atol=1e-13, err_msg=k)
    result = re.search(r"RESULT test_accuracy=(\S+) test_loss=(\S+)", res.output)
    assert result, res.output[-3000:]
    print(f"training, 4 ranks on 3 hosts: step {a.meta['global_step']}, "
          f"test_loss {result[2]}, {res.seconds:.1f} s")


def test_torch_init_process_group_and_gloo_across_hosts(cluster):
    """syncnorm.torch.init_process_group across h1..h3 (rank 0 sends the address it reaches the
    other hosts from, over MPI): torch subgroups, an empty rank, extra layers on rank 0 and ranks
    out of step, over gloo and MPI between namespaces (tests/support/mpi_workers/torch_groups.py)."""
    pytest.importorskip("torch")
    env = job_env()
    env.update({"OMP_NUM_THREADS": "1"})
    res = cluster.run("h1", cluster.launch_line(
        4, [PY, "-m", "mpi4py", str(ROOT / "tests/support/mpi_workers/torch_groups.py")],
        "h1:2,h2:1,h3:1", timeout=150), timeout=200, env=env, cwd=ROOT)
    assert res.returncode == 0, res.output[-4000:]
    done = set(re.findall(r"CASE-OK (\S+) rank (\d)", res.output))
    cases = ("subgroups", "empty-rank", "extra-layers", "numpy", "out-of-step")
    assert done == {(c, str(r)) for c in cases for r in range(4)}, res.output[-3000:]
    assert "INIT-ADDRESS 10.77.0.1" in res.output, res.output[-3000:]
