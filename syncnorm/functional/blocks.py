"""Block sizes and working-dtype rules shared by every kernel (a leaf module: numpy only).

The kernels work through cache-sized blocks; these constants say how big. Why each value was
chosen (measurements on the 2-core test machine) is on the Performance page (docs/performance.md).
"""
from __future__ import annotations

import numpy as np

__all__ = ["BLOCK_ELEMS", "REDUCE_BLOCK", "ROW_PIECE", "MIN_ROW", "ELEM_BLOCK", "COEF_TILE",
           "COL_BLOCK", "work_dtype", "piece_bounds", "rowdot"]

#: elements per block of rows in a reduction's second look (float32: 128 KiB, stays in L2)
BLOCK_ELEMS = 1 << 15
#: elements per block of a reduction pass (longer than L2: fewer calls, longer streams)
REDUCE_BLOCK = 1 << 18
#: longest run of values summed in the working dtype (longer rows are cut into pieces)
ROW_PIECE = 1 << 14
#: rows shorter than this are reduced column-wise (`columns.py`)
MIN_ROW = 16
#: elements per operand in one elementwise block (float32: 512 KiB)
ELEM_BLOCK = 1 << 17
#: values per expanded per-channel constant tile (channels x positions)
COEF_TILE = 1 << 16
#: elements per block of the (A, C*M) column view of short rows (float32: 128 KiB)
COL_BLOCK = 1 << 15

_F16 = np.dtype(np.float16)
_VECDOT = getattr(np, "vecdot", None)  # numpy >= 2.0: one BLAS dot per row


def work_dtype(dtype: np.dtype) -> np.dtype:
    """Elementwise work runs in float32 for float16 input, else in the input's dtype."""
    return np.dtype(np.float32) if np.dtype(dtype) == _F16 else np.dtype(dtype)


def piece_bounds(M: int, piece: int = ROW_PIECE) -> list[tuple[int, int]]:
    """Split a row of M values into pieces of nearly equal length, none longer than `piece`."""
    k = max(1, -(-M // piece))
    edges = [M * i // k for i in range(k + 1)]
    return list(zip(edges[:-1], edges[1:]))


def rowdot(a: np.ndarray, b: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """sum(a * b) along the last axis, in the operands' dtype (BLAS dots with numpy >= 2)."""
    if _VECDOT is not None:
        return _VECDOT(a, b, out=out)
    return np.einsum("...i,...i->...", a, b, out=out)
