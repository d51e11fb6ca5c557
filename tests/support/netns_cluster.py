"""A fake multi-host cluster on one Linux machine, for MPI tests over real TCP links.

Each "host" (h1, h2, ...) is a network namespace with one veth link `eth0` (address 10.77.0.N/24)
plugged into a bridge that lives in a separate "switch" namespace, and every command runs in its
own UTS namespace so `hostname` differs per host. Nothing is created in the root network namespace
and no address outside the cluster's /24 is used. `/etc/netns/<ns>/hosts` (which `ip netns exec`
bind-mounts over /etc/hosts) maps the host names. Launchers reach the other hosts through an
rsh agent (`agent HOST CMD...`, what mpirun calls instead of ssh) written into the state directory.

    with NetnsCluster(3) as cl:          # up: namespaces, links, hostfiles, agent
        job = cl.run("h1", [...], timeout=60)   # bounded; every process left in the cluster killed
        cl.cut("h2")                     # fault injection: h2's link down
    # down: processes killed, namespaces and /etc/netns entries removed, always

Names carry the creating process id (sn<pid>-h1), so concurrent test runs never collide, and a run
that died without cleaning up is cleaned by the next `up` (namespaces whose owner pid is gone).
Needs root (CAP_SYS_ADMIN + CAP_NET_ADMIN), `ip` (iproute2) and `unshare` (util-linux):
`NetnsCluster.unavailable()` says why not, for a skip.
"""
from __future__ import annotations

import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

SUBNET = "10.77.0"  # the cluster's /24, inside its own namespaces only
_PREFIX_BASE = "sn"


@dataclass
class Result:
    """A finished (or killed) command: exit code, merged output, wall time, whether it timed out."""
    returncode: int
    output: str
    seconds: float
    timed_out: bool


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check, timeout=30)


def _netns_names() -> list[str]:
    out = _ip("netns", "list", check=False).stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


