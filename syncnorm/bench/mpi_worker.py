"""The MPI part of `syncnorm-bench`, run on P ranks by the bench itself:

    python -m mpi4py -m syncnorm.bench.mpi_worker --out FILE [--shape N C H W] ...

1. Counts: SyncBatchNorm2d runs training steps through `CountingComm`, a wrapper around the
   communicator that counts every collective called on it and the bytes of the buffers passed
   (per rank): collectives and bytes per step, forward and backward apart, and in eval mode.
2. Step time: local BatchNorm2d and SyncBatchNorm2d training steps (forward + backward) on every
   rank's own batch, in interleaved blocks (see `timing.measure`), each step started together on all
   ranks (an untimed Allreduce of one value as barrier). A step's time is the slowest rank's, on
   the wall clock (MPI polls while it waits, so CPU time would count the waiting too); the CPU
   times are kept as well. Ratios: of the medians, and of the fastest quarter (q1) and the fastest
   step, which a busy machine disturbs least; and, per rank, of the time outside the collectives
   (the wrapper also times the calls), which separates what SyncBatchNorm computes and packs from
   the time spent waiting for the other ranks (co-scheduling, on a machine with more runnable
   processes than cores), also on the CPU clock; and the step's two Allreduces timed alone at
   their real sizes (`allreduce_step_s`): what the exchange itself costs when the ranks arrive
   together.
3. Allreduce times at a few message sizes (slowest rank, median), for the alpha-beta fit.

Rank 0 writes the results as JSON to --out. All communication goes through
`syncnorm.distributed`.
"""
from __future__ import annotations

import argparse
import json
import time
from collections import Counter
from typing import Any

import numpy as np

__all__ = ["CountingComm", "main"]

DEFAULT_SIZES = (8, 64, 512, 4096, 32768, 262144, 2097152)


class CountingComm:
    """Wraps an mpi4py communicator: counts collective calls made through it and the bytes of the
    numpy buffers passed to them (MPI.IN_PLACE and non-array arguments count 0)."""

    COLLECTIVES = frozenset({
        "Allreduce", "Iallreduce", "Allgather", "Iallgather", "Allgatherv", "Bcast", "Ibcast",
        "Reduce", "Ireduce", "Gather", "Scatter", "Alltoall", "Barrier", "Ibarrier",
        "Reduce_scatter", "Reduce_scatter_block", "allreduce", "allgather", "bcast", "gather",
        "scatter", "reduce", "alltoall", "barrier"})

    def __init__(self, comm: Any) -> None:
        self._comm = comm
        self.calls: Counter = Counter()
        self.bytes = 0
        self.seconds = 0.0  # wall time spent inside the collectives
        self.cpu_seconds = 0.0  # CPU time of this thread inside them (MPI polls while waiting)

    def reset(self) -> None:
        self.calls = Counter()
        self.bytes = 0
        self.seconds = 0.0
        self.cpu_seconds = 0.0

    def snapshot(self) -> tuple[dict[str, int], int]:
        return dict(self.calls), self.bytes

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._comm, name)
        if name not in self.COLLECTIVES:
            return attr

        def counted(*args: Any, **kw: Any) -> Any:
            self.calls[name] += 1
            self.bytes += sum(a.nbytes for a in list(args) + list(kw.values())
                              if isinstance(a, np.ndarray))
            t0, c0 = time.perf_counter(), time.thread_time()
            try:
                return attr(*args, **kw)
            finally:
                self.seconds += time.perf_counter() - t0
                self.cpu_seconds += time.thread_time() - c0
        return counted


def _per_step(calls: dict[str, int], nbytes: int, steps: int) -> dict:
    return {"collectives": sum(calls.values()) / steps,
            "by_call": {k: v / steps for k, v in sorted(calls.items())},
            "bytes": nbytes / steps}


