"""BatchNorm mathematics on (A, C, M) views, with no state and no communication.

Forward (training): statistics from `moments` (local, or summed over ranks by the caller), then
    y = (x - mean) * invstd * weight + bias.
Backward, with N the (global) count, g = sum(dy), h = sum(dy * (x - mean)) (global sums):
    dx = weight * invstd * (dy - g/N - (x - mean) * h * invstd^2 / N)
    dweight = h * invstd (local), dbias = g (local).

Accuracy at large means: folding y = x * scale + (bias - mean * scale) rounds x * scale, which is
as large as mean/std, so float32 data with mean 1000 and std 0.01 would lose about 1e-3. Here the
mean is split into hi (rounded to the working dtype) and lo = mean - hi: `x - hi` is exact when x and
hi are within a factor of two (Sterbenz), and lo joins the per-channel constant. When |mean| is
small against the spread (|hi * scale| <= FOLD_LIMIT) the fold is as exact, and one pass cheaper.

All passes run over blocks of rows of M contiguous values that stay in cache (see `moments`).
"""
from __future__ import annotations

import numpy as np

from .moments import BLOCK_ELEMS, MIN_ROW, row_blocks, rows_view, work_dtype

__all__ = ["as_acm", "normalize", "backward_reduce", "backward_elemt", "eval_backward"]

#: fold (x - hi) * a + c into x * a + (c - hi * a) when |hi * a| is at most this (in units of the
#: output's scale): the extra rounding is then below FOLD_LIMIT * eps of the working dtype
FOLD_LIMIT = 4.0


def as_acm(x: np.ndarray) -> np.ndarray:
    """View (N, C, *) as (N, C, M); copies only when the input's layout requires it."""
    n, c = x.shape[:2]
    m = 1
    for s in x.shape[2:]:
        m *= s
    return x.reshape(n, c, m)


def _split(mean: np.ndarray, wd: np.dtype) -> tuple[np.ndarray, np.ndarray]:
    hi = mean.astype(wd)
    return hi, mean - hi.astype(np.float64)


def _per_row(v: np.ndarray, A: int, wd: np.dtype) -> np.ndarray:
    """Per-channel constants (C,) repeated for the A*C rows, as a (A*C, 1) column."""
    return np.tile(v.astype(wd), A)[:, None]


def _foldable(hi: np.ndarray, invstd: np.ndarray) -> bool:
    """Folding costs FOLD_LIMIT*eps of the output's scale at most when |mean| <= FOLD_LIMIT * std
    (for the input gradient too: |h/N| <= std * rms(dy) bounds the x term by the same ratio)."""
    with np.errstate(invalid="ignore", over="ignore"):
        return bool(np.all(np.abs(hi) * invstd <= FOLD_LIMIT))


def _affine(out3: np.ndarray, x3: np.ndarray, hi: np.ndarray, a: np.ndarray, c: np.ndarray,
            fold: bool, dy3: np.ndarray | None = None, k: np.ndarray | None = None) -> None:
    """out = (x - hi) * a + c [+ dy * k] with per-channel float64 constants (C,); `fold` computes
    x * a + (c - hi * a) instead (one pass less)."""
    A, C, M = x3.shape
    if A * C * M == 0:
        return
    wd = work_dtype(x3.dtype)
    if fold:
        c = c - hi.astype(np.float64) * a
    if M < MIN_ROW:  # short rows: whole-array broadcasting in float64-accurate constants
        sh = (1, C, 1)
        x = x3.astype(wd, copy=False)
        o = (x - hi.astype(wd).reshape(sh)) if not fold else x
        o = o * a.astype(wd).reshape(sh) + c.astype(wd).reshape(sh)
        if dy3 is not None:
            o = o + dy3.astype(wd, copy=False) * k.astype(wd).reshape(sh)
        out3[...] = o
        return
    rows, orows = rows_view(x3), rows_view(out3)
    dyrows = rows_view(dy3) if dy3 is not None else None
    H, Ar, Cr = _per_row(hi, A, wd), _per_row(a, A, wd), _per_row(c, A, wd)
    Kr = _per_row(k, A, wd) if k is not None else None
    direct = orows.dtype == wd
    tmp = None
    for r0, r1 in row_blocks(A * C, M):
        xs = rows[r0:r1]
        o = orows[r0:r1] if direct else np.empty(xs.shape, wd)
        if fold:
            np.multiply(xs, Ar[r0:r1], out=o, dtype=wd)
        else:
            np.subtract(xs, H[r0:r1], out=o, dtype=wd)
            o *= Ar[r0:r1]
        o += Cr[r0:r1]
        if dyrows is not None:
            if tmp is None or tmp.shape != o.shape:
                tmp = np.empty(o.shape, wd)
            np.multiply(dyrows[r0:r1], Kr[r0:r1], out=tmp, dtype=wd)
            o += tmp
        if not direct:
            orows[r0:r1] = o


