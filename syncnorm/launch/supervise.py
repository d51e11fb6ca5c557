"""Supervising the job: run the launcher in its own session, forward signals to it, enforce the
job timeout and the abort grace after a rank's fatal error, copy its stderr, and clean up after it."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from typing import IO

from .cleanup import kill_session, remove_session_dir

__all__ = ["run"]

_FATAL = "[syncnorm fatal]"  # = syncnorm.distributed.failsafe.FATAL_MARKER (not imported: no numpy)
_FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
#: what Open MPI prints when it has given a job up (a rank died, a peer vanished, MPI_Abort): its
#: launcher then normally ends the job within a second, but has been seen to hang after it (16
#: ranks on 4 netns hosts: every rank gone within 0.6 s, the launcher still running a minute later)
_MPI_GAVE_UP = (b"MPI_ERRORS_ARE_FATAL", b"unexpectedly disconnected", b"MPI_ABORT was invoked")


def run(line: list[str], env: dict[str, str], timeout: float | None = None, *,
        abort_grace: float = 15.0, kill_grace: float = 10.0, mpi_grace: float = 5.0,
        stderr: IO[bytes] | None = None) -> int:
    """Run the launcher in its own session and return the job's exit code.

    SIGINT/SIGTERM/SIGHUP are forwarded to the launcher; if the job is not gone `kill_grace` s
    after one, every process of its session is killed. Once the job has ended after such a signal,
    one line says so and 128 + the signal's number is returned (130 SIGINT, 143 SIGTERM, 129
    SIGHUP). `timeout`: the whole job is killed `kill_grace` s after it (the MPI's own timeout
    comes first; its abort can itself hang) and 124 is returned. A `[syncnorm fatal]` line on the
    job's stderr (a rank's collective timed out) gives the MPI `abort_grace` s to end the job
    before it is killed; a job that failed after such a line returns 1, whatever status the MPI
    reported (a rank ended by its watchdog's SIGALRM makes Open MPI report 142). Once the MPI
    itself has printed that it gave the job up (`_MPI_GAVE_UP`), a job still running `mpi_grace` s
    later is killed and 1 returned (the MPI's launcher hung in its own teardown). The job's stderr
    is copied to `stderr` (default: this process's) as it comes. Once the launcher is gone, a
    session directory it could not remove is removed (`remove_session_dir`)."""
    out = stderr if stderr is not None else sys.stderr.buffer
    proc = subprocess.Popen(line, env=env, start_new_session=True, stderr=subprocess.PIPE)
    state: dict[str, float | int | None] = {"fatal_at": None, "signal_at": None, "signal": None,
                                            "mpi_gave_up_at": None}

    def pump() -> None:
        assert proc.stderr is not None
        for chunk in iter(proc.stderr.readline, b""):
            if state["fatal_at"] is None and _FATAL.encode() in chunk:
                state["fatal_at"] = time.monotonic()
            if state["mpi_gave_up_at"] is None and any(m in chunk for m in _MPI_GAVE_UP):
                state["mpi_gave_up_at"] = time.monotonic()
            try:
                out.write(chunk)
                out.flush()
            except (OSError, ValueError):
                pass

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()

    def forward(signum: int, _frame: object) -> None:
        state["signal_at"] = state["signal_at"] or time.monotonic()
        state["signal"] = state["signal"] or signum
        try:
            os.killpg(proc.pid, signum)
        except ProcessLookupError:
            pass

    in_main = threading.current_thread() is threading.main_thread()
    old = {s: signal.signal(s, forward) for s in _FORWARDED} if in_main else {}
    start = time.monotonic()
    try:
        while True:
            try:
                rc = proc.wait(timeout=0.1)
                reader.join(2)
                return _outcome(rc if rc >= 0 else 128 - rc, state)
            except subprocess.TimeoutExpired:
                pass
            now = time.monotonic()
            why, code = None, None  # code None: decided by _outcome (the signal's)
            if timeout and now - start > timeout + kill_grace:
                why, code = f"the job did not end within its {timeout:g} s timeout", 124
            elif state["fatal_at"] is not None and now - state["fatal_at"] > abort_grace:
                why, code = (f"a rank reported a fatal error and the MPI did not end the job within "
                             f"{abort_grace:g} s"), 1
            elif state["mpi_gave_up_at"] is not None and now - state["mpi_gave_up_at"] > mpi_grace:
                why, code = (f"the MPI reported a failed rank and did not end the job within "
                             f"{mpi_grace:g} s"), 1
            elif state["signal_at"] is not None and now - state["signal_at"] > kill_grace:
                why = f"the job did not end within {kill_grace:g} s of the signal"
            if why:
                print(f"syncnorm-launch: {why}; killing it", file=sys.stderr, flush=True)
                kill_session(proc)
                reader.join(2)
                return code if code is not None else _outcome(0, state)
    finally:
        for s, h in old.items():
            signal.signal(s, h)
        if proc.poll() is not None:
            removed = remove_session_dir(proc.pid, line, env)
            if removed:
                print(f"syncnorm-launch: removed the launcher's leftover session directory "
                      f"{removed}", file=sys.stderr, flush=True)


def _outcome(rc: int, state: dict) -> int:
    """The launcher's exit code once the job has ended with status `rc`: 128 + N after signal N
    reached the launcher (with one line saying so), 1 for a failed job after a rank's fatal
    report, else `rc`."""
    if state["signal"] is not None:
        signum = int(state["signal"])
        print(f"syncnorm-launch: the job was interrupted by {signal.Signals(signum).name} "
              f"(exit {128 + signum})", file=sys.stderr, flush=True)
        return 128 + signum
    if state["fatal_at"] is not None and rc not in (0, 1):
        print(f"syncnorm-launch: the job ended with status {rc} after a rank reported a fatal "
              "error (its [syncnorm fatal] line is above); exit 1", file=sys.stderr, flush=True)
        return 1
    return rc