def count(C: int, x: np.ndarray, dy: np.ndarray, base: Any, steps: int) -> dict:
    """Collectives and bytes per step of SyncBatchNorm2d through a CountingComm."""
    from syncnorm import nn

    cc = CountingComm(base)
    m = nn.SyncBatchNorm(C, process_group=cc)
    m(x)
    m.backward(dy)  # first step (builds the exchange): not counted
    fwd_calls: Counter = Counter()
    bwd_calls: Counter = Counter()
    fwd_bytes = bwd_bytes = 0
    for _ in range(steps):
        cc.reset()
        m(x)
        c, b = cc.snapshot()
        fwd_calls.update(c)
        fwd_bytes += b
        cc.reset()
        m.backward(dy)
        c, b = cc.snapshot()
        bwd_calls.update(c)
        bwd_bytes += b
    cc.reset()
    m.eval()
    m(x)
    m.backward(dy)
    eval_calls, eval_bytes = cc.snapshot()
    fwd = _per_step(dict(fwd_calls), fwd_bytes, steps)
    bwd = _per_step(dict(bwd_calls), bwd_bytes, steps)
    by_call: Counter = Counter()
    by_call.update(fwd["by_call"])
    by_call.update(bwd["by_call"])
    return {"steps": steps,
            "collectives_per_step": fwd["collectives"] + bwd["collectives"],
            "bytes_per_rank_per_step": fwd["bytes"] + bwd["bytes"],
            "by_call": dict(by_call),
            "forward": fwd, "backward": bwd,
            "eval_step": {"collectives": sum(eval_calls.values()), "bytes": eval_bytes}}


def _slowest(times: list[float], base: Any) -> np.ndarray:
    """Per repetition, the largest time over the ranks."""
    from syncnorm.distributed import all_reduce

    return all_reduce(np.asarray(times, dtype=np.float64), base, op="max")


def _barrier(base: Any) -> None:
    from syncnorm.distributed import all_reduce
    all_reduce(np.zeros(1), base, inplace=True)


def step_times(C: int, x: np.ndarray, dy: np.ndarray, base: Any, rounds: int, block: int) -> dict:
    """Local BatchNorm2d vs SyncBatchNorm2d training steps; slowest-rank wall and CPU times."""
    from syncnorm import nn
    from .timing import summarize

    timer = CountingComm(base)
    layers = {"local": nn.BatchNorm2d(C), "sync": nn.SyncBatchNorm(C, process_group=timer)}
    rec: dict[str, dict[str, list[float]]] = {
        k: {"wall": [], "cpu": [], "in_collectives": [], "cpu_in_collectives": []} for k in layers}
    names = list(layers)
    for r in range(rounds):
        for i in range(len(names)):
            name = names[(i + r) % len(names)]
            m = layers[name]
            for j in range(block):
                _barrier(base)
                timer.reset()
                c0, w0 = time.thread_time(), time.perf_counter()
                m(x)
                m.backward(dy)
                w1, c1 = time.perf_counter(), time.thread_time()
                if j > 0 or block == 1:
                    rec[name]["wall"].append(w1 - w0)
                    rec[name]["cpu"].append(c1 - c0)
                    rec[name]["in_collectives"].append(timer.seconds)
                    rec[name]["cpu_in_collectives"].append(timer.cpu_seconds)
    out: dict[str, Any] = {}
    for name in names:
        out[name] = {clk: summarize(list(_slowest(v, base))).to_json(keep_samples=False)
                     for clk, v in rec[name].items()}
        out[name]["rank0_wall"] = summarize(rec[name]["wall"]).to_json(keep_samples=False)
        # this rank's step time outside the collectives: the computation and the bookkeeping
        outside = [w - c for w, c in zip(rec[name]["wall"], rec[name]["in_collectives"])]
        out[name]["rank_outside_collectives_wall"] = summarize(outside).to_json(keep_samples=False)
        out[name]["rank_in_collectives_wall"] = summarize(
            rec[name]["in_collectives"]).to_json(keep_samples=False)
        # CPU time outside the collectives: the work itself, whatever the other ranks do
        cpu_out = [c - ci for c, ci in zip(rec[name]["cpu"], rec[name]["cpu_in_collectives"])]
        out[name]["rank_outside_collectives_cpu"] = summarize(cpu_out).to_json(keep_samples=False)
    for clk in ("wall", "cpu"):
        out[f"ratio_{clk}"] = out["sync"][clk]["median_s"] / out["local"][clk]["median_s"]
    # the fastest quarter of the steps: what the step costs when no other process intervenes
    out["ratio_wall_q1"] = out["sync"]["wall"]["q1_s"] / out["local"]["wall"]["q1_s"]
    out["ratio_wall_min"] = out["sync"]["wall"]["min_s"] / out["local"]["wall"]["min_s"]
    # what SyncBatchNorm adds besides waiting in the collectives (medians, this rank)
    out["ratio_outside_collectives"] = (out["sync"]["rank_outside_collectives_wall"]["median_s"]
                                        / out["local"]["rank_outside_collectives_wall"]["median_s"])
    out["ratio_outside_collectives_cpu"] = (
        out["sync"]["rank_outside_collectives_cpu"]["median_s"]
        / out["local"]["rank_outside_collectives_cpu"]["median_s"])
    return out


