"""Per-sample normalizations (InstanceNorm, GroupNorm, LayerNorm) as one kernel over rows.

Statistics: each of these layers normalizes the rows of a contiguous (R, M) view of its input,
    InstanceNorm  (N, C, *S)            rows (n, c),  M = prod(S)
    GroupNorm     (N, C, *S), G groups  rows (n, g),  M = C/G * prod(S)
    LayerNorm     (*B, *normalized)     rows b,       M = prod(normalized)
and `row_stats` gets the rows' mean and biased variance from the statistics step
(`stats.group_stats`, local) on the (1, R, M) view
(shifted by each row's first value, so the float64 combination cancels at most a factor M).

Elementwise passes run in the working dtype (float32 for float16 input) over cache-sized blocks,
with the large-mean split of `elementwise` (x - mean = (x - hi) - lo, hi the mean rounded to the working
dtype; or the fold x * a - mean * a when |mean| <= FOLD_LIMIT * std). Two layouts:

* per-channel parameters (InstanceNorm, GroupNorm): weight and bias are constant over the
  positions, so with the per-(n, g) statistics repeated for the channels of each group the forward
  is `batch_norm.normalize` on the (1, N*C, S) view. Backward: the per-(n, c) sums of dy and
  dy * (x - mean) from `batch_norm.backward_reduce` (two BLAS products per block), then
  dx = k*dy + (x - mean)*a + c with `elementwise.affine` (k per channel, a and c per group).
* per-element parameters (LayerNorm): weight and bias vary along the row; `element_forward` and
  `element_backward` run over blocks of whole rows, or of pieces of a few long rows, with BLAS
  products for the row and column sums.

Backward, for one row with M values, xhat = (x - mean) * invstd, gy = dy * weight:
    dx = invstd * (gy - sum(gy)/M - xhat * sum(gy * xhat)/M)
    dweight = sum over rows (and positions) of dy * xhat,   dbias = sum of dy.
"""
from __future__ import annotations

import numpy as np

from . import engine
from .batch_norm import backward_reduce, eval_backward, normalize
from .blocks import ELEM_BLOCK, work_dtype
from .elementwise import affine, foldable, split_mean, unbuffered
from .stats import group_stats

__all__ = ["row_stats", "channel_step", "channel_forward", "channel_backward", "element_step",
           "element_forward", "element_backward", "elem_blocks"]

#: rows per block when a row is longer than a block (few inner loops per numpy call)
LONG_ROW_BLOCK_ROWS = 8
#: column sums are kept in the working dtype over at most this many blocks, then added in float64
FLUSH_BLOCKS = 8


