"""syncnorm.torch.SyncBatchNorm vs torch's local nn.BatchNorm2d, per training step (forward + backward).

    syncnorm-launch -n 2 -- python benchmarks/bench_torch.py [--shape 32 64 32 32] [--reps 40]
        [--rounds 3] [--dtype float32] [--channels-last] [--profile]

Every rank (one per core) runs both layers on its own batch, one thread each
(torch.set_num_threads(1), OMP/MKL/OPENBLAS_NUM_THREADS=1). The baseline, torch.nn.BatchNorm2d on the
local batch, is measured in the same run and interleaved with syncnorm step by step, so a noisy
neighbour slows both alike; the ranks line up (a tiny Allreduce, untimed) before every step. A step
is `y = layer(x); y.backward(dy)` with x requiring a gradient. Rank 0 prints the median wall and CPU
(process_time) times of each and their ratio per round, the ratio of the fastest steps (least
disturbed by other processes on a shared machine), and with --profile where syncnorm's step goes
(each kernel, each collective, and the rest: autograd, tensor views, running statistics).
Needs torch (`pip install syncnorm[torch]`).
"""
from __future__ import annotations

import argparse
import os
import time
from collections import defaultdict

# one thread per rank, whatever the launcher chose (syncnorm-launch gives a lone rank every core)
for _v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS",
           "SYNCNORM_NUM_THREADS"):
    os.environ[_v] = "1"

import numpy as np  # noqa: E402
import torch  # noqa: E402

from syncnorm import distributed as dist  # noqa: E402
from syncnorm.distributed import comm  # noqa: E402
from syncnorm.distributed.exchange import StatsExchange  # noqa: E402
from syncnorm.functional import stats as stats_step  # noqa: E402
from syncnorm.torch import SyncBatchNorm  # noqa: E402
from syncnorm.torch import function as torch_function  # noqa: E402

torch.set_num_threads(1)
PARTS: dict[str, float] = defaultdict(float)


def timed(name: str, fn):
    def wrapper(*a, **kw):
        t = time.perf_counter()
        try:
            return fn(*a, **kw)
        finally:
            PARTS[name] += time.perf_counter() - t
    return wrapper


def install_profile() -> None:
    """Time syncnorm's kernels and collectives as the Function calls them."""
    stats_step.moments = timed("moments (local sums)", stats_step.moments)
    for name in ("normalize", "backward_reduce", "backward_elemt"):
        setattr(torch_function, name, timed(name, getattr(torch_function, name)))
    StatsExchange.forward = timed("Allreduce forward", StatsExchange.forward)
    StatsExchange.backward = timed("Allreduce backward", StatsExchange.backward)


def line_up(group) -> None:
    if group.size > 1:
        comm.allreduce_sum(np.zeros(1), group.comm)


def step(layer, x, dy) -> None:
    x.grad = None
    layer.zero_grad(set_to_none=True)
    layer(x).backward(dy)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shape", type=int, nargs="+", default=[32, 64, 32, 32])
    p.add_argument("--reps", type=int, default=40)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--dtype", default="float32", choices=["float32", "float64", "float16", "bfloat16"])
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--profile", action="store_true")
    args = p.parse_args()
    world = dist.get_world_group()
    rank = world.rank
    dtype = getattr(torch, args.dtype)
    g = torch.Generator().manual_seed(rank)
    x = (torch.randn(args.shape, generator=g) * 2 + 1).to(dtype)
    dy = torch.randn(args.shape, generator=g).to(dtype)
    if args.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
        dy = dy.contiguous(memory_format=torch.channels_last)
    x.requires_grad_()
    Ch = args.shape[1]
    base_cls = {2: torch.nn.BatchNorm1d, 3: torch.nn.BatchNorm1d, 4: torch.nn.BatchNorm2d,
                5: torch.nn.BatchNorm3d}[len(args.shape)]
    pdt = dtype if dtype in (torch.float32, torch.float64) else torch.float32  # torch's mixed rule
    base, ours = base_cls(Ch, dtype=pdt), SyncBatchNorm(Ch, dtype=pdt)
    for _ in range(3):  # warm up both (and make the exchange)
        step(base, x, dy)
        line_up(world)
        step(ours, x, dy)
    if args.profile:
        install_profile()
    if rank == 0:
        print(f"{world.size} rank(s), per-rank input {tuple(args.shape)} {args.dtype}"
              f"{' channels_last' if args.channels_last else ''}, torch {torch.__version__}, "
              f"{torch.get_num_threads()} thread(s) per rank; median of {args.reps} interleaved steps")
        print(f"{'round':>5} {'torch BN wall':>14} {'syncnorm wall':>14} {'ratio':>6}   "
              f"{'torch CPU':>10} {'syncnorm CPU':>13} {'ratio':>6}   {'fastest: torch':>14} "
              f"{'syncnorm':>9} {'ratio':>6}")
    ratios, best = [], []
    for r in range(args.rounds):
        PARTS.clear()
        tw, sw, tc, sc = [], [], [], []
        for _ in range(args.reps):
            line_up(world)
            t0, c0 = time.perf_counter(), time.process_time()
            step(base, x, dy)
            tw.append(time.perf_counter() - t0)
            tc.append(time.process_time() - c0)
            line_up(world)
            t0, c0 = time.perf_counter(), time.process_time()
            step(ours, x, dy)
            sw.append(time.perf_counter() - t0)
            sc.append(time.process_time() - c0)
        mt, ms, mtc, msc = (float(np.median(v)) * 1e3 for v in (tw, sw, tc, sc))
        ft, fs = min(tw) * 1e3, min(sw) * 1e3
        ratios.append(ms / mt)
        best.append(fs / ft)
        if rank == 0:
            print(f"{r:>5} {mt:>11.2f} ms {ms:>11.2f} ms {ms / mt:>6.2f}   {mtc:>7.2f} ms "
                  f"{msc:>10.2f} ms {msc / mtc:>6.2f}   {ft:>11.2f} ms {fs:>6.2f} ms {fs / ft:>6.2f}",
                  flush=True)
        if args.profile and rank == 0:
            total = sum(sw) * 1e3 / args.reps
            parts = {k: v * 1e3 / args.reps for k, v in PARTS.items()}
            parts["rest (autograd, views, running stats)"] = total - sum(parts.values())
            print("      syncnorm step, mean per step:", ", ".join(
                f"{k} {v:.2f} ms" for k, v in parts.items()))
    if rank == 0:
        print(f"wall-clock ratio syncnorm / torch BatchNorm: median step {float(np.median(ratios)):.2f}x, "
              f"fastest step {float(np.median(best)):.2f}x (medians over rounds; target <= 1.1x)")


if __name__ == "__main__":
    main()
