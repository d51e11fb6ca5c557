"""A gloo peer lost in the middle of a training step (run by tests/torch_adapter/test_launchers.py).

`kill`: rank 1 is killed after the forward; the survivor's backward collective fails at once (the
connection closes), syncnorm prints its fatal line and the process ends. No collective timeout is
set, so nothing but the dead peer ends the wait. Started without torchrun's agent (which would kill
the survivor itself).
`late`: rank 1 never joins the backward (it sleeps); rank 0's layer has timeout=1: its collective
raises CollectiveTimeoutError after 1 s and the job ends (torchrun then stops rank 1)."""
from __future__ import annotations

import os
import signal
import sys
import time

import torch
import torch.distributed as dist

import syncnorm.torch as st

torch.set_num_threads(1)
st.init_process_group()
R = dist.get_rank()
MODE = sys.argv[1]
layer = st.SyncBatchNorm(3, timeout=1.0 if MODE == "late" else None)
x = torch.randn(4, 3, requires_grad=True)
layer(x).sum().backward()  # one step in step
y = layer(x)
print(f"IN-STEP rank {R}", flush=True)
if R == 1:
    if MODE == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    time.sleep(120)
try:
    (y * y).sum().backward()
except Exception as e:  # noqa: BLE001 - reported, then raised again
    print(f"SURVIVOR-RAISED {type(e).__name__} rank {R}", flush=True)
    raise
print(f"SURVIVOR-WENT-ON rank {R}", flush=True)
