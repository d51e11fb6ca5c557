"""The statistics exchange over MPI vs over torch.distributed (gloo), per training step.

    syncnorm-launch -n 2 -- python benchmarks/bench_transport.py [--channels 64 512] [--steps 400]
        [--rounds 5]

One MPI job whose ranks also form a torch.distributed world (`syncnorm.torch.init_process_group`),
so both transports join the same processes. A step is what one SyncBatchNorm layer sends in a
training step: its forward and its backward exchange (one all-reduce each of 2C+6 float64 values),
through `StatsExchange` over the MPI world and over torch's default group (gloo), alternated round
by round so that a noisy neighbour slows both alike. The ranks line up (a barrier, untimed) before
each round. Rank 0 prints the median per-step time of each transport over the rounds and their ratio
(gloo / MPI).
"""
from __future__ import annotations

import argparse
import os
import statistics
import time

# one thread per rank, whatever the launcher chose (syncnorm-launch gives a lone rank every core)
for _v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS",
           "SYNCNORM_NUM_THREADS"):
    os.environ[_v] = "1"

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.distributed as tdist  # noqa: E402

import syncnorm.torch as st  # noqa: E402
from syncnorm.distributed import get_world_group  # noqa: E402
from syncnorm.distributed.exchange import StatsExchange  # noqa: E402
from syncnorm.distributed.torch_backend import wrap  # noqa: E402


def per_step(ex: StatsExchange, steps: int) -> float:
    """Seconds per (forward + backward) exchange of `ex`, over `steps` steps."""
    c = ex.channels
    s1, s2 = np.ones(c), np.ones(c)
    t = time.perf_counter()
    for _ in range(steps):
        ex.forward(1.0, s1, s2)
        ex.backward(s1, s2)
    return (time.perf_counter() - t) / steps


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--channels", type=int, nargs="+", default=[64, 512])
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--rounds", type=int, default=5)
    a = ap.parse_args()
    torch.set_num_threads(1)
    st.init_process_group()
    world, gloo = get_world_group(), wrap(None)
    P = world.size
    for c in a.channels:
        times: dict[str, list[float]] = {"mpi": [], "gloo": []}
        pairs = {"mpi": StatsExchange(world, 0, c, "bench"), "gloo": StatsExchange(gloo, 1, c, "bench")}
        for ex in pairs.values():
            per_step(ex, 20)  # warm up both transports
        for _ in range(a.rounds):
            for name, ex in pairs.items():
                tdist.barrier()
                times[name].append(per_step(ex, a.steps))
        if world.rank == 0:
            m, g = statistics.median(times["mpi"]), statistics.median(times["gloo"])
            print(f"P={P} C={c}: MPI {m * 1e6:.0f} us/step, gloo {g * 1e6:.0f} us/step, "
                  f"gloo/MPI {g / m:.2f}", flush=True)
    st.destroy_process_group()


if __name__ == "__main__":
    main()
