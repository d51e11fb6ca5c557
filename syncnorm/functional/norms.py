"""Per-sample normalizations (InstanceNorm, GroupNorm, LayerNorm) as one kernel over rows.

Statistics: each of these layers normalizes the rows of a contiguous (R, M) view of its input,
    InstanceNorm  (N, C, *S)            rows (n, c),  M = prod(S)
    GroupNorm     (N, C, *S), G groups  rows (n, g),  M = C/G * prod(S)
    LayerNorm     (*B, *normalized)     rows b,       M = prod(normalized)
and `row_stats` gets the rows' mean and biased variance from `moments.moments` on the (1, R, M) view
(shifted by each row's first value, so the float64 combination cancels nothing; a far outlier as
first value is caught by `moments.poorly_shifted` and the rows are summed again about their mean).

Elementwise passes, in the working dtype (float32 for float16 input), two layouts:

* per-channel parameters (InstanceNorm, GroupNorm): the weight and bias are constant over the
  spatial positions, so with the per-(n, g) statistics repeated for the channels of each group the
  whole layer is BatchNorm's per-row arithmetic on the (1, N*C, S) view: forward is
  `batch_norm.normalize`, the backward sums are `batch_norm.backward_reduce`, and the input gradient
  is the per-row affine `batch_norm._affine` (dx = k*dy + (x - hi)*a + c), all with the
  large-mean-accurate (x - hi) - lo split.
* per-element parameters (LayerNorm): the weight and bias vary along the row; blocks of rows (or
  of one long row) are normalized with `batch_norm.normalize` and the affine is applied while the
  block is in cache.

Backward, for one row with M values, xhat = (x - mean) * invstd, gy = dy * weight:
    dx = invstd * (gy - sum(gy)/M - xhat * sum(gy * xhat)/M)
    dweight = sum over rows (and positions) of dy * xhat,   dbias = sum of dy.
"""
from __future__ import annotations

import numpy as np

from .batch_norm import _affine, _foldable, _split, backward_reduce, normalize
from .moments import BLOCK_ELEMS, mean_var, moments, poorly_shifted, work_dtype

__all__ = ["row_stats", "channel_forward", "channel_backward", "element_forward",
           "element_backward", "elem_blocks"]