def row_stats(rows3: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and biased variance (float64, shape (R,)) of each row of `rows3` = (1, R, M), M > 0.

    The shift of each row is its first value: a member of the row lies within sqrt(M) standard
    deviations of the mean, so the float64 shifted sums cancel at most a factor M (the re-sum
    about the mean for a poorly shifted row can only trigger for rows of more than 1e8 values).
    """
    _, mean, var = group_stats(rows3, rows3[0, :, 0].astype(np.float64))
    return mean, var


def _row_invstd(rows3: np.ndarray, eps: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(mean, var, invstd) float64 (R,) of the rows of rows3 (1, R, M); zeros for no values."""
    R = rows3.shape[1]
    mean, var = row_stats(rows3) if rows3.size else (np.zeros(R), np.zeros(R))
    return mean, var, 1.0 / np.sqrt(var + eps)


# --------------------------------------------------------------------- per-channel parameters
def channel_step(x3: np.ndarray, groups: int, eps: float, weight: np.ndarray | None,
                 bias: np.ndarray | None
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """GroupNorm forward with batch statistics (InstanceNorm: groups = C) of x3 (N, C, S)
    contiguous: (y in x3's dtype, mean, var, invstd float64 (N*groups,)). The compiled engine
    fuses the statistics and the normalize pass per row while it is in cache."""
    N, C, S = x3.shape
    ck = engine.kernels()
    if ck is not None and x3.size:
        got = ck.norms.channel_step(x3, groups, eps, weight, bias)
        if got is not None:  # else a row's first value was no shift: the statistics step
            return got
    mean, var, invstd = _row_invstd(x3.reshape(1, N * groups, (C // groups) * S), eps)
    return channel_forward(x3, groups, mean, invstd, weight, bias), mean, var, invstd


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
    if N * C * S == 0:
        return np.empty(x3.shape, x3.dtype), np.zeros(C), np.zeros(C)
    ck = engine.kernels()
    if ck is not None and batch_stats:
        return ck.norms.channel_backward(dy3, x3, groups, mean, invstd, weight)
    rows, dyrows = x3.reshape(N * C, S), dy3.reshape(N * C, S)
    mean_r = np.repeat(mean, cg)
    inv_r = np.repeat(invstd, cg)
    # per (n, c): sum dy, sum dy * (x - mean)
    t1, t2 = backward_reduce(dyrows[None], rows[None], mean_r, inv_r)
    dbias = t1.reshape(N, C).sum(axis=0)
    dweight = (t2 * inv_r).reshape(N, C).sum(axis=0)
    w_r = np.ones(N * C) if weight is None else _per_channel_rows(weight, N)
    k = inv_r * w_r
    if not batch_stats:
        return eval_backward(dyrows[None], k, None).reshape(x3.shape), dweight, dbias
    sg = (w_r * t1).reshape(N * groups, cg).sum(axis=1)  # sum of gy per group
    hg = (w_r * t2).reshape(N * groups, cg).sum(axis=1)  # sum of gy * (x - mean) per group
    e = invstd ** 3 * hg / M
    f = invstd * sg / M
    # dx = k*dy - e*(x - mean) - f = k*dy - e*(x - hi) + (e*lo - f)
    dx = np.empty(x3.shape, x3.dtype)
    hi, lo = split_mean(mean_r, work_dtype(x3.dtype))
    hi = hi.astype(np.float64)
    e, f = np.repeat(e, cg), np.repeat(f, cg)
    affine(dx.reshape(1, N * C, S), rows[None], hi, -e, e * lo - f, foldable(hi, inv_r),
            dyrows[None], k)
    return dx, dweight, dbias


# --------------------------------------------------------------------- per-element parameters
def _rows_per_block(R: int, D: int, block: int) -> int:
    return max(1, block // max(1, D)) if D <= block else max(1, min(R, LONG_ROW_BLOCK_ROWS))


def _inner(R: int, D: int) -> int:
    """Inner-loop length of the operations on `elem_blocks` blocks (for `_unbuffered`)."""
    return max(1, D) if D <= ELEM_BLOCK else max(1, ELEM_BLOCK // _rows_per_block(R, D, ELEM_BLOCK))


def elem_blocks(R: int, D: int, block: int | None = None):
    """Yield (r0, r1, d0, d1) blocks of about `block` elements of an (R, D) array: whole rows when
    a row is shorter than a block, else pieces of up to LONG_ROW_BLOCK_ROWS rows."""
    block = block or ELEM_BLOCK
    rstep = _rows_per_block(R, D, block)
    dstep = max(1, D) if D <= block else max(1, block // rstep)
    for d0 in range(0, D, dstep):
        for r0 in range(0, R, rstep):
            yield r0, min(R, r0 + rstep), d0, min(D, d0 + dstep)


def _col(v: np.ndarray, wd: np.dtype) -> np.ndarray:
    return v.astype(wd)[:, None]


def element_step(x2: np.ndarray, eps: float, weight: np.ndarray | None, bias: np.ndarray | None
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """LayerNorm forward of x2 (R, D) contiguous: (y, mean, var, invstd float64 (R,)); fused per
    row with the compiled engine."""
    ck = engine.kernels()
    if ck is not None and x2.size:
        got = ck.norms.element_step(x2, eps, weight, bias)
        if got is not None:
            return got
    mean, var, invstd = _row_invstd(x2[None], eps)
    return element_forward(x2, mean, invstd, weight, bias), mean, var, invstd


def element_forward(x2: np.ndarray, mean: np.ndarray, invstd: np.ndarray,
                    weight: np.ndarray | None, bias: np.ndarray | None) -> np.ndarray:
    """y = (x - mean[r]) * invstd[r] * weight[d] + bias[d] for x2 (R, D); returns x2's dtype.

    One pass over blocks in cache: (x - hi) * invstd + (-lo * invstd) (or the fold
    x * invstd - mean * invstd when |mean| <= FOLD_LIMIT * std), then * weight, + bias.
    """
    R, D = x2.shape
    y = np.empty(x2.shape, x2.dtype)
    if y.size == 0:
        return y
    wd = work_dtype(x2.dtype)
    hi, lo = split_mean(mean, wd)
    fold = foldable(hi.astype(np.float64), invstd)
    a = _col(invstd, wd)
    c = _col((-mean if fold else -lo) * invstd, wd)
    hic = hi[:, None]
    w = None if weight is None else np.asarray(weight).astype(wd)
    b = None if bias is None else np.asarray(bias).astype(wd)
    direct = y.dtype == wd
    buf = None if direct else np.empty(min(R * D, ELEM_BLOCK), wd)
    with unbuffered(_inner(R, D) if direct else None):
        for r0, r1, d0, d1 in elem_blocks(R, D):
            xs = x2[r0:r1, d0:d1]
            o = y[r0:r1, d0:d1] if direct else buf[:xs.size].reshape(xs.shape)
            if fold:
                np.multiply(xs, a[r0:r1], out=o, dtype=wd)
            else:
                np.subtract(xs, hic[r0:r1], out=o, dtype=wd)
                o *= a[r0:r1]
            o += c[r0:r1]
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

    Pass 1, BLAS products per block in the working dtype (float64 across every FLUSH_BLOCKS
    blocks), with
    t = dy * (x - m): per row g = dy @ weight, h = t @ weight; per column
    dweight = invstd @ t - ((mean - m) * invstd) @ dy and dbias = ones @ dy. m is the rounded mean
    hi (exact), or 0 when |mean| <= FOLD_LIMIT * std (one pass less; cancels a few units at most).
    Pass 2: dx = invstd * (gy + (x - mean) * a + c), gy = dy * weight, a = -invstd^2 * h' / D,
    c = -g / D with h' = sum(gy * (x - mean)).
    """
    R, D = x2.shape
    if R * D == 0:
        return np.empty(x2.shape, x2.dtype), np.zeros(D), np.zeros(D)
    ck = engine.kernels()
    if ck is not None:
        return ck.norms.element_backward(dy2, x2, mean, invstd, weight)
    dx = np.empty(x2.shape, x2.dtype)
    wd = work_dtype(x2.dtype)
    hi, lo = split_mean(mean, wd)
    fold = foldable(hi.astype(np.float64), invstd)
    centre = np.zeros(R) if fold else hi.astype(np.float64)  # m
    hic = hi[:, None]
    w = None if weight is None else np.asarray(weight).astype(wd)
    g = np.zeros(R)
    h = np.zeros(R)
    dweight = np.zeros(D)
    dbias = np.zeros(D)
    inv_w = invstd.astype(wd)
    # rows of [ones; (mean - m) * invstd] for the column sums of dy
    v3 = np.stack([np.ones(R), (mean - centre) * invstd]).astype(wd)
    rb = _rows_per_block(R, D, ELEM_BLOCK)
    n = min(R * D, ELEM_BLOCK if D <= ELEM_BLOCK else rb * max(1, ELEM_BLOCK // rb))
    buf1, buf2 = np.empty(n, wd), np.empty(n, wd)
    dc = min(D, n)
    cs = np.empty((3, dc), wd)  # this block's [invstd @ t; ones @ dy; v @ dy]
    acc = np.zeros((3, dc), wd)  # the same summed over a few blocks of one column range
    span, pending = (0, 0), 0

    def flush() -> None:
        a0, a1 = span
        dweight[a0:a1] += acc[0, :a1 - a0]
        dweight[a0:a1] -= acc[2, :a1 - a0]
        dbias[a0:a1] += acc[1, :a1 - a0]
        acc[...] = 0

    for r0, r1, d0, d1 in elem_blocks(R, D):
        if (d0, d1) != span or pending == FLUSH_BLOCKS:
            flush()
            span, pending = (d0, d1), 0
        xs, ds = x2[r0:r1, d0:d1], dy2[r0:r1, d0:d1]
        t = buf1[:xs.size].reshape(xs.shape)
        if ds.dtype != wd:
            ds = np.multiply(ds, 1, out=buf2[:ds.size].reshape(ds.shape), dtype=wd)
        if fold:
            np.multiply(xs, ds, out=t, dtype=wd)
        else:
            np.subtract(xs, hic[r0:r1], out=t, dtype=wd)
            t *= ds
        if w is None:
            g[r0:r1] += ds.sum(axis=1)
            h[r0:r1] += t.sum(axis=1)
        else:
            g[r0:r1] += ds @ w[d0:d1]
            h[r0:r1] += t @ w[d0:d1]
        c = cs[:, :d1 - d0]
        np.matmul(inv_w[r0:r1], t, out=c[0])
        np.matmul(v3[:, r0:r1], ds, out=c[1:])
        acc[:, :d1 - d0] += c
        pending += 1
    flush()
    h -= (mean - centre) * g  # sum(gy * (x - mean))
    # dx = invstd * (gy + (x - mean) * a + c): x - mean = (x - hi) - lo, or folded x * a - mean * a
    a64 = -invstd ** 2 * h / D
    c64 = -g / D - (mean if fold else lo) * a64
    a, c, k = _col(a64, wd), _col(c64, wd), _col(invstd, wd)
    direct = dx.dtype == wd
    with unbuffered(_inner(R, D) if direct and dy2.dtype == wd else None):
        for r0, r1, d0, d1 in elem_blocks(R, D):
            xs, ds = x2[r0:r1, d0:d1], dy2[r0:r1, d0:d1]
            o = dx[r0:r1, d0:d1] if direct else buf1[:xs.size].reshape(xs.shape)
            t = buf2[:xs.size].reshape(xs.shape)
            if w is None:
                np.multiply(ds, 1, out=o, dtype=wd)
            else:
                np.multiply(ds, w[d0:d1], out=o, dtype=wd)
            if fold:
                np.multiply(xs, a[r0:r1], out=t, dtype=wd)
            else:
                np.subtract(xs, hic[r0:r1], out=t, dtype=wd)
                t *= a[r0:r1]
            o += t
            o += c[r0:r1]
            o *= k[r0:r1]
            if not direct:
                dx[r0:r1, d0:d1] = o
    return dx, dweight, dbias