class NetnsCluster:
    """N hosts in network namespaces joined by a bridge; see the module docstring."""

    def __init__(self, hosts: int = 2, slots: int = 2, subnet: str = SUBNET) -> None:
        if not 1 <= hosts <= 50:
            raise ValueError(f"hosts must be between 1 and 50, got {hosts}")
        self.nhosts = hosts
        self.slots = slots
        self.subnet = subnet
        self.prefix = f"{_PREFIX_BASE}{os.getpid()}"
        self.hosts = [f"h{i}" for i in range(1, hosts + 1)]
        self.state = Path(tempfile.mkdtemp(prefix=f"{self.prefix}-netns-"))
        self._up = False

    # ------------------------------------------------------------------ availability
    @staticmethod
    def unavailable() -> str | None:
        """None when namespaces can be made here, else the reason (for pytest.skip)."""
        if not hasattr(os, "geteuid") or os.geteuid() != 0:
            return "network namespaces need root (CAP_SYS_ADMIN + CAP_NET_ADMIN)"
        for tool in ("ip", "unshare"):
            if shutil.which(tool) is None:
                return f"`{tool}` is not installed (iproute2 / util-linux)"
        name = f"{_PREFIX_BASE}probe{os.getpid()}"
        r = _ip("netns", "add", name, check=False)
        if r.returncode != 0:
            return f"`ip netns add` fails here: {r.stderr.strip()}"
        _ip("netns", "del", name, check=False)
        return None

    # ------------------------------------------------------------------ names
    def ns(self, host: str) -> str:
        return f"{self.prefix}-{host}"

    @property
    def switch(self) -> str:
        return f"{self.prefix}-sw"

    def address(self, host: str) -> str:
        return f"{self.subnet}.{int(host[1:])}"

    @property
    def cidr(self) -> str:
        return f"{self.subnet}.0/24"

    @property
    def agent(self) -> str:
        return str(self.state / "agent")

    @property
    def hostfile(self) -> str:
        """Open MPI hostfile: `hN slots=S` (slots, never --oversubscribe, across hosts)."""
        return str(self.state / "hostfile")

    @property
    def hostfile_mpich(self) -> str:
        return str(self.state / "hostfile.mpich")

    # ------------------------------------------------------------------ lifecycle
    def __enter__(self) -> "NetnsCluster":
        self.up()
        return self

    def __exit__(self, *exc: object) -> None:
        self.down()
        self.cleanup_state()

    @staticmethod
    def clean_stale() -> None:
        """Remove namespaces left by test processes that died without cleaning up."""
        for name in _netns_names():
            head = name.split("-", 1)[0]
            if not head.startswith(_PREFIX_BASE) or not head[len(_PREFIX_BASE):].isdigit():
                continue
            if _pid_alive(int(head[len(_PREFIX_BASE):])):
                continue
            _kill_pids(_ns_pids(name))
            _ip("netns", "del", name, check=False)
            shutil.rmtree(f"/etc/netns/{name}", ignore_errors=True)

    def up(self) -> "NetnsCluster":
        self.clean_stale()
        self.down()
        self._up = True
        sw = self.switch
        _ip("netns", "add", sw)
        _ip("-n", sw, "link", "set", "lo", "up")
        _ip("-n", sw, "link", "add", "br0", "type", "bridge")
        _ip("-n", sw, "link", "set", "br0", "up")
        for i, h in enumerate(self.hosts, 1):
            ns = self.ns(h)
            _ip("netns", "add", ns)
            # the veth is made inside the switch namespace and its peer moved straight into the host
            _ip("-n", sw, "link", "add", f"p{i}", "type", "veth", "peer", "name", "eth0", "netns", ns)
            _ip("-n", sw, "link", "set", f"p{i}", "master", "br0", "up")
            _ip("-n", ns, "link", "set", "lo", "up")
            _ip("-n", ns, "addr", "add", f"{self.address(h)}/24", "dev", "eth0")
            _ip("-n", ns, "link", "set", "eth0", "up")
        hosts_file = "127.0.0.1 localhost\n" + "".join(f"{self.address(h)} {h}\n" for h in self.hosts)
        for h in self.hosts:
            d = Path("/etc/netns") / self.ns(h)
            d.mkdir(parents=True, exist_ok=True)
            (d / "hosts").write_text(hosts_file)
        Path(self.hostfile).write_text("".join(f"{h} slots={self.slots}\n" for h in self.hosts))
        Path(self.hostfile_mpich).write_text("".join(f"{h}:{self.slots}\n" for h in self.hosts))
        self._write_agent()
        deadline = time.monotonic() + 10
        for h in self.hosts:
            while "LOWER_UP" not in _ip("-n", self.ns(h), "link", "show", "eth0").stdout:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{h}: eth0 got no carrier within 10 s")
                time.sleep(0.05)
        return self

    def down(self) -> None:
        """Kill every process in the cluster, delete its namespaces and /etc/netns entries.
        Idempotent; safe after a failed `up`."""
        self.kill_procs()
        for name in _netns_names():
            if name.startswith(self.prefix + "-"):
                _ip("netns", "del", name, check=False)
                shutil.rmtree(f"/etc/netns/{name}", ignore_errors=True)
        for h in self.hosts:
            shutil.rmtree(f"/etc/netns/{self.ns(h)}", ignore_errors=True)
        self._up = False

    def cleanup_state(self) -> None:
        shutil.rmtree(self.state, ignore_errors=True)

    def _write_agent(self) -> None:
        # Called by mpirun / mpiexec like ssh: [ssh options] HOST COMMAND...; the command words are
        # joined with spaces and run by a shell, as ssh does.
        addr_case = "".join(f"  {self.address(h)}) h={h} ;;\n" for h in self.hosts)
        text = f"""#!/bin/sh
# rsh/ssh stand-in for the netns test cluster {self.prefix}: agent [ssh options] HOST CMD...
while [ $# -gt 0 ]; do
  case $1 in
    -o|-p|-l|-i|-F) shift 2 ;;
    -*) shift ;;
    *) break ;;
  esac
done
h=$1; shift
case $h in
{addr_case}  *) ;;
esac
exec ip netns exec {self.prefix}-"$h" unshare --uts -- sh -c 'hostname "$0" && exec sh -c "$1"' "$h" "$*"
"""
        p = Path(self.agent)
        p.write_text(text)
        p.chmod(0o755)

    # ------------------------------------------------------------------ running things
    def wrap(self, host: str, argv: list[str]) -> list[str]:
        """The command line that runs argv on `host` (its netns, hostname = host)."""
        if host not in self.hosts:
            raise ValueError(f"no host {host!r} in this cluster ({', '.join(self.hosts)})")
        return ["ip", "netns", "exec", self.ns(host), "unshare", "--uts", "--",
                "sh", "-c", 'hostname "$0" && exec "$@"', host, *argv]

    def popen(self, host: str, argv: list[str], env: dict[str, str] | None = None,
              cwd: str | os.PathLike | None = None) -> subprocess.Popen:
        """Start argv on `host` in its own session, output merged and piped."""
        return subprocess.Popen(self.wrap(host, argv), env=env, cwd=cwd, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, start_new_session=True)

    def finish(self, proc: subprocess.Popen, timeout: float, started: float | None = None) -> Result:
        """Wait for `proc` at most `timeout` s, then kill its session and everything left in the
        cluster. Always returns; the cluster is empty of processes afterwards."""
        started = time.monotonic() if started is None else started
        timed_out = False
        try:
            out, _ = proc.communicate(timeout=max(0.1, timeout - (time.monotonic() - started)))
        except subprocess.TimeoutExpired:
            timed_out = True
            _kill_session(proc.pid)
            self.kill_procs()
            out, _ = proc.communicate()
            out = (out or "") + f"\n[netns_cluster] killed after {timeout:g} s"
        seconds = time.monotonic() - started
        self.kill_procs()
        rc = 124 if timed_out else proc.returncode
        return Result(rc, out or "", seconds, timed_out)

    def run(self, host: str, argv: list[str], timeout: float, env: dict[str, str] | None = None,
            cwd: str | os.PathLike | None = None) -> Result:
        """Run argv on `host`, bounded by `timeout`; every process left in the cluster is killed."""
        started = time.monotonic()
        return self.finish(self.popen(host, argv, env, cwd), timeout, started)

    def launch_line(self, nprocs: int, cmd: list[str], hosts: str | None = None,
                    timeout: float = 120, extra: tuple[str, ...] = (),
                    mpi: str = "openmpi") -> list[str]:
        """`python -m syncnorm.launch` across the cluster: the hostfile (slots, never
        --oversubscribe) or `hosts` ('h1:2,h2:1'), the rsh agent, TCP only on the cluster's links
        (Open MPI: the subnet; MPICH, whose hydra selects by interface: eth0). `mpi` says which
        MPI mpi4py loads in the environment the line will run in ('openmpi' or 'mpich')."""
        hostfile = self.hostfile_mpich if mpi == "mpich" else self.hostfile
        where = ["--hosts", hosts] if hosts else ["--hostfile", hostfile]
        tcp = "eth0" if mpi == "mpich" else self.cidr
        return [sys.executable, "-m", "syncnorm.launch", "-n", str(nprocs), *where,
                "--rsh-agent", self.agent, "--tcp", tcp, "--timeout", f"{timeout:g}",
                *extra, "--", *cmd]

    def pids(self, host: str | None = None) -> list[int]:
        """Processes living in one host's namespace (or in any of the cluster's)."""
        names = [self.ns(host)] if host else [self.ns(h) for h in self.hosts] + [self.switch]
        return [p for n in names for p in _ns_pids(n)]

    def kill_procs(self) -> None:
        """SIGTERM, then SIGKILL, every process in the cluster's namespaces."""
        _kill_pids(self.pids())

    def cut(self, host: str) -> None:
        """Take `host`'s link down: no RST, no FIN; peers see silence (a cable pulled)."""
        _ip("-n", self.ns(host), "link", "set", "eth0", "down")

    def heal(self, host: str) -> None:
        _ip("-n", self.ns(host), "link", "set", "eth0", "up")


def _ns_pids(name: str) -> list[int]:
    r = _ip("netns", "pids", name, check=False)
    return [int(x) for x in r.stdout.split() if x.isdigit()] if r.returncode == 0 else []


def _kill_pids(pids: list[int]) -> None:
    me = os.getpid()
    for sig in (signal.SIGTERM, signal.SIGKILL):
        alive = [p for p in pids if p != me and _pid_alive(p)]
        for p in alive:
            try:
                os.kill(p, sig)
            except ProcessLookupError:
                pass
        if not alive:
            return
        if sig == signal.SIGTERM:
            deadline = time.monotonic() + 2
            while time.monotonic() < deadline and any(_pid_alive(p) and not _zombie(p) for p in alive):
                time.sleep(0.05)


def _zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def _kill_session(sid: int) -> None:
    pids = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                if os.getsid(int(d)) == sid:
                    pids.append(int(d))
            except (ProcessLookupError, PermissionError):
                pass
    _kill_pids(pids)


def shell_join(argv: list[str]) -> str:
    return shlex.join(argv)
