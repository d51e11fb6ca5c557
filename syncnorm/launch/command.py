"""Building the command: the launcher's command line for a job (hosts, oversubscription, timeout,
TCP-only networking, variables passed to the ranks) and the launcher's own environment."""
from __future__ import annotations

import os
import re

from .detect import LaunchError, MPIInfo

__all__ = ["parse_hosts", "build_command", "job_env", "slurm_nodes"]


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
    single_host = host_list is None and hostfile is None and slurm_nodes() <= 1
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


def slurm_nodes() -> int:
    """The nodes of the Slurm allocation this runs in (1 outside Slurm)."""
    return _int_env("SLURM_JOB_NUM_NODES", _int_env("SLURM_NNODES", 1))


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
