"""What a rank does when a collective times out: say so at once, and make sure the process ends.

A collective that timed out leaves the communicator unusable (the nonblocking request can never be
cancelled), and the usual ways out can hang on their own when a peer is unreachable: MPI_Abort waits
for the launcher, and MPI_Finalize (run at interpreter exit by mpi4py) waits for every rank. So the
timeout path does two things before `CollectiveTimeoutError` is raised:

1. it prints one line to stderr starting with `FATAL_MARKER` (flushed), which `syncnorm-launch`
   watches for: the launcher then gives the MPI `--abort-grace` seconds to end the job and kills it
   when it does not (Open MPI's prterun waits for ever for a daemon behind a dead link);
2. it arms a process watchdog (`faulthandler.dump_traceback_later(..., exit=True)`, a C thread that
   needs no GIL): if the process is still alive SYNCNORM_ABORT_GRACE seconds later (default 10), it
   prints where every thread is stuck and ends the process with exit code 1.

The exception itself is raised as usual, so callers can still log or write a local checkpoint within
the grace period. SYNCNORM_ABORT_GRACE=off disables the watchdog (the caller ends the process
itself). The watchdog replaces any `faulthandler.dump_traceback_later` timer the program had armed.
"""
from __future__ import annotations

import faulthandler
import os
import sys

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
    tail = (f"; this process ends in {grace:g} s if it is still alive (SYNCNORM_ABORT_GRACE)"
            if grace is not None else "")
    prefix = f"{FATAL_MARKER} {where}: " if where else f"{FATAL_MARKER} "
    try:
        sys.stderr.write(f"{prefix}{message}{tail}\n")
        sys.stderr.flush()
    except (OSError, ValueError):
        pass
    if grace is not None:
        try:
            faulthandler.dump_traceback_later(grace, exit=True, file=sys.__stderr__)
        except (OSError, ValueError, RuntimeError):  # no usable stderr: still end the process
            faulthandler.dump_traceback_later(grace, exit=True, file=open(os.devnull, "w"))
