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
small against the spread (|hi * scale| <= FOLD_LIMIT) the fold is as exact, and one pass cheaper;
`backward_reduce` likewise sums dy * x and subtracts mean * sum(dy) when given `invstd` and the
mean is foldable.

Passes over memory (what the bandwidth floor of `syncnorm-bench` counts): forward reads x twice
(statistics, normalize) and writes y; backward reads dy and x twice (`backward_reduce`,
`backward_elemt`) and writes dx. Within a pass every operation works on cache-sized blocks:

* reductions (`moments`, `backward_reduce`): blocks of whole rows of M contiguous values, two BLAS
  calls per block (a row-wise dot, then a matrix-vector product on the block while it is in cache);
* elementwise passes (`_affine`): tiles of `ct` channels x `m` positions x a few samples, about
  ELEM_BLOCK values. With four or more samples and rows shorter than REUSE_MAX_ROW, the
  per-channel constants are expanded once per tile into (ct, m) arrays that stay in cache for
  every sample, so each operation is one long contiguous inner loop; otherwise they are broadcast
  as (ct, 1) columns. The ufunc buffer is set to one inner loop meanwhile (`_unbuffered`): numpy
  >= 2.3 would otherwise copy broadcast constants into its buffers to lengthen the inner loop,
  which costs more than the operation itself. The forward is y = x*a + c (two calls per block),
  the input gradient dx = k*(dy + x*a' + c') (four: the dy term is a plain add).
* `backward_elemt` runs its tiles in reverse order, so it starts on the data `backward_reduce`
  read last, which may still be in the last-level cache (within noise on the 2-core test machine,
  whose L3 other processes share).
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import numpy as np

from .columns import col_affine, col_backward_reduce
from .moments import MIN_ROW, REDUCE_BLOCK, piece_bounds, rowdot, rows_view, work_dtype

__all__ = ["as_acm", "normalize", "backward_reduce", "backward_elemt", "eval_backward"]

_DEFAULT_BUFSIZE = 8192  # numpy's default ufunc buffer, in elements

#: fold (x - hi) * a + c into x * a + (c - hi * a) when |hi * a| is at most this (in units of the
#: output's scale): the extra rounding is then below FOLD_LIMIT * eps of the working dtype
FOLD_LIMIT = 4.0
#: elements per operand in one elementwise block (float32: 512 KiB). Measured on a 1 MiB-L2 core:
#: blocks past L2 still win over 128 KiB ones (fewer calls, longer streams from memory)
ELEM_BLOCK = 1 << 17
#: values per expanded constant tile (channels x positions)
COEF_TILE = 1 << 16
#: the per-channel constants are expanded into tiles for batches of at least REUSE_MIN samples
#: with rows shorter than REUSE_MAX_ROW (short inner loops cost more than reading the tiles)
REUSE_MIN = 4
REUSE_MAX_ROW = 512


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
        r = np.abs(hi)
        r *= invstd
    return bool((r <= FOLD_LIMIT).all())


@contextmanager
def _unbuffered(inner: int | None) -> Iterator[None]:
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


def _tiles(A: int, C: int, M: int, reuse: bool, reverse: bool = False):
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


def _affine(out3: np.ndarray, x3: np.ndarray, hi: np.ndarray, a: np.ndarray, c: np.ndarray,
            fold: bool, dy3: np.ndarray | None = None, k: np.ndarray | None = None,
            reverse: bool = False) -> None:
    """out = (x - hi) * a + c [+ dy * k] with per-channel float64 constants (C,); `fold` computes
    x * a + (c - hi * a) instead (one operation less). Tiles of `_tiles`, in reverse order when
    `reverse`."""
    A, C, M = x3.shape
    if A * C * M == 0:
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
    tiles = list(_tiles(A, C, M, reuse, reverse))
    c0, c1, m0, m1, _ = tiles[0]
    inner = (c1 - c0) * (m1 - m0) if reuse else m1 - m0
    # (arrays within one default buffer are never cut or copied: no need to touch the setting)
    with _unbuffered(inner if native and A * C * M > _DEFAULT_BUFSIZE else None):
        for c0, c1, m0, m1, astep in tiles:
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
    wd = work_dtype(x3.dtype)
    hi, lo = _split(mean, wd)
    if M < MIN_ROW:
        return col_backward_reduce(dy3, x3, hi, lo)
    fold = invstd is not None and _foldable(hi.astype(np.float64), invstd)
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
        with _unbuffered(n if native and not fold else None):
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
    if out3 is None:
        out3 = np.empty(x3.shape, x3.dtype)
    k = invstd if weight is None else invstd * weight
    e = sum_dy_xmu * invstd * invstd / count
    hi, lo = _split(mean, work_dtype(x3.dtype))
    # dx = k*dy - k*e*(x - hi) + (k*e*lo - k*sum_dy/count)
    hi = hi.astype(np.float64)
    _affine(out3, x3, hi, -k * e, k * e * lo - k * sum_dy / count, _foldable(hi, invstd), dy3, k,
            reverse=True)
    return out3


def eval_backward(dy3: np.ndarray, invstd: np.ndarray, weight: np.ndarray | None) -> np.ndarray:
    """Input gradient when the statistics are constants (eval with running stats): dy * w * invstd."""
    k = invstd if weight is None else invstd * weight
    out3 = np.empty(dy3.shape, dy3.dtype)
    C = dy3.shape[1]
    _affine(out3, dy3, np.zeros(C), k, np.zeros(C), True)
    return out3
