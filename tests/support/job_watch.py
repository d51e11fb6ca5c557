"""Watching a multi-rank job on the netns cluster while a test injects a fault: its output lines
timestamped as they arrive, its rank processes per host, and how long after the fault the
launcher and every rank were gone (used by tests/cluster/test_faults.py and test_sixteen_ranks.py).
"""
from __future__ import annotations

import os
import re
import subprocess
import threading
import time
from pathlib import Path

from netns_cluster import NetnsCluster

ROOT = Path(__file__).resolve().parents[2]


class Watched:
    """A job started on h1 whose output lines are timestamped as they arrive."""

    def __init__(self, cl: NetnsCluster, line: list[str], env: dict[str, str]) -> None:
        self.cl = cl
        self.t0 = time.monotonic()
        self.proc = cl.popen("h1", line, env=env, cwd=ROOT)
        self.lines: list[tuple[float, str]] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append((time.monotonic(), line.rstrip("\n")))

    @property
    def output(self) -> str:
        return "\n".join(x for _, x in self.lines)

    def wait_for(self, pattern: str, count: int = 1, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.proc.poll() is None:
            if len({x for _, x in self.lines if re.search(pattern, x)}) >= count:
                return
            time.sleep(0.05)
        raise AssertionError(f"no {count} x {pattern!r} within {timeout} s:\n{self.output[-4000:]}")

    def first(self, pattern: str) -> float | None:
        return next((t for t, x in self.lines if re.search(pattern, x)), None)


def rank_pids(cl: NetnsCluster, host: str, needle: str) -> list[int]:
    """Rank processes (python running `needle`, not the launcher) in one host's namespace."""
    out = []
    for pid in cl.pids(host):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                args = f.read().split(b"\0")
        except OSError:
            continue
        if (os.path.basename(args[0]).startswith(b"python") and b"syncnorm.launch" not in args
                and any(needle.encode() in a for a in args)):
            out.append(pid)
    return out


def watch_until_gone(cl: NetnsCluster, job: Watched, needle: str, bound: float, since: float
                     ) -> dict[str, float | None]:
    """Poll until the launcher has exited and no rank is left on any host, or `bound` s pass.
    Returns the seconds after `since` at which each happened (None: not within the bound)."""
    seen: dict[str, float | None] = {"launcher exit": None, **{f"ranks gone on {h}": None
                                                               for h in cl.hosts}}
    while time.monotonic() - since < bound:
        now = time.monotonic() - since
        if seen["launcher exit"] is None and job.proc.poll() is not None:
            seen["launcher exit"] = now
        for h in cl.hosts:
            key = f"ranks gone on {h}"
            if seen[key] is None and not rank_pids(cl, h, needle):
                seen[key] = now
        if all(v is not None for v in seen.values()):
            break
        time.sleep(0.02)
    return seen


def finish(cl: NetnsCluster, job: Watched) -> None:
    """End the job if it still runs and kill everything left in the cluster."""
    if job.proc.poll() is None:
        job.proc.kill()
    cl.kill_procs()
    try:
        job.proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        pass
    job._reader.join(5)


def report(title: str, seen: dict[str, float | None], extra: str = "") -> None:
    figures = ", ".join(f"{k} {v:.2f} s" if v is not None else f"{k} NOT within bound"
                        for k, v in seen.items())
    print(f"\n[fault timing] {title}: {figures}{extra}")
