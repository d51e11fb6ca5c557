"""What a rank does when a collective times out: say so at once, and make sure the process ends.

A collective that timed out leaves the communicator unusable (the nonblocking request can never be
cancelled), and the usual ways out can hang on their own when a peer is unreachable: MPI_Abort waits
for the launcher, and MPI_Finalize (run at interpreter exit by mpi4py) waits for every rank. So the
timeout path does two things before `CollectiveTimeoutError` is raised:

1. it prints one line to stderr starting with `FATAL_MARKER` (flushed), which `syncnorm-launch`
   watches for: the launcher then gives the MPI `--abort-grace` seconds to end the job and kills it
   when it does not (Open MPI's prterun waits for ever for a daemon behind a dead link);
2. it arms two watchdogs: `faulthandler.dump_traceback_later(grace, exit=True)` (a C thread that
   needs no GIL: if the process is still running Python code `grace` seconds later, it prints where
   every thread is and ends the process with exit code 1) and `alarm(2)` one second after that,
   with SIGALRM at its default action, which ends the process even while it is stuck inside
   MPI_Finalize at interpreter exit (Python cancels the faulthandler timer when it finalizes).
   grace = SYNCNORM_ABORT_GRACE seconds, default 10. A rank ended by the alarm makes Open MPI's
   mpirun exit 142 (128 + SIGALRM); `syncnorm-launch` reports any failed job after the fatal line
   as 1 (docs/errors.md, "Exit codes").

The exception itself is raised as usual, so callers can still log or write a local checkpoint within
the grace period. SYNCNORM_ABORT_GRACE=off disables the watchdogs (the caller ends the process
itself). They replace any `faulthandler.dump_traceback_later` timer or `alarm` the program had set,
and SIGALRM's handler when called from the main thread.
"""
from __future__ import annotations

import faulthandler
import math
import os
import signal
import sys
import threading

__all__ = ["FATAL_MARKER", "abort_grace", "report_fatal"]

FATAL_MARKER = "[syncnorm fatal]"
DEFAULT_GRACE = 10.0


def abort_grace() -> float | None:
    """Seconds from SYNCNORM_ABORT_GRACE (default 10), or None when set to off/none/no."""
    raw = os.environ.get("SYNCNORM_ABORT_GRACE", "").strip().lower()
    if not raw:
        return DEFAULT_GRACE
    if raw in ("off", "none", "no", "false"):
        return None
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"SYNCNORM_ABORT_GRACE must be a number of seconds or 'off', got {raw!r}"
                         ) from None
    if value <= 0:
        raise ValueError(f"SYNCNORM_ABORT_GRACE must be > 0 seconds (or 'off'), got {raw!r}")
    return value


def report_fatal(message: str, where: str = "") -> None:
    """Print the marker line on stderr now and arm the exit watchdog (see the module docstring)."""
    grace = abort_grace()
    tail = (f" [this process ends in {grace:g} s if it is still alive: SYNCNORM_ABORT_GRACE]"
            if grace is not None else "")
    prefix = f"{FATAL_MARKER} {where}: " if where else f"{FATAL_MARKER} "
    try:
        sys.stderr.write(f"{prefix}{message}{tail}\n")
        sys.stderr.flush()
    except (OSError, ValueError):
        pass
    if grace is not None:
        _arm(grace)


def _arm(grace: float) -> None:
    try:
        faulthandler.dump_traceback_later(grace, exit=True, file=sys.__stderr__)
    except (OSError, ValueError, RuntimeError, AttributeError):  # no usable stderr
        pass
    if hasattr(signal, "alarm"):
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGALRM, signal.SIG_DFL)
        signal.alarm(int(math.ceil(grace)) + 1)
