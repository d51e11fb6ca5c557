"""The `syncnorm-launch` command line: parse the options, detect the MPI, build the command, and
print it (--dry-run) or run it."""
from __future__ import annotations

import argparse
import os
import shlex
import sys

from .command import build_command, job_env, parse_hosts, slurm_nodes
from .detect import LaunchError, detect_mpi
from .supervise import run
from .threads import THREAD_VARS, describe, thread_limits

__all__ = ["main"]

DESCRIPTION = "`syncnorm-launch`: start a command on N MPI ranks with the MPI that mpi4py uses."


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="syncnorm-launch", description=DESCRIPTION,
                                usage="syncnorm-launch -n N [options] -- CMD ...")
    p.add_argument("-n", "--nprocs", type=int, default=1, help="number of ranks")
    p.add_argument("--hosts", help="comma-separated HOST[:SLOTS] list")
    p.add_argument("--hostfile", help="a hostfile in the MPI's own format")
    p.add_argument("--timeout", type=float, help="seconds after which the job is aborted")
    p.add_argument("--tcp", metavar="NET", help="TCP only, on this network (CIDR or interface "
                   "for Open MPI, interface for MPICH/Intel MPI)")
    p.add_argument("--rsh-agent", metavar="CMD", help="ssh replacement used to reach other hosts")
    p.add_argument("--env", action="append", default=[], metavar="NAME[=VALUE]",
                   help="pass this variable to every rank (SYNCNORM_* are always passed)")
    p.add_argument("--launcher", help="the mpirun/mpiexec to use (default: the one of mpi4py's MPI; "
                   "also $SYNCNORM_MPIEXEC)")
    p.add_argument("--abort-grace", type=float, default=15.0, metavar="S",
                   help="after a rank reports a fatal syncnorm error, kill the job if the MPI has "
                   "not ended it within S seconds (default 15)")
    p.add_argument("--no-thread-limits", action="store_true",
                   help="do not set " + "/".join(v.removesuffix("_NUM_THREADS") for v in THREAD_VARS)
                   + "_NUM_THREADS for the ranks (default: cores per host // ranks per host, at "
                   "least 1, for each one not already set)")
    p.add_argument("--mpi-arg", action="append", default=[], help="extra launcher argument")
    p.add_argument("--dry-run", action="store_true", help="print the command and exit")
    return p


def main(argv: list[str] | None = None) -> int:
    """The `syncnorm-launch` command: parse `argv` (default sys.argv[1:]; the job's command follows
    `--`), launch the job (or print it with --dry-run) and return the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    cmd: list[str] = []
    if "--" in argv:
        i = argv.index("--")
        argv, cmd = argv[:i], argv[i + 1:]
    args = _parser().parse_args(argv)
    try:
        return _launch(args, cmd)
    except KeyboardInterrupt:  # SIGINT before the job started; `run` forwards it once it has
        print("syncnorm-launch: the job was interrupted by SIGINT (exit 130)", file=sys.stderr,
              flush=True)
        return 130


def _launch(args: argparse.Namespace, cmd: list[str]) -> int:
    try:
        info = detect_mpi(launcher=args.launcher)
        limits, note = ({}, "") if args.no_thread_limits else _thread_limits(args)
        line = build_command(args.nprocs, cmd, info, args.hosts, args.hostfile, args.timeout,
                             extra=args.mpi_arg, rsh_agent=args.rsh_agent, tcp=args.tcp,
                             env_vars=[f"{k}={v}" for k, v in limits.items()] + args.env)
    except LaunchError as e:
        print(f"syncnorm-launch: error: {e}", file=sys.stderr)
        return 2
    env = job_env(info, args.timeout)
    for n in info.notes:
        print(f"syncnorm-launch: note: {n}", file=sys.stderr)
    if note:
        print(note, file=sys.stderr)
    if args.dry_run:
        flags = " ".join(f"{k}={env[k]}" for k in ("OMPI_ALLOW_RUN_AS_ROOT",
                         "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "MPIEXEC_TIMEOUT")
                         if k in env and os.environ.get(k) != env[k])
        print(f"syncnorm-launch: {info.version} ({info.vendor}); launcher {info.launcher}",
              file=sys.stderr)
        print(((flags + " ") if flags else "") + shlex.join(line))
        return 0
    sys.stderr.flush()
    return run(line, env, args.timeout, abort_grace=args.abort_grace)


def _thread_limits(args: argparse.Namespace) -> tuple[dict[str, str], str]:
    """The thread variables for the ranks (see `threads`) and the line that says so; the user's
    own (this environment, --env) are kept."""
    given = {item.partition("=")[0]: item.partition("=") for item in args.env}
    kept = {}
    for var in THREAD_VARS:
        if var in given:
            _, eq, value = given[var]
            kept[var] = value if eq else os.environ.get(var, "")
        elif var in os.environ:
            kept[var] = os.environ[var]
    if args.nprocs < 1:
        return {}, ""  # build_command refuses it
    hosts = parse_hosts(args.hosts) if args.hosts else None
    limits, why = thread_limits(args.nprocs, hosts=hosts, hostfile=args.hostfile,
                                multi_node=slurm_nodes() > 1, user_set=kept)
    return limits, describe(limits, why, kept)
