"""`syncnorm-launch`: start a command on N MPI ranks with the MPI that mpi4py uses.

    syncnorm-launch -n 4 [--hosts h1:2,h2:2 | --hostfile F] [--timeout S] [--dry-run] -- CMD ...

It finds the MPI library that mpi4py loads (Open MPI, MPICH, Intel MPI; MPI4PY_LIBMPI is honoured)
and the launcher that belongs to it (beside that library first, then beside this Python, then on
PATH; each candidate is asked for its --version so a foreign mpirun is never picked), builds the
right command line (root flags for Open MPI, oversubscription when the ranks exceed the cores of a
single host, a job timeout, TCP-only networking on request, each rank's share of the cores for its
math libraries' threads), forwards SIGINT/SIGTERM/SIGHUP to the job, and returns the job's exit
code. The command runs as an argument list: user strings never pass through a shell.

A rank whose collective times out prints a `[syncnorm fatal]` line (see
`syncnorm.distributed.failsafe`); the launcher then gives the MPI `--abort-grace` seconds to end
the job and kills it when it does not (Open MPI waits for ever for a daemon behind a dead link).

Exit codes: the job's own; 128+N after signal N reached the launcher (130 SIGINT, 143 SIGTERM);
124 when --timeout expired; 1 when the job failed or was killed after a rank's fatal error; 2 for
a job that cannot be launched as asked (docs/errors.md, "Exit codes").

Modules, one job each: `detect` (which MPI, which launcher), `command` (the command line and the
launcher's environment), `threads` (threads per rank), `supervise` (running the job: signals,
timeouts, fatal errors), `cleanup` (killing a job's session, removing Open MPI's leftover session
directory), `cli` (the command).
"""
from .cleanup import kill_session, remove_session_dir
from .cli import main
from .command import build_command, job_env, parse_hosts
from .detect import LaunchError, MPIInfo, detect_mpi
from .supervise import run

__all__ = ["MPIInfo", "detect_mpi", "build_command", "parse_hosts", "job_env", "run",
           "kill_session", "remove_session_dir", "main", "LaunchError"]
