"""Timing: one thread, interleaved candidates, medians and spreads.

* `ensure_single_thread` pins OpenMP / OpenBLAS / MKL to one thread. These libraries read their
  environment when they load (numpy loads OpenBLAS on import), so when the variables are not
  already "1" the command restarts itself with them set, before anything imports numpy.
* `measure` runs several candidates (syncnorm, the textbook numpy version, torch, the memory copy
  of the bandwidth floor) in *interleaved blocks*: round r runs a block of `block` consecutive
  repetitions of every candidate, in an order that rotates from round to round. Noise from other
  processes (this is a shared machine) then falls on every candidate alike. Blocks rather than
  single alternating repetitions: a library in the middle of a block runs in its own steady state
  (allocator caches and freed pages reused, as in a training loop); the first repetition of each
  block is a warm-up and is not recorded.
* Each repetition is timed on two clocks: the CPU time of the main thread (`time.thread_time`,
  which time spent descheduled by other processes does not inflate) and the wall clock
  (`time.perf_counter`). The report's primary clock is selectable; both are kept.
"""
from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

__all__ = ["THREAD_VARS", "ensure_single_thread", "Candidate", "Stats", "measure", "summarize",
           "CLOCKS"]

THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
#: clock name -> function; "cpu" is the main thread's CPU time, "wall" the wall clock
CLOCKS: dict[str, Callable[[], float]] = {"cpu": time.thread_time, "wall": time.perf_counter}


def ensure_single_thread(argv: Sequence[str], module: str = "syncnorm.bench") -> None:
    """Re-run `python -m module argv...` with one thread per math library, unless it already is
    (or numpy is not loaded yet, in which case setting the variables is enough)."""
    if all(os.environ.get(v) == "1" for v in THREAD_VARS):
        return
    env = dict(os.environ)
    env.update({v: "1" for v in THREAD_VARS})
    if "numpy" not in sys.modules:
        os.environ.update({v: "1" for v in THREAD_VARS})
        return
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, "-m", module, *argv], env)


@dataclass
class Candidate:
    """A timed thing. `run()` does any untimed preparation itself and returns the
    (cpu, wall) seconds of its timed section (see `timed`)."""
    name: str
    run: Callable[[], tuple[float, float]]


def timed(prepare: Callable[[], object] | None, body: Callable[[object], object]
          ) -> Callable[[], tuple[float, float]]:
    """A Candidate.run: `state = prepare()` untimed, then `body(state)` timed on both clocks."""
    cpu, wall = time.thread_time, time.perf_counter

    def run() -> tuple[float, float]:
        state = prepare() if prepare is not None else None
        c0, w0 = cpu(), wall()
        body(state)
        w1, c1 = wall(), cpu()
        return c1 - c0, w1 - w0
    return run


@dataclass
class Stats:
    """Median and spread of repeated timings (seconds)."""
    median: float
    q1: float
    q3: float
    min: float
    n: int
    samples: list[float] = field(default_factory=list)

    @property
    def iqr(self) -> float:
        return self.q3 - self.q1

    def to_json(self, keep_samples: bool = True) -> dict:
        d = {"median_s": self.median, "q1_s": self.q1, "q3_s": self.q3, "iqr_s": self.iqr,
             "min_s": self.min, "n": self.n}
        if keep_samples:
            d["samples_s"] = [round(s, 9) for s in self.samples]
        return d


def _quantile(sorted_v: list[float], q: float) -> float:
    """Linear-interpolation quantile of sorted values (numpy's default method)."""
    if not sorted_v:
        return float("nan")
    pos = q * (len(sorted_v) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(sorted_v) - 1)
    return sorted_v[lo] + (sorted_v[hi] - sorted_v[lo]) * (pos - lo)


def summarize(samples: Sequence[float]) -> Stats:
    v = sorted(float(s) for s in samples)
    return Stats(_quantile(v, 0.5), _quantile(v, 0.25), _quantile(v, 0.75),
                 v[0] if v else float("nan"), len(v), list(samples))


def measure(candidates: Sequence[Candidate], rounds: int, block: int
            ) -> dict[str, dict[str, Stats]]:
    """Interleaved blocks (see the module docstring). Returns {name: {"cpu": Stats, "wall": Stats}}
    over rounds * (block - 1) recorded repetitions each (all `block` when block == 1)."""
    rec: dict[str, dict[str, list[float]]] = {c.name: {"cpu": [], "wall": []} for c in candidates}
    n = len(candidates)
    for r in range(rounds):
        for i in range(n):
            c = candidates[(i + r) % n]
            for j in range(block):
                cpu, wall = c.run()
                if j > 0 or block == 1:
                    rec[c.name]["cpu"].append(cpu)
                    rec[c.name]["wall"].append(wall)
    return {name: {k: summarize(v) for k, v in d.items()} for name, d in rec.items()}
