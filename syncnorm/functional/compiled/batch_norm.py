"""The compiled engine's BatchNorm functions, with the signatures of the numpy kernels they stand
in for (`moments.moments`, `batch_norm.normalize`, `backward_reduce`, `backward_elemt`,
`eval_backward`), plus the fused local passes `forward_local` and `backward_local`.

x3, dy3, out3 are (A, C, M) arrays: float32, float64, or 16-bit storage (numpy float16 is passed
as its uint16 bits; the torch adapter passes bfloat16 as int16 bits, see `_jit`). Per-channel
statistics and sums are float64 (C,). Rows of M >= MIN_ROW values take the row kernels, shorter
rows the column kernels on the (A, C*M) view (see `bn_kernels`).
"""
from __future__ import annotations

import numpy as np

from ..blocks import MIN_ROW
from . import bn_kernels

__all__ = ["raw", "work_dtype", "affine", "moments", "normalize", "backward_reduce", "backward_elemt",
           "eval_backward", "forward_local", "backward_local", "col_tile"]

#: columns per tile of the column kernels: the accumulators stay in L1, and a row's piece of a
#: tile is long enough for the prefetcher (narrow tiles of tall arrays run ~20x slower: every row
#: is a new page). A tile runs down all rows, so the fused column kernels' second pass finds the
#: data in cache only when the whole (A, C*M) array fits in the last-level cache.
SUM_TILE = 512
#: the narrowest tile when the columns are shared among threads
MIN_TILE = 64


def raw(a: np.ndarray) -> np.ndarray:
    """`a` as the kernels take it: float16 as its uint16 bits, anything else as it is."""
    return a.view(np.uint16) if a.dtype == np.float16 else a


def work_dtype(a: np.ndarray) -> np.dtype:
    """float64 for float64 storage, else float32."""
    return np.dtype(np.float64) if a.dtype == np.float64 else np.dtype(np.float32)


