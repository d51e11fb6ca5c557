"""Rank 0 is in eval mode while the others train: they must not wait for ever (timeout 2 s)."""
import time

import numpy as np

from syncnorm import distributed as dist
from syncnorm import nn

m = nn.SyncBatchNorm(2, timeout=2.0)
x = np.random.default_rng(dist.get_rank()).normal(size=(3, 2)).astype(np.float32)
if dist.get_rank() == 0:
    m.eval()
    m(x)  # no collective in eval
    time.sleep(60)  # a rank that goes on with other work and never joins
else:
    m(x)
print("JOB-WENT-ON on ranks > 0")
