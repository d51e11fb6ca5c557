"""SyncBatchNorm2d vs local BatchNorm2d, per training step (forward + backward), under MPI.

    syncnorm-launch -n 2 -- python -m mpi4py benchmarks/bench_syncbn.py [--shape 32 64 32 32]

Every rank runs both layers, interleaved, on its own (32, 64, 32, 32) float32 batch: the local
BatchNorm2d is the baseline measured in the same run (two processes at once, no communication).
Rank 0 prints the medians, the ratio, and the collectives and bytes per step counted by
`syncnorm.bench.mpi_worker.CountingComm` (the wrapper `syncnorm-bench` counts with).
"""
from __future__ import annotations

import argparse
import os
import time

# one thread per rank, whatever the launcher chose (syncnorm-launch gives a lone rank every core)
for _v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS",
           "SYNCNORM_NUM_THREADS"):
    os.environ[_v] = "1"

import numpy as np  # noqa: E402
from mpi4py import MPI  # noqa: E402

from syncnorm import nn  # noqa: E402
from syncnorm.bench.mpi_worker import CountingComm  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--shape", type=int, nargs=4, default=[32, 64, 32, 32])
    p.add_argument("--reps", type=int, default=40)
    args = p.parse_args()
    comm = MPI.COMM_WORLD
    rng = np.random.default_rng(comm.rank)
    x = rng.normal(1, 2, args.shape).astype(np.float32)
    dy = rng.normal(size=args.shape).astype(np.float32)
    C = args.shape[1]
    cc = CountingComm(comm)
    layers = {"BatchNorm2d (local)": nn.BatchNorm2d(C), "SyncBatchNorm": nn.SyncBatchNorm(C, process_group=cc)}
    times = {k: [] for k in layers}
    for i in range(args.reps + 3):
        for name, m in layers.items():
            comm.Barrier()
            t = time.perf_counter()
            m(x)
            m.backward(dy)
            dt = time.perf_counter() - t
            if i >= 3:
                times[name].append(dt)
    steps = args.reps + 3
    if comm.rank == 0:
        med = {k: float(np.median(v)) for k, v in times.items()}
        base = med["BatchNorm2d (local)"]
        print(f"P = {comm.size}, per-rank shape {tuple(args.shape)} float32, median of {args.reps}")
        for k, v in med.items():
            q = np.percentile(times[k], [25, 75])
            print(f"  {k:22s} {v * 1e3:8.2f} ms  (IQR {q[0]*1e3:.2f}-{q[1]*1e3:.2f})  ratio {v / base:.3f}")
        print(f"  collectives per step: {dict((k, v / steps) for k, v in cc.calls.items())}; "
              f"bytes per rank per step: {cc.bytes / steps:.0f}")


if __name__ == "__main__":
    main()
