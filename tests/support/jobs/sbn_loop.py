"""A long-running multi-rank job for fault tests: SyncBatchNorm steps in a loop.

    python -m mpi4py tests/support/jobs/sbn_loop.py [--steps N] [--seconds S] [--channels C]

Each rank runs forward + backward of a small SyncBatchNorm model on its own random shard, step after
step, and prints `rank R host H step K` every `--every` steps (flushed), so a test can tell that
the job is in its steady state before it injects a fault. Ends after --steps steps or --seconds
seconds (whichever first), printing `DONE rank R`. The collective timeout comes from
SYNCNORM_COLLECTIVE_TIMEOUT (or --timeout).
"""
from __future__ import annotations

import argparse
import socket
import sys
import time

import numpy as np

from syncnorm import nn
from syncnorm.distributed import get_world_group


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=10**9)
    p.add_argument("--seconds", type=float, default=60.0)
    p.add_argument("--channels", type=int, default=16)
    p.add_argument("--every", type=int, default=50)
    p.add_argument("--timeout", type=float, default=None)
    a = p.parse_args(argv)
    world = get_world_group()
    host = socket.gethostname()
    rng = np.random.default_rng(world.rank)
    model = nn.Sequential(nn.SyncBatchNorm(a.channels, timeout=a.timeout),
                          nn.SyncBatchNorm(a.channels, timeout=a.timeout))
    end = time.monotonic() + a.seconds
    step = 0
    while step < a.steps and time.monotonic() < end:
        x = rng.standard_normal((4, a.channels, 3, 3))
        y = model(x)
        model.backward(np.ones_like(y))
        step += 1
        if step % a.every == 0:
            print(f"rank {world.rank} host {host} step {step}", flush=True)
    print(f"DONE rank {world.rank} host {host} steps {step}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
