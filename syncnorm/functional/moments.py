"""Per-channel statistics of a (A, C, M) array, accumulated in float64 about a shift.

Every normalization in syncnorm reduces a view `x3` of shape (A, C, M) over axes 0 and 2 and keeps
one statistic per channel C: BatchNorm views (N, C, *) as (N, C, prod(*)); LayerNorm, GroupNorm and
InstanceNorm view their rows as (1, rows, row_length).

The result is the *shifted sums* (count, S1, S2) with S1 = sum(x - K), S2 = sum((x - K)^2) for a
per-channel shift K. Shifted sums add across rows and across ranks (one Allreduce), and the variance
S2/n - (S1/n)^2 only cancels digits in proportion to ((mean - K) / std)^2: a K near the mean (the
running mean) keeps it exact, and `poorly_shifted` tells the caller when K was so far off that it
must sum again about the mean it just found (every rank decides alike from the reduced sums).

How the sums are formed (one read of x, in cache-sized blocks of rows of M contiguous values): each
row's own sum gives a row mean m (rounded to the working dtype), then t = x - m is summed and
squared in the working dtype. x - m is exact (Sterbenz) and t is centred, so these per-row partials
carry the row's spread to working-dtype accuracy whatever the mean; the rows are then combined per
channel about K in float64. Rows shorter than `MIN_ROW` take a float64 path instead.
"""
from __future__ import annotations

import numpy as np

__all__ = ["moments", "mean_var", "poorly_shifted", "row_blocks", "work_dtype", "rows_view",
           "block_ranges", "BLOCK_ELEMS", "MIN_ROW"]

#: elements per block of rows (float32: 128 KiB; a few such blocks stay in L2)
BLOCK_ELEMS = 1 << 15
#: rows shorter than this are reduced column-wise in float64
MIN_ROW = 16
#: (mean - shift)^2 / var above which float64 shifted sums may lose more than ~1e-8 of the variance
RESHIFT_RATIO = 1e8

_F16 = np.dtype(np.float16)


def work_dtype(dtype: np.dtype) -> np.dtype:
    """Elementwise work runs in float32 for float16 input, else in the input's dtype."""
    return np.dtype(np.float32) if np.dtype(dtype) == _F16 else np.dtype(dtype)


def rows_view(x3: np.ndarray) -> np.ndarray:
    """(A, C, M) as (A*C, M) rows (a copy only when the layout requires it)."""
    A, C, M = x3.shape
    return x3.reshape(A * C, M)


def block_ranges(A: int, C: int, M: int, block: int = BLOCK_ELEMS):
    """Yield (a0, a1, c0, c1, m0, m1) blocks of about `block` elements covering (A, C, M)."""
    if M >= block:
        mstep, cstep, astep = block, 1, 1
    elif C * M >= block:
        mstep, cstep, astep = M, max(1, block // M), 1
    else:
        mstep, cstep, astep = M, C, max(1, block // max(1, C * M))
    for a0 in range(0, A, astep):
        a1 = min(A, a0 + astep)
        for c0 in range(0, C, cstep):
            c1 = min(C, c0 + cstep)
            for m0 in range(0, M, mstep):
                yield a0, a1, c0, c1, m0, min(M, m0 + mstep)


def row_blocks(nrows: int, M: int, block: int = BLOCK_ELEMS):
    """Yield (r0, r1) ranges of rows of about `block` elements."""
    step = max(1, block // max(1, M))
    for r0 in range(0, nrows, step):
        yield r0, min(nrows, r0 + step)


def _row_partials(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per row: (m, t1, t2) with m the row's rounded mean, t1 = sum(x - m), t2 = sum((x - m)^2);
    m in the working dtype, t1 and t2 as float64 arrays of shape (rows,)."""
    R, M = rows.shape
    wd = work_dtype(rows.dtype)
    m = np.empty(R, wd)
    t1 = np.empty(R)
    t2 = np.empty(R)
    tmp = np.empty((max(1, BLOCK_ELEMS // max(1, M)), M), wd)
    for r0, r1 in row_blocks(R, M):
        blk = rows[r0:r1]
        t = tmp[:r1 - r0]
        mb = np.add.reduce(blk, axis=1, dtype=wd)
        mb /= M
        m[r0:r1] = mb
        np.subtract(blk, mb[:, None], out=t, dtype=wd)
        t1[r0:r1] = np.add.reduce(t, axis=1)
        t2[r0:r1] = np.einsum("ij,ij->i", t, t)
    return m, t1, t2


def moments(x3: np.ndarray, shift: np.ndarray | None = None) -> tuple[int, np.ndarray, np.ndarray]:
    """Shifted sums of `x3` (A, C, M) per channel.

    Returns `(n, S1, S2)`: n = A*M values per channel; S1, S2 float64 arrays of shape (C,).
    `shift` (C,) float64, default zeros.
    """
    A, C, M = x3.shape
    K = np.zeros(C) if shift is None else np.asarray(shift, dtype=np.float64)
    if A * M == 0 or C == 0:
        return A * M, np.zeros(C), np.zeros(C)
    if M < MIN_ROW:
        return A * M, *_moments_columns(x3, K)
    m, t1, t2 = _row_partials(rows_view(x3))
    d = (m.astype(np.float64).reshape(A, C) - K)  # row mean - shift
    t1 = t1.reshape(A, C)
    t2 = t2.reshape(A, C)
    s1 = (t1 + M * d).sum(axis=0)
    s2 = (t2 + d * (2 * t1 + M * d)).sum(axis=0)
    return A * M, s1, s2


def _moments_columns(x3: np.ndarray, K: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Short rows: float64 blocks over the batch axis, two-pass within each block."""
    A, C, M = x3.shape
    s1 = np.zeros(C)
    s2 = np.zeros(C)
    step = max(1, BLOCK_ELEMS // max(1, C * M))
    for a0 in range(0, A, step):
        b = x3[a0:a0 + step].astype(np.float64)
        n = b.shape[0] * M
        mb = b.sum(axis=(0, 2)) / n
        b -= mb[None, :, None]
        q = np.einsum("acm,acm->c", b, b)
        d = mb - K
        s1 += n * d
        s2 += q + n * d * d
    return s1, s2


def mean_var(n: int | float, s1: np.ndarray, s2: np.ndarray,
             shift: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(mean, biased variance) from shifted sums; variance clamped at 0. n must be > 0."""
    d = s1 / n
    mean = d if shift is None else shift + d
    var = np.maximum(s2 / n - d * d, 0.0)
    return mean, var


def poorly_shifted(n: int | float, s1: np.ndarray, s2: np.ndarray) -> bool:
    """True when the shift was so far from the mean (|mean - K| > 1e4 std) that the variance from
    these sums is not exact; the caller then sums again about the mean just found. Depends only
    on the (reduced) sums, so every rank of a group decides alike."""
    if n <= 0:
        return False
    d = s1 / n
    var = s2 / n - d * d
    return bool(np.any(d * d > RESHIFT_RATIO * np.maximum(var, 0.0)) and np.any(d != 0))