def row_stats(rows3: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and biased variance (float64, shape (R,)) of each row of `rows3` = (1, R, M), M > 0."""
    R, M = rows3.shape[1], rows3.shape[2]
    shift = rows3[0, :, 0].astype(np.float64) if R and M else np.zeros(R)
    n, s1, s2 = moments(rows3, shift)
    if poorly_shifted(n, s1, s2):
        shift = shift + s1 / n
        n, s1, s2 = moments(rows3, shift)
    return mean_var(n, s1, s2, shift)


# --------------------------------------------------------------------- per-channel parameters
def _per_channel_rows(v: np.ndarray | None, N: int) -> np.ndarray | None:
    return None if v is None else np.tile(np.asarray(v, dtype=np.float64), N)


def channel_forward(x3: np.ndarray, groups: int, mean: np.ndarray, invstd: np.ndarray,
                    weight: np.ndarray | None, bias: np.ndarray | None) -> np.ndarray:
    """y = (x - mean) * invstd * weight[c] + bias[c] for x3 (N, C, S) contiguous.

    `mean`, `invstd`: float64 (N*groups,), one per (n, g) group of C/groups channels; `weight`,
    `bias`: (C,) or None. Returns y (N, C, S) in x3's dtype.
    """
    N, C, S = x3.shape
    cg = C // groups
    y = np.empty(x3.shape, x3.dtype)
    if y.size == 0:
        return y
    normalize(x3.reshape(1, N * C, S), np.repeat(mean, cg), np.repeat(invstd, cg),
              _per_channel_rows(weight, N), _per_channel_rows(bias, N), out3=y.reshape(1, N * C, S))
    return y


def channel_backward(dy3: np.ndarray, x3: np.ndarray, groups: int, mean: np.ndarray,
                     invstd: np.ndarray, weight: np.ndarray | None, batch_stats: bool = True
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Gradients of `channel_forward`: (dx (N, C, S) in x3's dtype, dweight (C,), dbias (C,)).

    `batch_stats`: the statistics were computed from x (training); False when they were constants
    (InstanceNorm in eval mode with running statistics), where dx = dy * invstd * weight.
    dweight and dbias are float64 sums over the batch and the positions.
    """
    N, C, S = x3.shape
    cg = C // groups
    M = cg * S
    dx = np.empty(x3.shape, x3.dtype)
    if N * C * S == 0:
        return dx, np.zeros(C), np.zeros(C)
    rows, dyrows, dxrows = (a.reshape(1, N * C, S) for a in (x3, dy3, dx))
    mean_r = np.repeat(mean, cg)
    inv_r = np.repeat(invstd, cg)
    t1, t2 = backward_reduce(dyrows, rows, mean_r)  # per (n, c): sum dy, sum dy * (x - mean)
    dbias = t1.reshape(N, C).sum(axis=0)
    dweight = (t2 * inv_r).reshape(N, C).sum(axis=0)
    w_r = np.ones(N * C) if weight is None else _per_channel_rows(weight, N)
    k = inv_r * w_r
    hi, lo = _split(mean_r, work_dtype(x3.dtype))
    hi = hi.astype(np.float64)
    if batch_stats:
        sg = (w_r * t1).reshape(N * groups, cg).sum(axis=1)  # sum of gy per group
        hg = (w_r * t2).reshape(N * groups, cg).sum(axis=1)  # sum of gy * (x - mean) per group
        e = np.repeat(invstd ** 3 * hg / M, cg)
        f = np.repeat(invstd * sg / M, cg)
        # dx = k*dy - e*(x - mean) - f = k*dy - e*(x - hi) + (e*lo - f)
        a, c = -e, e * lo - f
    else:
        a, c = np.zeros(N * C), np.zeros(N * C)
    _affine(dxrows, rows, hi, a, c, batch_stats and _foldable(hi, inv_r), dyrows, k)
    return dx, dweight, dbias


# --------------------------------------------------------------------- per-element parameters
def elem_blocks(R: int, D: int, block: int = BLOCK_ELEMS):
    """Yield (r0, r1, d0, d1) blocks of about `block` elements of an (R, D) array: whole rows when
    a row is shorter than a block, else pieces of one row."""
    if D >= block:
        for r in range(R):
            for d0 in range(0, D, block):
                yield r, r + 1, d0, min(D, d0 + block)
    else:
        step = max(1, block // max(1, D))
        for r0 in range(0, R, step):
            yield r0, min(R, r0 + step), 0, D


def element_forward(x2: np.ndarray, mean: np.ndarray, invstd: np.ndarray,
                    weight: np.ndarray | None, bias: np.ndarray | None) -> np.ndarray:
    """y = (x - mean[r]) * invstd[r] * weight[d] + bias[d] for x2 (R, D); returns x2's dtype."""
    R, D = x2.shape
    y = np.empty(x2.shape, x2.dtype)
    if y.size == 0:
        return y
    if weight is None and bias is None:
        normalize(x2[None], mean, invstd, None, None, out3=y[None])
        return y
    wd = work_dtype(x2.dtype)
    w = None if weight is None else np.asarray(weight).astype(wd)
    b = None if bias is None else np.asarray(bias).astype(wd)
    direct = y.dtype == wd
    for r0, r1, d0, d1 in elem_blocks(R, D):
        o = y[r0:r1, d0:d1] if direct else np.empty((r1 - r0, d1 - d0), wd)
        normalize(x2[None, r0:r1, d0:d1], mean[r0:r1], invstd[r0:r1], None, None, out3=o[None])
        if w is not None:
            o *= w[d0:d1]
        if b is not None:
            o += b[d0:d1]
        if not direct:
            y[r0:r1, d0:d1] = o
    return y


def element_backward(dy2: np.ndarray, x2: np.ndarray, mean: np.ndarray, invstd: np.ndarray,
                     weight: np.ndarray | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Gradients of `element_forward`: (dx (R, D) in x2's dtype, dweight (D,), dbias (D,)).

    Pass 1 (blocks in cache): per row g = sum(gy), h = sum(gy * (x - hi)), and the column sums
    dweight = sum_r invstd[r] * dy * (x - mean[r]), dbias = sum_r dy (BLAS in the working dtype
    within a block, float64 across blocks). Pass 2: dx with `batch_norm._affine`.
    """
    R, D = x2.shape
    dx = np.empty(x2.shape, x2.dtype)
    if R * D == 0:
        return dx, np.zeros(D), np.zeros(D)
    wd = work_dtype(x2.dtype)
    hi, lo = _split(mean, wd)
    hi_w = hi[:, None]
    w = None if weight is None else np.asarray(weight).astype(wd)
    g = np.zeros(R)
    h = np.zeros(R)
    dweight = np.zeros(D)
    dbias = np.zeros(D)
    inv_w = invstd.astype(wd)
    loinv_w = (lo * invstd).astype(wd)
    tmp = np.empty(min(R * D, BLOCK_ELEMS), wd)  # every block of elem_blocks fits
    for r0, r1, d0, d1 in elem_blocks(R, D):
        xs, ds = x2[r0:r1, d0:d1], dy2[r0:r1, d0:d1]
        if ds.dtype != wd:
            ds = ds.astype(wd)
        t = tmp[:(r1 - r0) * (d1 - d0)].reshape(r1 - r0, d1 - d0)
        np.subtract(xs, hi_w[r0:r1], out=t, dtype=wd)
        t *= ds  # dy * (x - hi)
        if w is None:
            g[r0:r1] += ds.sum(axis=1)
            h[r0:r1] += t.sum(axis=1)
        else:
            g[r0:r1] += ds @ w[d0:d1]
            h[r0:r1] += t @ w[d0:d1]
        dweight[d0:d1] += inv_w[r0:r1] @ t
        dweight[d0:d1] -= loinv_w[r0:r1] @ ds
        dbias[d0:d1] += ds.sum(axis=0)
    h -= lo * g  # sum(gy * (x - mean))
    # dx = invstd * (gy - g/D - (x - mean) * invstd^2 * h/D), x - mean = (x - hi) - lo
    e = invstd ** 3 * h / D
    a, c = -e, e * lo - invstd * g / D
    fold = _foldable(hi.astype(np.float64), invstd)
    hi64 = hi.astype(np.float64)
    for r0, r1, d0, d1 in elem_blocks(R, D):
        ds = dy2[r0:r1, d0:d1]
        if w is not None:
            gy = tmp[:(r1 - r0) * (d1 - d0)].reshape(r1 - r0, d1 - d0)
            np.multiply(ds, w[d0:d1], out=gy, dtype=wd)
            ds = gy
        _affine(dx[None, r0:r1, d0:d1], x2[None, r0:r1, d0:d1], hi64[r0:r1], a[r0:r1], c[r0:r1],
                fold, ds[None], invstd[r0:r1])
    return dx, dweight, dbias
