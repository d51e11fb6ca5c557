"""How many cores one process's compiled kernels may use (a leaf module: the engine and the
compiled kernels both read it)."""
from __future__ import annotations

import os

__all__ = ["THREADS_ENV", "num_threads"]

THREADS_ENV = "SYNCNORM_NUM_THREADS"


def num_threads() -> int:
    """SYNCNORM_NUM_THREADS (default 1): cores one process's compiled kernels may use."""
    raw = os.environ.get(THREADS_ENV, "1").strip() or "1"
    try:
        n = int(raw)
    except ValueError:
        raise ValueError(f"{THREADS_ENV} must be a positive integer, got {raw!r}") from None
    if n < 1:
        raise ValueError(f"{THREADS_ENV} must be a positive integer, got {n}")
    return n
