"""What a test run could leave on the machine: daemons, mounts, network namespaces, links, iptables
rules and containers, listed so that the state after the run can be compared with the state before.

    before = snapshot()
    ...                                   # the tests
    left = leftovers(before, snapshot(), tag)   # {"mounts": [...], ...}; empty lists: clean

`tag` is the marker every namespace, path and daemon the suite makes carries (`sn<pytest pid>`, see
netns_cluster.py and docker_engine.py): namespaces, mounts and processes count as left behind only
when they carry it, so that other test runs on the same machine are not blamed on this one. Links
and iptables rules of the machine's own network namespace, and container processes, count whatever
made them: nothing the suite does may add any. `python tests/support/host_state.py` prints a
snapshot (the before/after listing of the CI run).
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys

#: process names of container engines and their helpers
DAEMONS = ("dockerd", "containerd", "containerd-shim", "containerd-shim-runc-v2", "runc",
           "docker-proxy")


def _out(cmd: list[str]) -> str:
    if shutil.which(cmd[0]) is None:
        return ""
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return r.stdout if r.returncode == 0 else ""


def _processes() -> list[str]:
    """`pid name cmdline` of every process whose name is a container engine's, or that runs in a
    container (its cgroup path names docker or containerd)."""
    out = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/comm") as f:
                name = f.read().strip()
            with open(f"/proc/{d}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode(errors="replace").strip()
            with open(f"/proc/{d}/cgroup") as f:
                cgroup = f.read()
        except OSError:
            continue
        if name in DAEMONS or re.search(r"/(docker|containerd)[/-]", cgroup):
            out.append(f"{d} {name} {cmd[:200]}")
    return out


def _mounts() -> list[str]:
    """`root mountpoint fstype` of every mount, but /run/netns itself: iproute2 mounts it the first
    time any network namespace is made and keeps it for every later one (it holds none)."""
    with open("/proc/self/mountinfo") as f:
        lines = [line.split() for line in f]
    return [f"{x[3]} {x[4]} {x[x.index('-') + 1]}" for x in lines if x[4] != "/run/netns"]


def _iptables() -> list[str]:
    rules = []
    for tool in ("iptables-save", "ip6tables-save"):
        rules += [f"{tool}: {x}" for x in _out([tool]).splitlines()
                  if x and not x.startswith(("#", ":", "*", "COMMIT"))]
    return rules


def snapshot() -> dict[str, list[str]]:
    """The machine's state, one sorted list of lines per kind."""
    state = {
        "daemons and container processes": _processes(),
        "mounts": _mounts(),
        "network namespaces": [x.split()[0] for x in _out(["ip", "netns", "list"]).splitlines()
                               if x.strip()],
        "links (root namespace)": [x.split()[0].split("@")[0]
                                   for x in _out(["ip", "-br", "link"]).splitlines() if x.strip()],
        "iptables rules (root namespace)": _iptables(),
        "docker state directories": [p for p in ("/run/docker", "/run/docker.sock", "/run/containerd",
                                                 "/var/lib/docker", "/var/lib/containerd")
                                     if os.path.exists(p)],
    }
    return {k: sorted(v) for k, v in state.items()}


def leftovers(before: dict[str, list[str]], after: dict[str, list[str]], tag: str
              ) -> dict[str, list[str]]:
    """What `after` holds that `before` did not, of the kinds and names this run is answerable for."""
    tagged = ("mounts", "network namespaces")
    out = {}
    for kind, lines in after.items():
        new = [x for x in lines if x not in set(before.get(kind, []))]
        if kind in tagged:  # Docker's own paths carry no tag: any new one counts
            new = [x for x in new if tag in x or "docker" in x]
        elif kind == "daemons and container processes":
            # a daemon started for this run carries the tag in its arguments; a container process
            # has no tag but must not outlive the daemon (none may be left at all)
            new = [x for x in new if tag in x or x.split()[1] not in DAEMONS]
        out[kind] = new
    return out


def render(state: dict[str, list[str]]) -> str:
    return "\n".join(f"{kind} ({len(lines)}):" + "".join(f"\n    {x}" for x in lines)
                     for kind, lines in state.items())


if __name__ == "__main__":
    print(render(snapshot()))
    sys.exit(0)
