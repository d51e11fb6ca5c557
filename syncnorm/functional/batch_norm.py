"""BatchNorm mathematics on (A, C, M) views, with no state and no communication.

Forward (training): statistics from `stats.group_stats` (local, or summed over a group), then
    y = (x - mean) * invstd * weight + bias.
Backward, with N the (global) count, g = sum(dy), h = sum(dy * (x - mean)) (global sums):
    dx = weight * invstd * (dy - g/N - (x - mean) * h * invstd^2 / N)
    dweight = h * invstd (local), dbias = g (local).

Passes over memory: forward reads x twice (statistics, normalize) and writes y; backward reads dy
and x twice (`backward_reduce`, `backward_elemt`) and writes dx. Reductions go over blocks of whole
rows with two BLAS calls per block (a row-wise dot, then a matrix-vector product on the block while
it is in cache); the elementwise passes are `elementwise.affine`. `backward_elemt` runs its tiles in
reverse order, so it starts on the data `backward_reduce` read last.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from . import engine
from .blocks import MIN_ROW, REDUCE_BLOCK, piece_bounds, rowdot, work_dtype
from .columns import col_backward_reduce
from .elementwise import affine, foldable, split_mean, unbuffered
from .moments import rows_view
from .stats import Exchange, Mode, StepPlan, plan_stats

__all__ = ["flatten_spatial", "normalize", "backward_reduce", "backward_elemt", "eval_backward",
           "forward", "train_backward"]


def flatten_spatial(x: np.ndarray) -> np.ndarray:
    """x (N, C, *) viewed as (N, C, M), M = prod(*); copies only when the input's layout requires it."""
    n, c = x.shape[:2]
    m = 1
    for s in x.shape[2:]:
        m *= s
    return x.reshape(n, c, m)


def _per_row(v: np.ndarray, A: int, wd: np.dtype) -> np.ndarray:
    """Per-channel constants (C,) repeated for the A*C rows, as a (A*C, 1) column."""
    return np.tile(v.astype(wd), A)[:, None]


def normalize(x3: np.ndarray, mean: np.ndarray, invstd: np.ndarray, weight: np.ndarray | None,
              bias: np.ndarray | None, out3: np.ndarray | None = None) -> np.ndarray:
    """y = (x - mean) * invstd * weight + bias for x3 (A, C, M); statistics float64 (C,)."""
    ck = engine.kernels()
    if ck is not None:
        return ck.batch_norm.normalize(x3, mean, invstd, weight, bias, out3)
    if out3 is None:
        out3 = np.empty(x3.shape, x3.dtype)
    scale = invstd if weight is None else invstd * weight
    hi, lo = split_mean(mean, work_dtype(x3.dtype))
    shift = -lo * scale
    if bias is not None:
        shift = shift + bias
    hi = hi.astype(np.float64)
    affine(out3, x3, hi, scale, shift, foldable(hi, invstd))
    return out3