def normalize(x3: np.ndarray, mean: np.ndarray, invstd: np.ndarray, weight: np.ndarray | None,
              bias: np.ndarray | None, out3: np.ndarray | None = None) -> np.ndarray:
    """y = (x - mean) * invstd * weight + bias for x3 (A, C, M); statistics float64 (C,)."""
    if out3 is None:
        out3 = np.empty(x3.shape, x3.dtype)
    scale = invstd if weight is None else invstd * weight
    hi, lo = _split(mean, work_dtype(x3.dtype))
    shift = -lo * scale
    if bias is not None:
        shift = shift + bias
    hi = hi.astype(np.float64)
    _affine(out3, x3, hi, scale, shift, _foldable(hi, invstd))
    return out3


def backward_reduce(dy3: np.ndarray, x3: np.ndarray, mean: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(sum(dy), sum(dy * (x - mean))) per channel, float64 (C,)."""
    A, C, M = x3.shape
    if A * M == 0 or C == 0:
        return np.zeros(C), np.zeros(C)
    wd = work_dtype(x3.dtype)
    hi, lo = _split(mean, wd)
    if M < MIN_ROW:
        d = dy3.astype(np.float64)
        xc = x3.astype(np.float64) - mean[None, :, None]
        return d.sum(axis=(0, 2)), np.einsum("acm,acm->c", d, xc)
    rows, dyrows = rows_view(x3), rows_view(dy3)
    H = _per_row(hi, A, wd)
    g = np.empty(A * C)
    e = np.empty(A * C)
    tmp = np.empty((max(1, BLOCK_ELEMS // M), M), wd)
    for r0, r1 in row_blocks(A * C, M):
        t = tmp[:r1 - r0]
        np.subtract(rows[r0:r1], H[r0:r1], out=t, dtype=wd)
        d = dyrows[r0:r1]
        g[r0:r1] = np.add.reduce(d, axis=1, dtype=wd)
        if d.dtype != wd:
            d = d.astype(wd)
        e[r0:r1] = np.einsum("ij,ij->i", d, t)
    g = g.reshape(A, C).sum(axis=0)
    h = e.reshape(A, C).sum(axis=0) - lo * g  # x - mean = (x - hi) - lo
    return g, h


def backward_elemt(dy3: np.ndarray, x3: np.ndarray, mean: np.ndarray, invstd: np.ndarray,
                   weight: np.ndarray | None, sum_dy: np.ndarray, sum_dy_xmu: np.ndarray,
                   count: int | float, out3: np.ndarray | None = None) -> np.ndarray:
    """Input gradient of training-mode BatchNorm from the (global) sums and count."""
    if out3 is None:
        out3 = np.empty(x3.shape, x3.dtype)
    k = invstd if weight is None else invstd * weight
    e = sum_dy_xmu * invstd * invstd / count
    hi, lo = _split(mean, work_dtype(x3.dtype))
    # dx = k*dy - k*e*(x - hi) + (k*e*lo - k*sum_dy/count)
    hi = hi.astype(np.float64)
    _affine(out3, x3, hi, -k * e, k * e * lo - k * sum_dy / count, _foldable(hi, invstd), dy3, k)
    return out3


def eval_backward(dy3: np.ndarray, invstd: np.ndarray, weight: np.ndarray | None) -> np.ndarray:
    """Input gradient when the statistics are constants (eval with running stats): dy * w * invstd."""
    k = invstd if weight is None else invstd * weight
    wd = work_dtype(dy3.dtype)
    return (dy3 * k.astype(wd)[:, None]).astype(dy3.dtype, copy=False)
