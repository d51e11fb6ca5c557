"""Per-channel statistics of a (A, C, M) array, accumulated in float64 about a shift.

Every normalization in syncnorm reduces a view `x3` of shape (A, C, M) over axes 0 and 2 and keeps
one statistic per channel C: BatchNorm views (N, C, *) as (N, C, prod(*)); LayerNorm, GroupNorm and
InstanceNorm view their rows as (1, rows, row_length).

The result is the *shifted sums* (count, S1, S2) with S1 = sum(x - K), S2 = sum((x - K)^2) for a
per-channel shift K. Shifted sums add across blocks and across ranks (one Allreduce), and the
variance S2/n - (S1/n)^2 only cancels digits in proportion to ((mean - K) / std)^2, so a K near the
mean (the running mean, the previous step's mean) keeps the result exact whatever the mean's size.
Within a cache-sized block the sums are formed from the block's own two-pass mean and centred sum of
squares, so even K = 0 loses nothing inside a block.
"""
from __future__ import annotations

import numpy as np

__all__ = ["moments", "mean_var", "poorly_shifted", "block_ranges", "BLOCK_ELEMS"]

#: (mean - shift)^2 / var above which float64 shifted sums may lose more than ~1e-8 of the variance
RESHIFT_RATIO = 1e8

#: elements per block (float64 scratch of this size stays in the L2 cache)
BLOCK_ELEMS = 1 << 15


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


def moments(x3: np.ndarray, shift: np.ndarray | None = None) -> tuple[int, np.ndarray, np.ndarray]:
    """Shifted sums of `x3` (A, C, M) per channel.

    Returns `(n, S1, S2)`: n = A*M values per channel; S1, S2 float64 arrays of shape (C,).
    `shift` (C,) float64, default zeros.
    """
    A, C, M = x3.shape
    K = np.zeros(C) if shift is None else np.asarray(shift, dtype=np.float64)
    s1 = np.zeros(C)
    s2 = np.zeros(C)
    if A * M == 0 or C == 0:
        return A * M, s1, s2
    for a0, a1, c0, c1, m0, m1 in block_ranges(A, C, M):
        b = x3[a0:a1, c0:c1, m0:m1].astype(np.float64)
        n = b.shape[0] * b.shape[2]
        mb = b.sum(axis=(0, 2)) / n
        b -= mb[None, :, None]
        q = np.einsum("acm,acm->c", b, b)
        d = mb - K[c0:c1]
        s1[c0:c1] += n * d
        s2[c0:c1] += q + n * d * d
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