def allreduce_times(base: Any, sizes: list[int], reps: int) -> dict:
    """Median (and quartiles) of the slowest rank's Allreduce time per message size (through
    `syncnorm.distributed.all_reduce`, as the library's callers make them)."""
    from syncnorm.distributed import all_reduce, as_group
    from .timing import summarize

    group = as_group(base)  # made once: the timed calls are the collectives alone
    med, q1, q3 = [], [], []
    for n in sizes:
        buf = np.zeros(max(1, n // 8))
        all_reduce(buf, group, inplace=True)
        ts = []
        for _ in range(reps):
            _barrier(base)
            t0 = time.perf_counter()
            all_reduce(buf, group, inplace=True)
            ts.append(time.perf_counter() - t0)
        s = summarize(list(_slowest(ts, base)))
        med.append(s.median)
        q1.append(s.q1)
        q3.append(s.q3)
    return {"sizes_bytes": [8 * max(1, n // 8) for n in sizes], "median_s": med, "q1_s": q1,
            "q3_s": q3, "reps": reps}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="JSON file written by rank 0")
    p.add_argument("--shape", type=int, nargs=4, default=[32, 64, 32, 32], help="per-rank input")
    p.add_argument("--steps", type=int, default=5, help="counted steps")
    p.add_argument("--rounds", type=int, default=12)
    p.add_argument("--block", type=int, default=4)
    p.add_argument("--sizes", type=int, nargs="*", default=list(DEFAULT_SIZES))
    p.add_argument("--allreduce-reps", type=int, default=40)
    args = p.parse_args(argv)

    from syncnorm.distributed import get_world_group

    base = get_world_group().comm
    P, rank = base.Get_size(), base.Get_rank()
    C = args.shape[1]
    rng = np.random.default_rng(1000 + rank)
    x = rng.normal(0.5, 2.0, args.shape).astype(np.float32)
    dy = rng.normal(0.0, 1.0, args.shape).astype(np.float32)
    res: dict[str, Any] = {"P": P, "shape_per_rank": list(args.shape), "channels": C}
    res["counts"] = count(C, x, dy, base, args.steps)
    res["step_time"] = step_times(C, x, dy, base, args.rounds, args.block)
    if P >= 2 and args.sizes:
        res["allreduce"] = allreduce_times(base, list(args.sizes), args.allreduce_reps)
    if P >= 2:
        # the step's two Allreduces at their real sizes, timed alone (ranks started together)
        c = res["counts"]
        msg = [c["forward"]["bytes"] / max(1, c["forward"]["collectives"]),
               c["backward"]["bytes"] / max(1, c["backward"]["collectives"])]
        t_ar = allreduce_times(base, [int(m) for m in msg], args.allreduce_reps)["median_s"]
        res["step_time"]["allreduce_step_s"] = float(sum(t_ar))
    if rank == 0:
        with open(args.out, "w") as f:
            json.dump(res, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
