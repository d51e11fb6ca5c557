"""Run a command on P MPI ranks as a subprocess that can never hang the test suite.

The job runs in its own session; on timeout every process of that session is killed (ranks live in
their own process groups under Open MPI's prterun, so killing the launcher's group is not enough).
Workers run under `python -m mpi4py`, so an exception on one rank aborts the whole job.
"""
from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from syncnorm import launch

ROOT = Path(__file__).resolve().parents[2]


@dataclass
class Job:
    returncode: int
    output: str
    timed_out: bool

    def check(self) -> "Job":
        assert self.returncode == 0 and not self.timed_out, (
            f"MPI job failed (rc={self.returncode}, timed out={self.timed_out}):\n{self.output[-6000:]}")
        return self


def run_mpi(nprocs: int, args: list[str], timeout: float = 180, env: dict[str, str] | None = None,
            python_args: tuple[str, ...] = ("-m", "mpi4py"), cwd: str | Path | None = None) -> Job:
    """Run `python -m mpi4py ARGS...` on `nprocs` ranks; ARGS like ["-m", "pytest", ...] or
    ["script.py", ...], in `cwd` (default: the repository root). Returns the job's exit code and
    merged output."""
    info = launch.detect_mpi()
    line = launch.build_command(nprocs, [sys.executable, *python_args, *args], info)
    full_env = launch.job_env(info)
    full_env.update({"PYTHONPATH": str(ROOT) + os.pathsep + full_env.get("PYTHONPATH", ""),
                     "PYTHONUNBUFFERED": "1"})
    full_env.pop("PYTEST_CURRENT_TEST", None)
    if env:
        full_env.update(env)
    proc = subprocess.Popen(line, cwd=cwd or ROOT, env=full_env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, start_new_session=True, text=True)
    try:
        out, _ = proc.communicate(timeout=timeout)
        return Job(proc.returncode, out, False)
    except subprocess.TimeoutExpired:
        launch.kill_session(proc)
        out, _ = proc.communicate()
        return Job(124, (out or "") + f"\n[mpi_harness] killed after {timeout:g} s", True)
    finally:
        if proc.poll() is not None:  # a killed launcher leaves one; its id may come back
            launch.remove_session_dir(proc.pid, line, full_env)


def run_pytest_mpi(nprocs: int, target: str, timeout: float = 300, extra: tuple[str, ...] = (),
                   env: dict[str, str] | None = None) -> Job:
    """Run the pytest-mpi tests of `target` (a path under tests/support/mpi_workers/) on `nprocs`
    ranks."""
    return run_mpi(nprocs, ["-m", "pytest", "--with-mpi", "-q", "-x", "--color=no", "-p", "no:cacheprovider",
                            "-o", "python_files=mpi_*.py", target, *extra], timeout, env)
