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
    return _run_session(line, timeout, full_env, Path(cwd) if cwd else None, mpi_launcher=True)


def run_pytest_mpi(nprocs: int, target: str, timeout: float = 300, extra: tuple[str, ...] = (),
                   env: dict[str, str] | None = None) -> Job:
    """Run the pytest-mpi tests of `target` (a path under tests/support/mpi_workers/) on `nprocs`
    ranks."""
    return run_mpi(nprocs, ["-m", "pytest", "--with-mpi", "-q", "-x", "--color=no", "-p", "no:cacheprovider",
                            "-o", "python_files=mpi_*.py", target, *extra], timeout, env)


def _torch_env(env: dict[str, str] | None) -> dict[str, str]:
    """The environment of a torch.distributed job: no MPI launcher's variables (a torchrun job
    knows no MPI), this checkout first on PYTHONPATH, gloo on loopback, one thread per rank."""
    full = {k: v for k, v in os.environ.items()
            if not k.startswith(("OMPI_", "PMI", "PMIX_", "SLURM_", "PALS_", "FLUX_", "JSM_", "MV2_",
                                 "PRTE_"))}
    full.update({"PYTHONPATH": str(ROOT) + os.pathsep + full.get("PYTHONPATH", ""),
                 "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": "lo"})
    full.pop("PYTEST_CURRENT_TEST", None)
    full.update(env or {})
    return full


def _run_session(line: list[str], timeout: float, env: dict[str, str], cwd: Path | None,
                 mpi_launcher: bool = False) -> Job:
    """Run `line` in its own session, killed whole after `timeout` s. An MPI launcher that was
    killed leaves its session directory behind (its id may come back): removed once it is gone."""
    proc = subprocess.Popen(line, cwd=cwd or ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, start_new_session=True, text=True)
    try:
        out, _ = proc.communicate(timeout=timeout)
        return Job(proc.returncode, out, False)
    except subprocess.TimeoutExpired:
        launch.kill_session(proc)
        out, _ = proc.communicate()
        return Job(124, (out or "") + f"\n[mpi_harness] killed after {timeout:g} s", True)
    finally:
        if mpi_launcher and proc.poll() is not None:
            launch.remove_session_dir(proc.pid, line, env)


def run_torchrun(nprocs: int, args: list[str], timeout: float = 180,
                 env: dict[str, str] | None = None, cwd: str | Path | None = None) -> Job:
    """Run `torchrun --standalone --nproc_per_node NPROCS ARGS...` (ARGS: a script and its
    arguments) in its own session, killed whole on timeout. Returns exit code and merged output."""
    line = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes", "1",
            "--nproc_per_node", str(nprocs), *args]
    return _run_session(line, timeout, _torch_env(env), Path(cwd) if cwd else None)


def run_ranks(nprocs: int, args: list[str], timeout: float = 180,
              env: dict[str, str] | None = None) -> Job:
    """Start `python ARGS...` NPROCS times with torchrun's variables (RANK, LOCAL_RANK, WORLD_SIZE,
    MASTER_ADDR, MASTER_PORT) but no agent that would kill the others when one dies: for tests of
    what the surviving ranks do. One session (a small shell that waits for all of them); output
    merged; the exit code is the highest of the ranks'."""
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    script = " ".join(
        f"RANK={r} LOCAL_RANK={r} WORLD_SIZE={nprocs} \"$@\" & p{r}=$!;" for r in range(nprocs))
    waits = " ".join(f"wait $p{r}; c=$?; echo \"[run_ranks] rank {r} exit $c\"; "
                     f"[ $c -gt $rc ] && rc=$c;" for r in range(nprocs))
    line = ["/bin/sh", "-c", f"rc=0; {script} {waits} exit $rc", "sh", sys.executable, *args]
    full = _torch_env(env)
    full.update({"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)})
    return _run_session(line, timeout, full, None)


def run_torch_script(args: list[str], timeout: float = 180, env: dict[str, str] | None = None) -> Job:
    """Run `python ARGS...` alone in its own session (a program that starts its own ranks, as
    Lightning's DDP launcher does), killed whole on timeout."""
    return _run_session([sys.executable, *args], timeout, _torch_env(env), None)
