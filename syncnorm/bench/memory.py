"""Peak memory a layer allocates during a training forward and a backward, against its input.

numpy reports its array allocations to `tracemalloc`, so the traced peak during a call, minus
what was allocated before it, is the call's peak extra memory: its output (y or dx, one input-sized
array) plus every temporary alive at its worst moment. The layer is warmed up first (one step).
The forward's output is still alive while the backward runs, but it was allocated before, so the
backward's figure does not count it. torch's allocator does not report to tracemalloc, so only the
numpy implementations are measured.
"""
from __future__ import annotations

import gc
import tracemalloc
from typing import Any

import numpy as np

__all__ = ["peak_extra"]


def _peak_during(fn) -> tuple[int, Any]:
    gc.collect()
    tracemalloc.reset_peak()
    before, _ = tracemalloc.get_traced_memory()
    out = fn()
    _, peak = tracemalloc.get_traced_memory()
    return peak - before, out


def peak_extra(layer: Any, x: np.ndarray, dy: np.ndarray) -> dict:
    """Peak extra bytes of layer(x) (training) and of layer.backward(dy), and as multiples of
    x.nbytes."""
    layer(x)
    layer.backward(dy)  # warm-up: caches, lazily made buffers
    started = tracemalloc.is_tracing()
    if not started:
        tracemalloc.start()
    try:
        fwd, y = _peak_during(lambda: layer(x))
        bwd, dx = _peak_during(lambda: layer.backward(dy))
    finally:
        if not started:
            tracemalloc.stop()
    del y, dx
    B = x.nbytes
    return {"input_bytes": B, "forward_peak_bytes": fwd, "backward_peak_bytes": bwd,
            "forward_buffers": fwd / B, "backward_buffers": bwd / B}
