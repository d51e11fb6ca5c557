"""BatchNorm mathematics on (A, C, M) views, with no state and no communication.

Forward (training): statistics from `moments` (local, or summed over ranks by the caller), then
    y = (x - mean) * invstd * weight + bias.
Backward, with N the (global) count, g = sum(dy), h = sum(dy * (x - mean)) (global sums):
    dx = weight * invstd * (dy - g/N - (x - mean) * h * invstd^2 / N)
    dweight = h * invstd (local), dbias = sum(dy) (local).

Accuracy at large means: `x - mean` is formed as `(x - hi) - lo` where `hi` is the mean rounded to
the input's dtype and `lo = mean - hi` (float64). `x - hi` is exact when x and hi are within a factor
of two (Sterbenz), so float32 data with mean 1000 and std 0.01 normalizes to float32 rounding, where
folding into `x * scale + shift` with a huge shift loses about 1e-3. The `lo` term joins the per-channel
constant, so the elementwise pass is still one subtract, one multiply and one add.
"""
from __future__ import annotations

import numpy as np

from .moments import block_ranges

__all__ = ["as_acm", "compute_dtype", "normalize", "backward_reduce", "backward_elemt",
           "eval_backward"]

_F16 = np.dtype(np.float16)


def as_acm(x: np.ndarray) -> np.ndarray:
    """View (N, C, *) as (N, C, M); copies only when the input's layout requires it."""
    n, c = x.shape[:2]
    m = 1
    for s in x.shape[2:]:
        m *= s
    return x.reshape(n, c, m)


def compute_dtype(dtype: np.dtype) -> np.dtype:
    """Elementwise passes run in float32 for float16 input (then cast), else in the input dtype."""
    return np.dtype(np.float32) if np.dtype(dtype) == _F16 else np.dtype(dtype)


def _elemt(out3: np.ndarray, x3: np.ndarray, hi: np.ndarray, a: np.ndarray, c: np.ndarray,
           dy3: np.ndarray | None = None, k: np.ndarray | None = None) -> None:
    """out = (x - hi) * a + c [+ dy * k], per channel constants, block by block in cache."""
    A, C, M = x3.shape
    wd = compute_dtype(x3.dtype)
    hi = hi.astype(wd)[:, None]
    a = a.astype(wd)[:, None]
    c = c.astype(wd)[:, None]
    if k is not None:
        k = k.astype(wd)[:, None]
    direct = out3.dtype == wd and x3.dtype == wd
    tmp = None
    for a0, a1, c0, c1, m0, m1 in block_ranges(A, C, M, 1 << 16):
        sl = (slice(a0, a1), slice(c0, c1), slice(m0, m1))
        xs = x3[sl]
        o = out3[sl] if direct else np.empty(xs.shape, wd)
        np.subtract(xs, hi[c0:c1], out=o, dtype=wd)
        o *= a[c0:c1]
        o += c[c0:c1]
        if dy3 is not None:
            if tmp is None or tmp.shape != o.shape:
                tmp = np.empty(o.shape, wd)
            np.multiply(dy3[sl], k[c0:c1], out=tmp, dtype=wd)
            o += tmp
        if not direct:
            out3[sl] = o


def _split(mean: np.ndarray, dtype: np.dtype) -> tuple[np.ndarray, np.ndarray]:
    hi = mean.astype(compute_dtype(dtype))
    return hi, mean - hi.astype(np.float64)


def normalize(x3: np.ndarray, mean: np.ndarray, invstd: np.ndarray, weight: np.ndarray | None,
              bias: np.ndarray | None, out3: np.ndarray | None = None) -> np.ndarray:
    """y = (x - mean) * invstd * weight + bias for x3 (A, C, M); statistics float64 (C,)."""
    if out3 is None:
        out3 = np.empty(x3.shape, x3.dtype)
    scale = invstd if weight is None else invstd * weight
    hi, lo = _split(mean, x3.dtype)
    shift = -lo * scale
    if bias is not None:
        shift = shift + bias
    _elemt(out3, x3, hi, scale, shift)
    return out3


def backward_reduce(dy3: np.ndarray, x3: np.ndarray, mean: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(sum(dy), sum(dy * (x - mean))) per channel, float64 (C,)."""
    A, C, M = x3.shape
    g = np.zeros(C)
    h = np.zeros(C)
    if A * M == 0:
        return g, h
    for a0, a1, c0, c1, m0, m1 in block_ranges(A, C, M):
        sl = (slice(a0, a1), slice(c0, c1), slice(m0, m1))
        d = dy3[sl].astype(np.float64)
        xc = x3[sl].astype(np.float64)
        xc -= mean[c0:c1, None]
        g[c0:c1] += d.sum(axis=(0, 2))
        h[c0:c1] += np.einsum("acm,acm->c", d, xc)
    return g, h


def backward_elemt(dy3: np.ndarray, x3: np.ndarray, mean: np.ndarray, invstd: np.ndarray,
                   weight: np.ndarray | None, sum_dy: np.ndarray, sum_dy_xmu: np.ndarray,
                   count: int | float, out3: np.ndarray | None = None) -> np.ndarray:
    """Input gradient of training-mode BatchNorm from the (global) sums and count."""
    if out3 is None:
        out3 = np.empty(x3.shape, x3.dtype)
    k = invstd if weight is None else invstd * weight
    e = sum_dy_xmu * invstd * invstd / count
    hi, lo = _split(mean, x3.dtype)
    # dx = k*dy - k*e*(x - hi) + (k*e*lo - k*sum_dy/count)
    _elemt(out3, x3, hi, -k * e, k * e * lo - k * sum_dy / count, dy3=dy3, k=k)
    return out3


def eval_backward(dy3: np.ndarray, invstd: np.ndarray, weight: np.ndarray | None) -> np.ndarray:
    """Input gradient when the statistics are constants (eval with running stats): dy * w * invstd."""
    k = invstd if weight is None else invstd * weight
    wd = compute_dtype(dy3.dtype)
    return (dy3 * k.astype(wd)[:, None]).astype(dy3.dtype, copy=False)
