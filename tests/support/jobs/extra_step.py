"""Ranks train in step; then rank 0 runs one more SyncBatchNorm step that no rank joins.

Its collective times out after 2 s: CollectiveTimeoutError on rank 0 (with the fatal line), and the
job must end. argv[1] says what the other ranks do meanwhile: "exit" (finish the program, i.e. wait
in MPI_Finalize) or "sleep" (go on with 60 s of work that does not communicate).
"""
import sys
import time

import numpy as np

from syncnorm import distributed as dist
from syncnorm import nn

mode = sys.argv[1]
rank = dist.get_rank()
model = nn.Sequential(nn.SyncBatchNorm(3, timeout=2.0), nn.ReLU(), nn.SyncBatchNorm(3, timeout=2.0))
x = np.random.default_rng(rank).normal(size=(4, 3, 5)).astype(np.float32)
for _ in range(3):
    y = model(x)
    model.backward(np.ones_like(y))
print(f"IN-STEP rank {rank}", flush=True)
if rank == 0:
    t0 = time.monotonic()
    try:
        model(x)  # the extra step
    finally:
        print(f"EXTRA-STEP-ENDED after {time.monotonic() - t0:.1f} s", flush=True)
    print("JOB-WENT-ON rank 0", flush=True)
elif mode == "sleep":
    time.sleep(60)
    print(f"JOB-WENT-ON rank {rank}", flush=True)
