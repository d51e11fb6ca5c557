"""Multi-rank job whose every number is saved, to compare runs placed differently on hosts.

    python -m mpi4py tests/support/jobs/sbn_equiv.py OUT_DIR [--steps K]

All ranks draw the same global batch each step and keep an uneven shard of it (rank 1 holds none
when there are 3+ ranks). A model of SyncBatchNorm layers runs forward and backward; each rank
saves its outputs, input gradients, parameter gradients and running statistics of every step to
OUT_DIR/rank{R}.npz together with its host name. A run on one host and a run spread over several
hosts must save the same numbers.
"""
from __future__ import annotations

import argparse
import socket
import sys
from pathlib import Path

import numpy as np

from syncnorm import nn
from syncnorm.distributed import get_world_group


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("out", type=Path)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--batch", type=int, default=20)
    a = p.parse_args(argv)
    w = get_world_group()
    rng = np.random.default_rng(1234)
    sizes = [a.batch // w.size] * w.size
    sizes[0] += a.batch - sum(sizes)
    if w.size >= 3:
        sizes[0], sizes[1] = sizes[0] + sizes[1], 0
    lo = sum(sizes[:w.rank])
    mine = slice(lo, lo + sizes[w.rank])
    model = nn.Sequential(nn.SyncBatchNorm(6), nn.SyncBatchNorm(6, momentum=None),
                          nn.SyncBatchNorm(6, affine=False))
    saved: dict[str, np.ndarray] = {}
    for step in range(a.steps):
        x = (rng.standard_normal((a.batch, 6, 5, 4)) * 2 + 30).astype(np.float32)
        dy = rng.standard_normal(x.shape).astype(np.float32)
        model.zero_grad()
        saved[f"y{step}"] = model(x[mine])
        saved[f"dx{step}"] = model.backward(dy[mine])
        for name, prm in model.named_parameters():
            saved[f"grad{step}.{name}"] = prm.grad
    for name, buf in model.named_buffers():
        saved[f"buffer.{name}"] = np.asarray(buf)
    a.out.mkdir(parents=True, exist_ok=True)
    np.savez(a.out / f"rank{w.rank}.npz", host=np.array(socket.gethostname()), **saved)
    print(f"SAVED rank {w.rank} of {w.size} on {socket.gethostname()}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
