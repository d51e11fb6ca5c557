"""Per-channel affine passes over (A, C, M) views: out = (x - hi) * a + c [+ dy * k].

The forward of every per-channel normalization and the input gradient of BatchNorm, InstanceNorm
and GroupNorm are this one elementwise pass with per-channel float64 constants.

Accuracy at large means: folding y = x * scale + (bias - mean * scale) rounds x * scale, which is
as large as mean/std, so float32 data with mean 1000 and std 0.01 would lose about 1e-3. Here the
mean is split into hi (rounded to the working dtype) and lo = mean - hi (`split_mean`): `x - hi` is
exact when x and hi are within a factor of two (Sterbenz), and lo joins the per-channel constant.
When |mean| is small against the spread (`foldable`) the fold is as exact, and one operation cheaper.

Blocks: tiles of `ct` channels x `m` positions x a few samples, about ELEM_BLOCK values. With four
or more samples and rows shorter than REUSE_MAX_ROW the per-channel constants are expanded once per
tile into (ct, m) arrays that stay in cache for every sample (one long contiguous inner loop per
operation); otherwise they are broadcast as (ct, 1) columns. The ufunc buffer is set to one inner
loop meanwhile (`unbuffered`): numpy >= 2.3 would otherwise copy broadcast constants into its buffers.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import numpy as np

from . import engine
from .blocks import COEF_TILE, ELEM_BLOCK, MIN_ROW, piece_bounds, work_dtype
from .columns import col_affine

__all__ = ["affine", "split_mean", "foldable", "unbuffered", "FOLD_LIMIT"]

_DEFAULT_BUFSIZE = 8192  # numpy's default ufunc buffer, in elements

#: fold (x - hi) * a + c into x * a + (c - hi * a) when |hi * a| is at most this (in units of the
#: output's scale): the extra rounding is then below FOLD_LIMIT * eps of the working dtype
FOLD_LIMIT = 4.0
#: the per-channel constants are expanded into tiles for batches of at least REUSE_MIN samples
#: with rows shorter than REUSE_MAX_ROW (short inner loops cost more than reading the tiles)
REUSE_MIN = 4
REUSE_MAX_ROW = 512


def split_mean(mean: np.ndarray, wd: np.dtype) -> tuple[np.ndarray, np.ndarray]:
    """(hi, lo): the mean rounded to the working dtype `wd`, and the float64 rest mean - hi."""
    hi = mean.astype(wd)
    return hi, mean - hi.astype(np.float64)


def foldable(hi: np.ndarray, invstd: np.ndarray) -> bool:
    """Folding costs FOLD_LIMIT*eps of the output's scale at most when |mean| <= FOLD_LIMIT * std
    (for the input gradient too: |h/N| <= std * rms(dy) bounds the x term by the same ratio)."""
    with np.errstate(invalid="ignore", over="ignore"):
        r = np.abs(hi)
        r *= invstd
    return bool((r <= FOLD_LIMIT).all())


@contextmanager
def unbuffered(inner: int | None) -> Iterator[None]:
    """Set the ufunc buffer size to `inner` (rounded up to 16), the length of the operations' inner
    loops, for the duration (restored on exit; numpy keeps it per thread / context). numpy >= 2.3
    buffers an operand broadcast along the inner loop whenever a buffer holds more than two such
    loops, and cuts inner loops to the buffer size: with the buffer one loop long, neither happens.
    `None` leaves the buffer alone (operands that need a cast are buffered anyway)."""
    if inner is None:
        yield
        return
    old = np.setbufsize(max(16, -(-int(inner) // 16) * 16))
    try:
        yield
    finally:
        np.setbufsize(old)


def tiles(A: int, C: int, M: int, reuse: bool, reverse: bool = False):
    """Yield (c0, c1, m0, m1, astep): column tiles of channels x positions and the number of
    samples per block. Expanded tiles (`reuse`) hold about COEF_TILE values; broadcast ones
    about ELEM_BLOCK. Rows longer than a tile are cut into pieces."""
    width = COEF_TILE if reuse else ELEM_BLOCK
    if M > width:
        cols = [(c, c + 1, m0, m1) for c in range(C) for m0, m1 in piece_bounds(M, width)]
    else:
        ct = max(1, min(C, width // max(1, M)))
        cols = [(c0, min(C, c0 + ct), 0, M) for c0 in range(0, C, ct)]
    for c0, c1, m0, m1 in (reversed(cols) if reverse else cols):
        yield c0, c1, m0, m1, max(1, ELEM_BLOCK // ((c1 - c0) * (m1 - m0)))


def affine(out3: np.ndarray, x3: np.ndarray, hi: np.ndarray, a: np.ndarray, c: np.ndarray,
            fold: bool, dy3: np.ndarray | None = None, k: np.ndarray | None = None,
            reverse: bool = False) -> None:
    """out = (x - hi) * a + c [+ dy * k] with per-channel float64 constants (C,); `fold` computes
    x * a + (c - hi * a) instead (one operation less). Tiles of `tiles`, in reverse order when
    `reverse`."""
    A, C, M = x3.shape
    if A * C * M == 0:
        return
    ck = engine.kernels()
    if ck is not None:  # the compiled engine (one pass, any mean: no fold needed)
        ck.batch_norm.affine(out3, x3, hi, a, c, dy3, k)
        return
    wd = work_dtype(x3.dtype)
    if fold:
        c = c - hi.astype(np.float64) * a
    if M < MIN_ROW:  # short rows: blocks of the (A, C*M) column view
        col_affine(out3, x3, hi, a, c, fold, dy3, k)
        return
    reuse = A >= REUSE_MIN and M < REUSE_MAX_ROW
    direct = out3.dtype == wd
    native = x3.dtype == wd and (dy3 is None or dy3.dtype == wd)
    factored = False
    if dy3 is not None:
        # out = k * (dy + (x - hi) * a/k + c/k): the dy term then costs a plain add, and the scale
        # one multiply at the end (needs k != 0 and out not overlapping dy, which is read second)
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            ak, ck64 = (a / k).astype(wd), (c / k).astype(wd)
        factored = bool(np.isfinite(ak).all() and np.isfinite(ck64).all()
                        and not np.may_share_memory(out3, dy3))
        if factored:
            a, c = ak, ck64
    consts = [a, c] + ([] if fold else [hi]) + ([k] if dy3 is not None else [])
    consts = [np.asarray(v).astype(wd)[:, None] for v in consts]  # (C, 1) columns
    nbuf = ELEM_BLOCK + COEF_TILE  # a block holds at most one tile or ELEM_BLOCK values
    obuf = None if direct else np.empty(nbuf, wd)
    tbuf = np.empty(nbuf, wd) if (dy3 is not None and not factored) else None
    plan = list(tiles(A, C, M, reuse, reverse))
    c0, c1, m0, m1, _ = plan[0]
    inner = (c1 - c0) * (m1 - m0) if reuse else m1 - m0
    # (arrays within one default buffer are never cut or copied: no need to touch the setting)
    with unbuffered(inner if native and A * C * M > _DEFAULT_BUFSIZE else None):
        for c0, c1, m0, m1, astep in plan:
            if reuse:  # (ct, m) tiles of the constants, in cache for every sample
                cs = [np.repeat(v[c0:c1], m1 - m0, axis=1) for v in consts]
            else:
                cs = [v[c0:c1] for v in consts]
            ca, cc = cs[0], cs[1]
            ch = None if fold else cs[2]
            ck = cs[-1] if dy3 is not None else None
            starts = range(0, A, astep)
            for a0 in (reversed(starts) if reverse else starts):
                a1 = min(A, a0 + astep)
                xs = x3[a0:a1, c0:c1, m0:m1]
                size = xs.size
                o = out3[a0:a1, c0:c1, m0:m1] if direct else obuf[:size].reshape(xs.shape)
                # x term first: out may share memory with x
                t = o if (dy3 is None or factored) else tbuf[:size].reshape(xs.shape)
                if fold:
                    np.multiply(xs, ca, out=t, dtype=wd)
                else:
                    np.subtract(xs, ch, out=t, dtype=wd)
                    t *= ca
                if factored:
                    np.add(o, dy3[a0:a1, c0:c1, m0:m1], out=o, dtype=wd)
                    o += cc
                    o *= ck
                else:
                    if dy3 is not None:
                        np.multiply(dy3[a0:a1, c0:c1, m0:m1], ck, out=o, dtype=wd)
                        o += t
                    o += cc
                if not direct:
                    out3[a0:a1, c0:c1, m0:m1] = o