def col_tile(A: int, C: int, M: int) -> int:
    """Columns per tile of the (A, C*M) view: a multiple of M (whole channels)."""
    from ._jit import threads
    cols = SUM_TILE
    n = threads()
    if n > 1:
        cols = min(cols, max(MIN_TILE, -(-C * M // n)))
    ch = max(1, min(C, -(-cols // M)))
    return ch * M


def _src(a: np.ndarray) -> np.ndarray:
    """An input of a summing kernel, C-contiguous (a copy otherwise): numba compiles strided
    arrays separately and may vectorize their sums differently, and a strided input must give the
    same bits as its contiguous copy."""
    return raw(np.ascontiguousarray(a))


def _cols(a: np.ndarray) -> np.ndarray:
    """(A, C, M) as the C-contiguous (A, C*M) column view (outputs given here are contiguous)."""
    A, C, M = a.shape
    return _src(a).reshape(A, C * M)


def _vec(v: np.ndarray | None, C: int, fill: float) -> np.ndarray:
    return np.full(C, fill) if v is None else np.ascontiguousarray(v, dtype=np.float64)


def moments(x3: np.ndarray, shift: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(S1, S2) float64 (C,) of x3 (A, C, M) about `shift` (C,) float64; A * M > 0."""
    A, C, M = x3.shape
    if A * M == 0 or C == 0:
        return np.zeros(C), np.zeros(C)
    s1, s2 = np.empty(C), np.empty(C)
    shift = np.ascontiguousarray(shift, dtype=np.float64)
    if M < MIN_ROW:
        bn_kernels.col_moments(_cols(x3), np.repeat(shift, M), M, col_tile(A, C, M), s1, s2)
    else:
        bn_kernels.row_moments(_src(x3), shift, s1, s2)
    return s1, s2


def _affine(x3: np.ndarray, out3: np.ndarray, hw: np.ndarray, aw: np.ndarray,
            cw: np.ndarray) -> None:
    A, C, M = x3.shape
    if x3.size == 0:
        return
    if M < MIN_ROW:
        rep = [np.repeat(v, M) for v in (hw, aw, cw)]
        o = _short(out3)
        bn_kernels.col_affine(_cols(x3), _cols(o), *rep, col_tile(A, C, M))
        if o is not out3:
            out3[...] = o
    else:
        bn_kernels.row_affine(raw(x3), raw(out3), hw, aw, cw)


def _out(x3: np.ndarray, out3: np.ndarray | None) -> np.ndarray:
    """out3, or a new array like x3."""
    if out3 is None:
        return np.empty(x3.shape, x3.dtype)
    return out3


def _short(out3: np.ndarray) -> np.ndarray:
    """A C-contiguous array to write the column kernels' output into (out3 itself when it is)."""
    return out3 if out3.flags.c_contiguous else np.empty(out3.shape, out3.dtype)


def normalize(x3: np.ndarray, mean: np.ndarray, invstd: np.ndarray, weight: np.ndarray | None,
              bias: np.ndarray | None, out3: np.ndarray | None = None) -> np.ndarray:
    """y = (x - mean) * invstd * weight + bias; statistics float64 (C,)."""
    C = x3.shape[1]
    out3 = _out(x3, out3)
    wd = work_dtype(raw(x3))
    hw, aw, cw = np.empty(C, wd), np.empty(C, wd), np.empty(C, wd)
    w, b = _vec(weight, C, 1.0), _vec(bias, C, 0.0)
    # the same strict helper as the fused kernel
    bn_kernels.all_forward_consts(_vec(mean, C, 0.0), _vec(invstd, C, 1.0), w, b, hw, aw, cw)
    _affine(x3, out3, hw, aw, cw)
    return out3


def backward_reduce(dy3: np.ndarray, x3: np.ndarray, mean: np.ndarray
                    ) -> tuple[np.ndarray, np.ndarray]:
    """(sum(dy), sum(dy * (x - mean))) per channel, float64 (C,); A * M > 0."""
    A, C, M = x3.shape
    if A * M == 0 or C == 0:
        return np.zeros(C), np.zeros(C)
    g, h = np.empty(C), np.empty(C)
    mean = np.ascontiguousarray(mean, dtype=np.float64)
    if M < MIN_ROW:
        bn_kernels.col_grad_sums(_cols(dy3), _cols(x3), np.repeat(mean, M), M,
                                 col_tile(A, C, M), np.empty(1, work_dtype(raw(x3))), g, h)
    else:
        hi = mean.astype(work_dtype(raw(x3)))
        bn_kernels.row_grad_sums(_src(dy3), _src(x3), hi, mean - hi.astype(np.float64), g, h)
    return g, h


def _bconsts(x3: np.ndarray, mean: np.ndarray, invstd: np.ndarray, weight: np.ndarray | None,
             g: np.ndarray, h: np.ndarray, count: float) -> list[np.ndarray]:
    C = x3.shape[1]
    wd = work_dtype(raw(x3))
    hw, kw, aw, cw = (np.empty(C, wd) for _ in range(4))
    w = _vec(weight, C, 1.0)
    bn_kernels.all_backward_consts(_vec(mean, C, 0.0), _vec(invstd, C, 1.0), w, _vec(g, C, 0.0),
                                   _vec(h, C, 0.0), float(count), hw, kw, aw, cw)
    return [hw, kw, aw, cw]


def backward_elemt(dy3: np.ndarray, x3: np.ndarray, mean: np.ndarray, invstd: np.ndarray,
                   weight: np.ndarray | None, sum_dy: np.ndarray, sum_dy_xmu: np.ndarray,
                   count: float, out3: np.ndarray | None = None) -> np.ndarray:
    """Input gradient of training-mode BatchNorm from the (global) sums and count."""
    A, C, M = x3.shape
    out3 = _out(x3, out3)
    if x3.size == 0:
        return out3
    consts = _bconsts(x3, mean, invstd, weight, sum_dy, sum_dy_xmu, count)
    if M < MIN_ROW:
        rep = [np.repeat(v, M) for v in consts]
        o = _short(out3)
        bn_kernels.col_elemt(_cols(dy3), _cols(x3), _cols(o), *rep, col_tile(A, C, M))
        if o is not out3:
            out3[...] = o
    else:
        bn_kernels.row_elemt(raw(dy3), raw(x3), raw(out3), *consts)
    return out3


def eval_backward(dy3: np.ndarray, invstd: np.ndarray, weight: np.ndarray | None) -> np.ndarray:
    """dy * weight * invstd (statistics were constants)."""
    C = dy3.shape[1]
    wd = work_dtype(raw(dy3))
    k = invstd if weight is None else invstd * weight
    out3 = np.empty(dy3.shape, dy3.dtype)
    _affine(dy3, out3, np.zeros(C, wd), k.astype(wd), np.zeros(C, wd))
    return out3


def forward_local(x3: np.ndarray, shift: np.ndarray, weight: np.ndarray | None,
                  bias: np.ndarray | None, eps: float, out3: np.ndarray
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """Fused local statistics + normalize into out3; returns (mean, var, invstd) float64 (C,), or
    None when some channel's shift was far off (then nothing is decided: the caller runs the
    statistics step, which sums again about the mean, and the separate normalize)."""
    A, C, M = x3.shape
    wd = work_dtype(raw(x3))
    shift = np.ascontiguousarray(shift, dtype=np.float64)
    mean, var, invstd = np.empty(C), np.empty(C), np.empty(C)
    hw, aw, cw = np.empty(C, wd), np.empty(C, wd), np.empty(C, wd)
    poor = np.zeros(C, np.bool_)
    w, b = _vec(weight, C, 1.0), _vec(bias, C, 0.0)
    if M < MIN_ROW:
        bn_kernels.col_forward(_cols(x3), np.repeat(shift, M), M, col_tile(A, C, M),
                               w, b, float(eps), _cols(out3), mean, var, invstd, hw, aw, cw, poor)
    else:
        bn_kernels.row_forward(_src(x3), shift, w, b, float(eps), raw(out3), mean, var, invstd, hw, aw, cw,
                               poor)
    return None if poor.any() else (mean, var, invstd)


def backward_local(dy3: np.ndarray, x3: np.ndarray, mean: np.ndarray, invstd: np.ndarray,
                   weight: np.ndarray | None, out3: np.ndarray
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Fused local input gradient into out3 (count A * M); returns this batch's (g, h) sums."""
    A, C, M = x3.shape
    wd = work_dtype(raw(x3))
    g, h = np.empty(C), np.empty(C)
    hw, kw, aw, cw = (np.empty(C, wd) for _ in range(4))
    w = _vec(weight, C, 1.0)
    mean = np.ascontiguousarray(mean, dtype=np.float64)
    invstd = np.ascontiguousarray(invstd, dtype=np.float64)
    if M < MIN_ROW:
        bn_kernels.col_backward(_cols(dy3), _cols(x3), np.repeat(mean, M), M,
                                col_tile(A, C, M), invstd, w, _cols(out3), g, h,
                                hw, kw, aw, cw)
    else:
        bn_kernels.row_backward(_src(dy3), _src(x3), mean, invstd, w, raw(out3), g, h, hw, kw, aw, cw)
    return g, h


def affine(out3: np.ndarray, x3: np.ndarray, hi: np.ndarray, a: np.ndarray, c: np.ndarray,
           dy3: np.ndarray | None = None, k: np.ndarray | None = None) -> None:
    """out = (x - hi) * a + c [+ dy * k] per channel (float64 constants (C,), hi already rounded
    to the working dtype): `elementwise.affine` without its fold (exact either way)."""
    A, C, M = x3.shape
    if x3.size == 0:
        return
    wd = work_dtype(raw(x3))
    hw, aw, cw = (np.asarray(v, dtype=np.float64).astype(wd) for v in (hi, a, c))
    if dy3 is None:
        _affine(x3, out3, hw, aw, cw)
        return
    kw = np.asarray(k, dtype=np.float64).astype(wd)
    if M < MIN_ROW:
        o = _short(out3)
        rep = [np.repeat(v, M) for v in (hw, kw, aw, cw)]
        bn_kernels.col_elemt(_cols(dy3), _cols(x3), _cols(o), *rep, col_tile(A, C, M))
        if o is not out3:
            out3[...] = o
    else:
        bn_kernels.row_elemt(raw(dy3), raw(x3), raw(out3), hw, kw, aw, cw)
