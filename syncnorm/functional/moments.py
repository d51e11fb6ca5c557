"""Per-channel statistics of a (A, C, M) array, accumulated in float64 about a shift.

Every normalization in syncnorm reduces a view `x3` of shape (A, C, M) over axes 0 and 2 and keeps
one statistic per channel C: BatchNorm views (N, C, *) as (N, C, prod(*)); LayerNorm, GroupNorm and
InstanceNorm view their rows as (1, rows, row_length).

The result is the *shifted sums* (count, S1, S2) with S1 = sum(x - K), S2 = sum((x - K)^2) for a
per-channel shift K. Shifted sums add across rows and across ranks (one Allreduce), and the variance
S2/n - (S1/n)^2 only cancels digits in proportion to ((mean - K) / std)^2: a K near the mean (the
running mean) keeps it exact, and `poorly_shifted` tells the caller when K was so far off that it
must sum again about the mean it just found (every rank decides alike from the reduced sums).

How the sums are formed: the (A*C, M) rows are cut into *pieces* of at most `ROW_PIECE` contiguous
values (a whole row when it is shorter), read in cache-sized blocks of pieces. Each piece gets its
sum s and sum of squares q in the working dtype from two BLAS calls (`vecdot`, then `matmul` on the
block while it is in cache): one read of x from memory. The pieces are then combined per channel
about K in float64: with m = s/n and t2 = q - s*m (float64),
    S1 += n (m - K),    S2 += t2 + n (m - K)^2.
t2 cancels digits in proportion to m^2/var of the piece, so a piece whose mean is more than
`UNCENTRED_LIMIT`^(1/2) = 4 of its standard deviations from 0 (and every constant piece) is summed
again about its own mean m (rounded to the working dtype: x - m is exact when x and m are within a
factor of two, and t = x - m is centred), as t1 = sum(t), t2 = sum(t^2) with
    S1 += t1 + n (m - K),    S2 += t2 + (m - K) (2 t1 + n (m - K)).
So every piece's spread is accurate to a few units of the working dtype whatever its mean, and the
float64 combination across pieces and rows cancels nothing. Rows shorter than `MIN_ROW` take a
float64 path instead.
"""
from __future__ import annotations

import numpy as np

from . import engine
from .blocks import BLOCK_ELEMS, MIN_ROW, REDUCE_BLOCK, piece_bounds, rowdot, work_dtype
from .columns import col_moments

__all__ = ["moments", "mean_var", "poorly_shifted", "rows_view", "piece_sums", "UNCENTRED_LIMIT",
           "RESHIFT_RATIO"]

#: a piece with mean^2 > UNCENTRED_LIMIT * var (|mean| > 4 std) is summed again about its mean
UNCENTRED_LIMIT = 16.0
#: (mean - shift)^2 / var above which float64 shifted sums may lose more than ~1e-8 of the variance
RESHIFT_RATIO = 1e8


def rows_view(x3: np.ndarray) -> np.ndarray:
    """(A, C, M) as (A*C, M) rows (a copy only when the layout requires it)."""
    A, C, M = x3.shape
    return x3.reshape(A * C, M)


def _as_work(blk: np.ndarray, wd: np.dtype, scratch: np.ndarray | None) -> np.ndarray:
    """`blk` in the working dtype (float16 is converted into `scratch`)."""
    if blk.dtype == wd:
        return blk
    out = scratch.reshape(-1)[:blk.size].reshape(blk.shape)
    np.copyto(out, blk, casting="same_kind")
    return out


