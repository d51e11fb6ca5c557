"""syncnorm-launch gives every rank a share of the host's cores for its math libraries' threads.

Without it, each of P ranks on one host starts a BLAS/OpenMP thread per core, and 4 ranks on 2
cores trained ~10x slower (docs/performance.md). Each rank writes the variables it sees to a file
(hydra can interleave the ranks' output within a line); Open MPI (`-x`) and MPICH (`-genv`) run
for real.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mpich_runtime import mpich_env, mpich_prefix
from syncnorm.launch.threads import THREAD_VARS, ranks_per_host, thread_limits, usable_cores

ROOT = Path(__file__).resolve().parents[2]
PY = sys.executable

# Subject: the thread variables the launcher gives each rank; the ranks need not pay
# for numba's import and kernel loading (conftest.py _child_kernels).
pytestmark = pytest.mark.child_kernels("numpy")

#: every rank writes the thread variables it sees to DIR/RANK.json (DIR: the first argument)
SHOW = ("import json, os, sys; from mpi4py import MPI; "
        "open(os.path.join(sys.argv[1], f'{MPI.COMM_WORLD.rank}.json'), 'w').write("
        f"json.dumps({{v: os.environ.get(v) for v in {THREAD_VARS!r}}}))")


def launch(*args: str, env: dict[str, str] | None = None, **values: str
           ) -> subprocess.CompletedProcess:
    """`python -m syncnorm.launch ARGS` with none of the thread variables set, then `values`."""
    full = {k: v for k, v in (os.environ if env is None else env).items() if k not in THREAD_VARS}
    full.update(values, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([PY, "-m", "syncnorm.launch", *args], capture_output=True, text=True,
                          env=full, cwd=ROOT, timeout=120)


def rank_envs(r: subprocess.CompletedProcess, where: Path) -> list[dict[str, str | None]]:
    """What each rank saw, in rank order."""
    assert r.returncode == 0, r.stdout + r.stderr
    return [json.loads(p.read_text()) for p in sorted(where.glob("*.json"))]


def share(nprocs: int) -> str:
    return str(max(1, usable_cores() // nprocs))


# ------------------------------------------------------------------------- the rule
def test_one_host_shares_its_cores_among_the_ranks():
    assert thread_limits(4, cores=2)[0] == dict.fromkeys(THREAD_VARS, "1")
    assert thread_limits(3, cores=8)[0] == dict.fromkeys(THREAD_VARS, "2")
    assert thread_limits(1, cores=8)[0]["OMP_NUM_THREADS"] == "8"
    limits, why = thread_limits(2, cores=8, user_set={"OMP_NUM_THREADS": "3"})
    assert "OMP_NUM_THREADS" not in limits and limits["OPENBLAS_NUM_THREADS"] == "4"
    assert why == "2 ranks on this host's 8 cores"


def test_several_hosts_fill_the_slots_in_order_and_pass_the_smallest_share():
    assert ranks_per_host(3, [("h1", 2), ("h2", 2), ("h3", 4)]) == [("h1", 2, 2), ("h2", 2, 1)]
    hosts = [("h1", 4), ("h2", 4)]
    assert thread_limits(2, hosts=hosts)[0]["OMP_NUM_THREADS"] == "2"  # both on h1: 4 // 2
    assert thread_limits(8, hosts=hosts)[0]["OMP_NUM_THREADS"] == "1"
    assert thread_limits(2, hosts=[("h1", 1), ("h2", 1)])[0]["OMP_NUM_THREADS"] == "1"
    # placement decided by the MPI or Slurm: one thread per rank
    assert thread_limits(2, hostfile="hf", cores=64)[0]["OMP_NUM_THREADS"] == "1"
    assert thread_limits(2, multi_node=True, cores=64)[0]["OMP_NUM_THREADS"] == "1"


# ------------------------------------------------------------------------- real jobs
def test_every_rank_gets_its_share_and_the_users_own_values_are_kept(tmp_path):
    r = launch("-n", "2", "--timeout", "60", "--env", "MKL_NUM_THREADS=5", "--", PY, "-c", SHOW,
               str(tmp_path), OMP_NUM_THREADS="3")
    envs = rank_envs(r, tmp_path)
    want = {**dict.fromkeys(THREAD_VARS, share(2)), "OMP_NUM_THREADS": "3", "MKL_NUM_THREADS": "5"}
    assert envs == [want, want], r.stderr
    said = [line for line in r.stderr.splitlines() if "NUM_THREADS" in line]
    assert said == [f"syncnorm-launch: set OPENBLAS_NUM_THREADS={share(2)} "
                    f"NUMBA_NUM_THREADS={share(2)} SYNCNORM_NUM_THREADS={share(2)} for every rank; "
                    f"kept your OMP_NUM_THREADS=3 MKL_NUM_THREADS=5 (2 ranks on this host's "
                    f"{usable_cores()} core{'s' if usable_cores() > 1 else ''}; "
                    "--no-thread-limits turns this off)"], r.stderr


def test_one_rank_gets_every_core(tmp_path):
    r = launch("-n", "1", "--timeout", "60", "--", PY, "-c", SHOW, str(tmp_path))
    assert rank_envs(r, tmp_path) == [dict.fromkeys(THREAD_VARS, str(usable_cores()))]


def test_no_thread_limits_sets_nothing_and_says_nothing(tmp_path):
    r = launch("-n", "2", "--timeout", "60", "--no-thread-limits", "--", PY, "-c", SHOW,
               str(tmp_path))
    assert rank_envs(r, tmp_path) == [dict.fromkeys(THREAD_VARS)] * 2
    assert "NUM_THREADS" not in r.stderr


def test_mpich_ranks_get_them_through_genv(tmp_path):
    prefix, why = mpich_prefix()
    if prefix is None:
        pytest.skip(why)
    env = mpich_env(prefix)
    r = launch("-n", "2", "--timeout", "60", "--dry-run", "--", "x", env=env)
    assert f"-genv OMP_NUM_THREADS {share(2)}" in r.stdout, r.stdout + r.stderr
    r = launch("-n", "2", "--timeout", "60", "--", PY, "-c", SHOW, str(tmp_path), env=env,
               NUMBA_NUM_THREADS="7")
    want = {**dict.fromkeys(THREAD_VARS, share(2)), "NUMBA_NUM_THREADS": "7"}
    assert rank_envs(r, tmp_path) == [want, want], r.stderr


def test_hosts_pass_the_share_on_the_command_line():
    r = launch("-n", "2", "--hosts", "h1:4,h2:4", "--dry-run", "--", "x")
    assert r.returncode == 0, r.stderr
    assert " ".join(f"-x {v}=2" for v in THREAD_VARS) in r.stdout, r.stdout
    assert "ranks per host: 2 on h1 (4 slots)" in r.stderr
