"""A private Docker daemon for the container tests, started and removed by the test itself.

    why = Engine.unavailable()     # None, or why this machine cannot run a daemon at all (a skip)
    Engine.missing_packages()      # Debian packages the tests need and lack (an error naming them)
    eng = Engine().start()         # dockerd in a network namespace of its own; clients use eng.env
    ...
    eng.stop()                     # nothing left: see `stop`

The daemon never touches the machine's own Docker, if any: it runs in a network namespace of its own
(docker0, the containers' networks, its iptables rules and its 10.77.0.0/16 addresses exist only
there), with its own socket, state, data directory, cgroup parent and containerd namespace, all
named after the tag `sn<pid of the test process>`, so that concurrent test runs never collide and a
run that died is cleaned up by the next one (`clean_stale`). It keeps no cache: images are built
afresh by each run and deleted with the data directory.
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

from netns_cluster import NetnsCluster

TAG = f"sn{os.getpid()}"
#: directories dockerd or containerd make at fixed places, whatever their options
FIXED_DIRS = ("/run/containerd", "/run/docker")
#: what the tests need, by Debian package: the tools each one provides
PACKAGES = {"docker.io": ("dockerd", "docker", "containerd", "runc"),
            "debootstrap": ("debootstrap",), "docker-compose": ("docker-compose",),
            "iproute2": ("ip",), "util-linux": ("nsenter",)}


def run(cmd: list[str], env: dict[str, str] | None = None, timeout: float = 600,
        check: bool = True, **kw) -> subprocess.CompletedProcess:
    """Run a command, output captured; a failure raises with its output."""
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout, **kw)
    if check and r.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({r.returncode}):\n{r.stdout[-3000:]}\n"
                           f"{r.stderr[-3000:]}")
    return r


class Engine:
    """A dockerd of this test run; `env` points the docker clients at it (DOCKER_HOST)."""

    def __init__(self, tag: str = TAG) -> None:
        self.tag = tag
        self.netns = f"{tag}-docker"
        self.state = Path(f"/run/{tag}-docker")  # socket, pid file, exec root, log
        self.data = Path(f"/var/tmp/{tag}-docker-data")  # images and containers (disk, not tmpfs)
        self.cgroup = f"{tag}-docker"
        self.socket = self.state / "docker.sock"
        self.env = dict(os.environ, DOCKER_HOST=f"unix://{self.socket}")
        self.proc: subprocess.Popen | None = None
        # made by dockerd and containerd whatever their options say (shim sockets in /run/containerd/s)
        self._fixed_dirs = [d for d in FIXED_DIRS if not os.path.exists(d)]

    # ------------------------------------------------------------------ can it run here
    @staticmethod
    def unavailable() -> str | None:
        """Why this machine cannot run a Docker daemon at all (for a skip), or None."""
        if not hasattr(os, "geteuid") or os.geteuid() != 0:
            return "a private Docker daemon needs root"
        if not _has_overlayfs():
            return "the kernel has no overlay file system (Docker's storage driver)"
        v1 = Path("/sys/fs/cgroup/devices/devices.list").exists()
        v2 = Path("/sys/fs/cgroup/cgroup.controllers").exists()
        if not (v1 or v2):
            return "no cgroup hierarchy with the devices controller (or cgroup v2) is mounted"
        if shutil.which("ip") is not None:
            why = NetnsCluster.unavailable()
            if why:
                return f"network namespaces cannot be made here: {why}"
        return None

    @staticmethod
    def missing_packages() -> list[str]:
        """The Debian packages whose tools are not installed (the tests install nothing)."""
        return [pkg for pkg, tools in PACKAGES.items()
                if any(shutil.which(t) is None for t in tools)]

    def ok(self) -> bool:
        try:
            return run(["docker", "info"], env=self.env, timeout=20, check=False).returncode == 0
        except (OSError, subprocess.TimeoutExpired):
            return False

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> "Engine":
        clean_stale()
        self.state.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.data.mkdir(mode=0o700, parents=True, exist_ok=True)
        run(["ip", "netns", "add", self.netns])
        run(["ip", "-n", self.netns, "link", "set", "lo", "up"])
        log = open(self.state / "dockerd.log", "ab")
        # nsenter, not `ip netns exec`: the latter remounts /sys and hides the cgroup mounts
        self.proc = subprocess.Popen(
            ["nsenter", f"--net=/run/netns/{self.netns}", "dockerd",
             "--data-root", str(self.data), "--exec-root", str(self.state / "exec"),
             "--pidfile", str(self.state / "dockerd.pid"), "--host", f"unix://{self.socket}",
             "--bip", "10.77.250.1/24", "--default-address-pool", "base=10.77.0.0/16,size=24",
             "--cgroup-parent", f"/{self.cgroup}", "--containerd-namespace", self.tag,
             "--containerd-plugins-namespace", f"{self.tag}-plugins"],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        deadline = time.monotonic() + 90
        while not self.ok():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                text = self.log()
                self.stop()
                raise RuntimeError(f"dockerd did not start:\n{text}")
            time.sleep(0.5)
        return self

    def log(self) -> str:
        try:
            return (self.state / "dockerd.log").read_text(errors="replace")[-3000:]
        except OSError:
            return ""

    def stop(self) -> None:
        """Remove every container and network, end the daemon and its helpers, unmount what it
        mounted, delete its namespace, cgroups, state and data. Raises when something is left."""
        if self.proc is not None and self.proc.poll() is None and self.ok():
            ids = run(["docker", "ps", "-aq"], env=self.env, check=False).stdout.split()
            if ids:
                run(["docker", "rm", "-f", *ids], env=self.env, check=False, timeout=120)
            run(["docker", "network", "prune", "-f"], env=self.env, check=False, timeout=60)
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        self.proc = None
        left = teardown(self.tag, fixed_dirs=self._fixed_dirs)
        if left:
            raise RuntimeError("the Docker engine's teardown left:\n  " + "\n  ".join(left))


# ---------------------------------------------------------------------- teardown, also of stale runs
def teardown(tag: str, fixed_dirs: list[str] | None = None) -> list[str]:
    """Remove everything the engine tagged `tag` made (its daemon already ended, or dead): processes
    in its namespace or cgroups, mounts, the namespace, cgroups, state and data directories, and
    those of `fixed_dirs` (FIXED_DIRS that did not exist before it started) that are empty.
    Returns what could not be removed (empty: all gone)."""
    e = Engine(tag)
    pidfile = e.state / "dockerd.pid"
    if pidfile.exists():  # a daemon whose test process died
        try:
            os.kill(int(pidfile.read_text().strip()), signal.SIGKILL)
        except (ValueError, ProcessLookupError):
            pass
    for _ in range(3):  # helpers die with their parents; a second round catches late ones
        pids = _netns_pids(e.netns) + _cgroup_pids(e.cgroup)
        if not pids:
            break
        for p in pids:
            try:
                os.kill(p, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.5)
    roots = [str(e.state), str(e.data)]
    for mnt in sorted(_mounts_under(roots), key=len, reverse=True):
        if subprocess.run(["umount", mnt], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", mnt], capture_output=True)
    run(["ip", "netns", "del", e.netns], check=False)
    for ctl in Path("/sys/fs/cgroup").iterdir():
        top = ctl / e.cgroup
        if top.is_dir():
            for d in sorted((p for p in top.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
                _rmdir(d)
            _rmdir(top)
    for d in roots:
        shutil.rmtree(d, ignore_errors=True)
    for d in fixed_dirs or []:  # emptied by the daemon's end; anything still in it is not ours
        for sub in sorted(Path(d).rglob("*"), key=lambda p: -len(p.parts)) if os.path.isdir(d) else []:
            _rmdir(sub)
        _rmdir(Path(d))
    left = [f"mount {m}" for m in _mounts_under(roots)]
    left += [f"network namespace {e.netns}"] if e.netns in _netns_list() else []
    left += [f"process {p}" for p in _netns_pids(e.netns) + _cgroup_pids(e.cgroup)]
    left += [f"cgroup {c / e.cgroup}" for c in Path("/sys/fs/cgroup").iterdir()
             if (c / e.cgroup).exists()]
    left += [f"directory {d}" for d in roots + (fixed_dirs or []) if os.path.exists(d)]
    return left


def clean_stale() -> None:
    """Tear down engines of test processes that died without doing it themselves."""
    for p in Path("/run").glob("sn*-docker"):
        pid = p.name[2:-len("-docker")]
        if pid.isdigit() and not _alive(int(pid)):
            teardown(f"sn{pid}")
    for p in Path("/var/tmp").glob("sn*-docker-data"):
        pid = p.name[2:-len("-docker-data")]
        if pid.isdigit() and not _alive(int(pid)):
            teardown(f"sn{pid}")


def _has_overlayfs() -> bool:
    def listed() -> bool:
        try:
            return "overlay" in Path("/proc/filesystems").read_text().split()
        except OSError:
            return False
    if not listed() and shutil.which("modprobe"):
        subprocess.run(["modprobe", "overlay"], capture_output=True)
    return listed()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


def _netns_list() -> list[str]:
    out = run(["ip", "netns", "list"], check=False).stdout
    return [x.split()[0] for x in out.splitlines() if x.strip()]


def _netns_pids(name: str) -> list[int]:
    r = run(["ip", "netns", "pids", name], check=False)
    return [int(x) for x in r.stdout.split() if x.isdigit()] if r.returncode == 0 else []


def _cgroup_pids(name: str) -> list[int]:
    pids: set[int] = set()
    for ctl in Path("/sys/fs/cgroup").iterdir():
        top = ctl / name
        if top.is_dir():
            for procs in top.rglob("cgroup.procs"):
                try:
                    pids.update(int(x) for x in procs.read_text().split())
                except OSError:
                    pass
    return sorted(pids)


def _mounts_under(roots: list[str]) -> list[str]:
    out = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            mnt = line.split()[4].encode().decode("unicode_escape")  # \040 for a space
            if any(mnt == r or mnt.startswith(r + "/") for r in roots):
                out.append(mnt)
    return out


def _rmdir(d: Path) -> None:
    try:
        d.rmdir()
    except OSError:
        pass
