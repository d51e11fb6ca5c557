"""Start `syncnorm.bench.mpi_worker` on P ranks (with the MPI mpi4py uses) and read its results.

The job runs in its own session under a timeout; on expiry every process of the session is killed
(`syncnorm.launch.kill_session`), so the bench never hangs on a stuck MPI job.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from .timing import THREAD_VARS

__all__ = ["run_worker"]


def run_worker(nprocs: int, worker_args: list[str], timeout: float) -> tuple[dict | None, str]:
    """(results or None, a note). Never raises for a failed, missing or stuck MPI."""
    from syncnorm import launch

    try:
        info = launch.detect_mpi()
    except Exception as e:  # no MPI, no launcher: the comm part is skipped with the reason
        return None, f"no MPI launcher: {e}"
    with tempfile.TemporaryDirectory(prefix="syncnorm-bench-") as tmp:
        out = Path(tmp) / "result.json"
        cmd = [sys.executable, "-m", "mpi4py", "-m", "syncnorm.bench.mpi_worker", "--out",
               str(out), *worker_args]
        line = launch.build_command(nprocs, cmd, info)
        env = launch.job_env(info)
        env.update({v: "1" for v in THREAD_VARS})
        root = str(Path(__file__).resolve().parents[2])  # the directory holding `syncnorm`
        env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        env.pop("SYNCNORM_COLLECTIVE_TIMEOUT", None)
        proc = subprocess.Popen(line, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                start_new_session=True, text=True)
        try:
            log, _ = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            launch.kill_session(proc)
            proc.communicate()
            return None, f"P={nprocs}: the MPI job did not finish within {timeout:g} s (killed)"
        if proc.returncode != 0 or not out.exists():
            tail = "\n".join((log or "").strip().splitlines()[-8:])
            return None, f"P={nprocs}: the MPI job failed (exit code {proc.returncode}): {tail}"
        data: Any = json.loads(out.read_text())
    return data, f"P={nprocs}: {' '.join(line[:3])} ... ({info.vendor})"
