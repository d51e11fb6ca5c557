"""3 MPI ranks; ranks 0 and 1 also form a torch.distributed world of 2 (rank 2 does not): on them
SyncBatchNorm's process_group=None is ambiguous (an MPI world of 3, a torch world of 2) and the first
training forward raises; prints `AMBIGUOUS rank R: <message>` (run by tests/test_error_table.py)."""
from __future__ import annotations

import os
import tempfile

import numpy as np
import torch
import torch.distributed as dist
from mpi4py import MPI

from syncnorm.distributed import comm as C
from syncnorm.torch import SyncBatchNorm

WORLD = MPI.COMM_WORLD
R = WORLD.Get_rank()
path = np.zeros(256, np.uint8)
tmpdir = tempfile.mkdtemp(prefix="syncnorm-ambiguous-") if R == 0 else None
if R == 0:
    raw = os.path.join(tmpdir, "store").encode()
    path[:len(raw)] = np.frombuffer(raw, np.uint8)
C.broadcast(path, WORLD)
if R < 2:
    store = bytes(path[path != 0]).decode()
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=R, world_size=2)
    try:
        SyncBatchNorm(2)(torch.randn(4, 2))
    except RuntimeError as e:
        print(f"AMBIGUOUS rank {R}: {e}", flush=True)
    dist.barrier()
    dist.destroy_process_group()
WORLD.Barrier()
if tmpdir is not None:
    for f in os.listdir(tmpdir):
        os.unlink(os.path.join(tmpdir, f))
    os.rmdir(tmpdir)
