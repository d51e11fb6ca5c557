"""The memory-bandwidth floor: the bytes a pass must move, at the speed of a large copy.

Bandwidth: `np.copyto` of one float32 array into another, each at least four times the
last-level cache (the STREAM benchmark's rule), so the copy runs from and to main memory. It is
timed in the same interleaved rounds as the layers (`timing.measure`), and counted as bytes read +
bytes written per second (2 x the array size; the write-allocate read a cache does before writing
is not counted, for the copy or for the layers).

Bytes each pass must move, for an input of B bytes (the same count for every layer, from the
minimum passes of a two-pass algorithm that does not keep the input in cache):

    forward : read x twice (statistics, then normalize), write y          -> 3 B
    backward: read dy and x twice (sums, then the input gradient), write dx -> 5 B
    both    : 8 B

Ratio to the floor = measured time / (bytes / copy bandwidth). Below 1 is possible only for an
input that stays in cache between passes.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .timing import Candidate, timed

__all__ = ["PASS_BYTES", "last_level_cache", "copy_array_bytes", "copy_candidate", "floor_seconds"]

#: input-sized arrays moved per pass (see the module docstring)
PASS_BYTES = {"forward": 3, "backward": 5, "both": 8}
DEFAULT_LLC = 32 << 20


def last_level_cache() -> tuple[int, str]:
    """(bytes, source) of the largest CPU cache, from Linux sysfs; 32 MiB when unknown."""
    best = 0
    base = Path("/sys/devices/system/cpu/cpu0/cache")
    try:
        for d in base.glob("index*"):
            raw = (d / "size").read_text().strip().upper()
            mult = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(raw[-1:], 1)
            val = int(raw.rstrip("KMG")) * mult
            best = max(best, val)
    except (OSError, ValueError):
        best = 0
    if best:
        return best, str(base)
    return DEFAULT_LLC, "default (sysfs not readable)"


def copy_array_bytes(llc: int, minimum: int = 64 << 20) -> int:
    """Size of each copy array: 4 x the last-level cache, at least `minimum`."""
    return max(4 * llc, minimum)


def copy_candidate(nbytes: int, name: str = "copy") -> tuple[Candidate, int]:
    """A Candidate timing np.copyto of `nbytes` (rounded to float32); returns it and the bytes
    moved per copy (read + written)."""
    n = max(1, nbytes // 4)
    src = np.ones(n, np.float32)
    dst = np.zeros(n, np.float32)  # touched now: no page faults while timed
    return Candidate(name, timed(None, lambda _: np.copyto(dst, src))), 2 * 4 * n


def floor_seconds(pass_name: str, input_bytes: int, bandwidth: float) -> float:
    """Seconds the pass needs at `bandwidth` bytes/s (see PASS_BYTES)."""
    return PASS_BYTES[pass_name] * input_bytes / bandwidth


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return os.uname().machine if hasattr(os, "uname") else "unknown"
