"""Clean-up: kill every process of a job's session, and remove the session directory that a
killed Open MPI launcher leaves behind."""
from __future__ import annotations

import os
import shutil
import signal
import stat
import subprocess
import time

__all__ = ["session_dir", "remove_session_dir", "kill_session"]


def session_dir(pid: int, line: list[str], env: dict[str, str]) -> str:
    """Where Open MPI 5's launcher with process id `pid` keeps its session files: BASE/ompi.PID,
    BASE = prte_tmpdir_base (`--mca`/`--prtemca` on `line`, or $PRTE_MCA_prte_tmpdir_base), else
    $TMPDIR, $TEMP, $TMP, /tmp (the order Open MPI 5.0 follows, checked one variable at a time)."""
    base = env.get("PRTE_MCA_prte_tmpdir_base")
    for i in range(len(line) - 2):
        if line[i] in ("--mca", "--prtemca") and line[i + 1] == "prte_tmpdir_base":
            base = line[i + 2]
    base = base or env.get("TMPDIR") or env.get("TEMP") or env.get("TMP") or "/tmp"
    return os.path.join(base, f"ompi.{pid}")


def remove_session_dir(pid: int, line: list[str], env: dict[str, str]) -> str | None:
    """Remove the session directory a dead Open MPI launcher left behind; return its path, or None
    when there was nothing to remove.

    A launcher that is killed (SIGKILL: a job timeout, a dead peer) cannot remove BASE/ompi.PID.
    Process ids wrap (/proc/sys/kernel/pid_max is 32768 on many machines), and a later launcher that
    gets the same id refuses to start with "The PMIx server's listener thread failed to start"
    (Open MPI 5.0.11: every launch failed when the stale directory held the PMIx tool files). Only
    a directory owned by this user, and only while no process has that id, is removed."""
    path = session_dir(pid, line, env)
    try:
        st = os.lstat(path)
    except OSError:
        return None
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid():  # lstat: never a symlink
        return None
    try:
        os.kill(pid, 0)
        return None  # the id belongs to a live process again: the directory may be its
    except ProcessLookupError:
        pass
    except PermissionError:
        return None
    shutil.rmtree(path, ignore_errors=True)
    return None if os.path.exists(path) else path


def kill_session(proc: subprocess.Popen) -> None:
    """SIGTERM, then (2 s later, for what is left) SIGKILL, every process of `proc`'s session
    (ranks live in their own process groups under Open MPI's prterun, so killing the launcher's
    group is not enough). Returns once the launcher is reaped."""
    sid = proc.pid
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in _session_pids(sid):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + (2 if sig == signal.SIGTERM else 10)
        while time.monotonic() < deadline:
            proc.poll()
            if not _session_pids(sid):
                break
            time.sleep(0.05)
        if not _session_pids(sid):
            break
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        pass


def _session_pids(sid: int) -> list[int]:
    pids = []
    for d in os.listdir("/proc") if os.path.isdir("/proc") else []:
        if not d.isdigit():
            continue
        try:
            if os.getsid(int(d)) == sid and not _is_zombie(int(d)):
                pids.append(int(d))
        except (ProcessLookupError, PermissionError):
            continue
    return pids


def _is_zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True