def piece_sums(rows: np.ndarray, wd: np.dtype) -> tuple[np.ndarray, np.ndarray]:
    """Sum and sum of squares of each row of `rows` (R, n), in `wd`: shapes (R,), (R,).

    Blocks of REDUCE_BLOCK elements: the sum of squares streams the block from memory, the sum
    reads it again from cache."""
    R, n = rows.shape
    s = np.empty(R, wd)
    q = np.empty(R, wd)
    ones = np.ones(n, wd)
    step = max(1, REDUCE_BLOCK // max(1, n))
    scratch = None if rows.dtype == wd else np.empty((min(R, step), n), wd)
    for r0 in range(0, R, step):
        b = _as_work(rows[r0:r0 + step], wd, scratch)
        rowdot(b, b, out=q[r0:r0 + step])
        np.matmul(b, ones, out=s[r0:r0 + step])
    return s, q


def centred_sums(rows: np.ndarray, m: np.ndarray, wd: np.dtype) -> tuple[np.ndarray, np.ndarray]:
    """t1 = sum(x - m), t2 = sum((x - m)^2) per row, in `wd`, for centres m (R,) of dtype wd."""
    R, n = rows.shape
    t1 = np.empty(R, wd)
    t2 = np.empty(R, wd)
    ones = np.ones(n, wd)
    step = max(1, BLOCK_ELEMS // max(1, n))
    tmp = np.empty((min(R, step), n), wd)
    for r0 in range(0, R, step):
        b = rows[r0:r0 + step]
        t = tmp[:b.shape[0]]
        np.subtract(b, m[r0:r0 + step, None], out=t, dtype=wd)
        rowdot(t, t, out=t2[r0:r0 + step])
        np.matmul(t, ones, out=t1[r0:r0 + step])
    return t1, t2


def _piece_moments(piece: np.ndarray, A: int, C: int, shift: np.ndarray
                   ) -> tuple[np.ndarray, np.ndarray]:
    """This piece's contribution (S1, S2) per channel, float64 (C,); `piece` is (A*C, n)."""
    wd = work_dtype(piece.dtype)
    n = piece.shape[1]
    s, q = piece_sums(piece, wd)
    m = s.astype(np.float64)
    m /= n
    t2 = q.astype(np.float64)
    t2 -= s * m
    # uncentred sums lose digits as m^2/var: sum again about the piece's mean where that is large
    # (or where the piece is constant); NaN/Inf compare False and propagate like torch
    bad = m * m > (UNCENTRED_LIMIT / n) * t2
    if not bad.any():
        d = m.reshape(A, C) - shift
        return n * d.sum(axis=0), t2.reshape(A, C).sum(axis=0) + n * np.einsum("ac,ac->c", d, d)
    redo = np.flatnonzero(bad)
    t1 = np.zeros_like(m)
    mc = m[redo].astype(wd)
    c1, c2 = centred_sums(piece[redo], mc, wd)
    m[redo] = mc.astype(np.float64)
    t1[redo] = c1
    t2[redo] = c2
    d = m.reshape(A, C) - shift
    t1 = t1.reshape(A, C)
    t2 = t2.reshape(A, C)
    return (t1 + n * d).sum(axis=0), (t2 + d * (2 * t1 + n * d)).sum(axis=0)


def moments(x3: np.ndarray, shift: np.ndarray | None = None) -> tuple[int, np.ndarray, np.ndarray]:
    """Shifted sums of `x3` (A, C, M) per channel.

    Returns `(n, S1, S2)`: n = A*M values per channel; S1, S2 float64 arrays of shape (C,).
    `shift` (C,) float64, default zeros.
    """
    A, C, M = x3.shape
    shift = np.zeros(C) if shift is None else np.asarray(shift, dtype=np.float64)
    if A * M == 0 or C == 0:
        return A * M, np.zeros(C), np.zeros(C)
    ck = engine.kernels()
    if ck is not None:  # the compiled engine: float64 sums value by value
        return A * M, *ck.batch_norm.moments(x3, shift)
    if M < MIN_ROW:  # short rows: column kernels
        return A * M, *col_moments(x3, shift)
    rows = rows_view(x3)
    s1 = np.zeros(C)
    s2 = np.zeros(C)
    for m0, m1 in piece_bounds(M):
        p1, p2 = _piece_moments(rows[:, m0:m1], A, C, shift)
        s1 += p1
        s2 += p2
    return A * M, s1, s2


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