def backward_reduce(dy3: np.ndarray, x3: np.ndarray, mean: np.ndarray,
                    invstd: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(sum(dy), sum(dy * (x - mean))) per channel, float64 (C,).

    Rows of M values in blocks, two BLAS calls each: a row-wise dot of dy with x - hi (or with x
    itself when `invstd` is given and the mean is foldable, see `_foldable`; the float64 combination
    then subtracts mean * sum(dy)), and dy @ ones on the block in cache. Working dtype within a row
    piece (`moments.ROW_PIECE`), float64 across pieces and rows."""
    A, C, M = x3.shape
    if A * M == 0 or C == 0:
        return np.zeros(C), np.zeros(C)
    ck = engine.kernels()
    if ck is not None:
        return ck.batch_norm.backward_reduce(dy3, x3, mean)
    wd = work_dtype(x3.dtype)
    hi, lo = split_mean(mean, wd)
    if M < MIN_ROW:
        return col_backward_reduce(dy3, x3, hi, lo)
    fold = invstd is not None and foldable(hi.astype(np.float64), invstd)
    rows, dyrows = rows_view(x3), rows_view(dy3)
    R = A * C
    H = None if fold else _per_row(hi, A, wd)
    g = np.zeros(R)
    e = np.zeros(R)
    gp = np.empty(R, wd)
    ep = np.empty(R, wd)
    native = rows.dtype == wd and dyrows.dtype == wd
    for m0, m1 in piece_bounds(M):
        n = m1 - m0
        ones = np.ones(n, wd)
        step = max(1, REDUCE_BLOCK // (2 * n))
        tmp = None if (fold and native) else np.empty((min(R, step), n), wd)
        dtmp = None if dyrows.dtype == wd else np.empty((min(R, step), n), wd)
        with unbuffered(n if native and not fold else None):
            for r0 in range(0, R, step):
                r1 = min(R, r0 + step)
                d = dyrows[r0:r1, m0:m1]
                xs = rows[r0:r1, m0:m1]
                if dtmp is not None:
                    np.copyto(dtmp[:r1 - r0], d, casting="same_kind")
                    d = dtmp[:r1 - r0]
                if not fold:
                    t = tmp[:r1 - r0]
                    np.subtract(xs, H[r0:r1], out=t, dtype=wd)
                    xs = t
                elif xs.dtype != wd:
                    t = tmp[:r1 - r0]
                    np.copyto(t, xs, casting="same_kind")
                    xs = t
                rowdot(d, xs, out=ep[r0:r1])
                np.matmul(d, ones, out=gp[r0:r1])
        g += gp
        e += ep
    g = g.reshape(A, C).sum(axis=0)
    # x - mean = (x - hi) - lo, or x - mean when folded
    h = e.reshape(A, C).sum(axis=0) - (mean if fold else lo) * g
    return g, h


def backward_elemt(dy3: np.ndarray, x3: np.ndarray, mean: np.ndarray, invstd: np.ndarray,
                   weight: np.ndarray | None, sum_dy: np.ndarray, sum_dy_xmu: np.ndarray,
                   count: int | float, out3: np.ndarray | None = None) -> np.ndarray:
    """Input gradient of training-mode BatchNorm from the (global) sums and count."""
    ck = engine.kernels()
    if ck is not None:
        return ck.batch_norm.backward_elemt(dy3, x3, mean, invstd, weight, sum_dy, sum_dy_xmu,
                                            count, out3)
    if out3 is None:
        out3 = np.empty(x3.shape, x3.dtype)
    k = invstd if weight is None else invstd * weight
    e = sum_dy_xmu * invstd * invstd / count
    hi, lo = split_mean(mean, work_dtype(x3.dtype))
    # dx = k*dy - k*e*(x - hi) + (k*e*lo - k*sum_dy/count)
    hi = hi.astype(np.float64)
    affine(out3, x3, hi, -k * e, k * e * lo - k * sum_dy / count, foldable(hi, invstd), dy3, k,
            reverse=True)
    return out3


def eval_backward(dy3: np.ndarray, invstd: np.ndarray, weight: np.ndarray | None) -> np.ndarray:
    """Input gradient when the statistics are constants (eval with running stats): dy * w * invstd."""
    ck = engine.kernels()
    if ck is not None:
        return ck.batch_norm.eval_backward(dy3, invstd, weight)
    k = invstd if weight is None else invstd * weight
    out3 = np.empty(dy3.shape, dy3.dtype)
    C = dy3.shape[1]
    affine(out3, dy3, np.zeros(C), k, np.zeros(C), True)
    return out3


# ------------------------------------------------------------------ whole steps
def _alone(exchange: Exchange | None) -> bool:
    """No exchange, or one in a group of one rank (which returns the sums it is given and makes no
    collective): the statistics are local, so the compiled engine may fuse the passes (the exchange
    is still called with the local sums, as in any step)."""
    return exchange is None or exchange.size == 1


def _fusable(x3: np.ndarray, out3: np.ndarray | None) -> bool:
    return (x3.size > 0 and x3.shape[0] * x3.shape[2] > 1
            and (out3 is None or out3.flags.c_contiguous or x3.shape[2] >= MIN_ROW))


def forward(x3: np.ndarray, plan: StepPlan, dtype: Any, shape: tuple, weight: np.ndarray | None,
            bias: np.ndarray | None, out3: np.ndarray | None = None
            ) -> tuple[float, np.ndarray | None, np.ndarray | None, np.ndarray | None]:
    """One BatchNorm forward of x3 (A, C, M) as `plan` says: (count, mean, invstd, y), with y
    written into out3 (a new array when None); mean, invstd, y None when the (group's) batch is
    empty. Local batch statistics (no exchange) with the compiled engine: statistics and normalize
    fused per channel while it is in cache; otherwise `plan_stats` (the exchange between the
    statistics and the normalize pass), then `normalize`."""
    ck = engine.kernels()
    if (ck is not None and _alone(plan.exchange) and plan.mode is not Mode.RUNNING
            and not plan.check_finite and _fusable(x3, out3)):
        y = np.empty(x3.shape, x3.dtype) if out3 is None else out3
        assert plan.shift is not None
        got = ck.batch_norm.forward_local(x3, plan.shift, weight, bias, plan.eps, y)
        if got is not None:  # else a shift far off: the statistics step sums again
            mean, var, invstd = got
            n = x3.shape[0] * x3.shape[2]
            if plan.exchange is not None:  # a group of one: it returns the sums, and counts the call
                d = mean - plan.shift
                plan.exchange.forward(float(n), n * d, n * (var + d * d))
            if plan.mode is Mode.TRAIN and plan.record is not None:
                plan.record(n, mean, var)
            return n, mean, invstd, y
    n, mean, invstd = plan_stats(x3, plan, dtype, shape)
    if mean is None:
        return n, None, None, None
    return n, mean, invstd, normalize(x3, mean, invstd, weight, bias, out3)


def train_backward(dy3: np.ndarray, x3: np.ndarray, mean: np.ndarray, invstd: np.ndarray,
                   weight: np.ndarray | None, count: float, exchange: Exchange | None = None,
                   dtype: Any = "", out3: np.ndarray | None = None
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Input gradient of a batch-statistics forward: (dx, g, h) with this process's sums
    g = sum(dy), h = sum(dy * (x - mean)) (C,) float64 (for dbias, dweight = h * invstd). With an
    `exchange`, dx uses the group's sums (ONE collective between the two passes); without one the
    compiled engine fuses both passes per channel in cache."""
    ck = engine.kernels()
    if ck is not None and _alone(exchange) and _fusable(x3, out3):
        dx = np.empty(x3.shape, x3.dtype) if out3 is None else out3
        g, h = ck.batch_norm.backward_local(dy3, x3, mean, invstd, weight, dx)
        if exchange is not None:  # a group of one: it returns the sums, and counts the call
            exchange.backward(g, h)
        return dx, g, h
    g, h = backward_reduce(dy3, x3, mean, invstd)
    G, H = (g, h) if exchange is None else exchange.backward(g, h, (str(dtype),))
    return backward_elemt(dy3, x3, mean, invstd, weight, G, H, count, out3), g, h
