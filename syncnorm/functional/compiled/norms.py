"""The compiled engine's GroupNorm / InstanceNorm / LayerNorm steps (see `norm_kernels`): the
forward with its statistics fused per row, and the backward, with the signatures of
`functional.norms`' numpy functions they stand in for.

x3, dy3: contiguous (N, C, S) arrays; x2, dy2: contiguous (R, D) arrays; float16/32/64.
"""
from __future__ import annotations

import numpy as np

from . import norm_kernels
from .batch_norm import raw, work_dtype

__all__ = ["channel_step", "channel_backward", "element_step", "element_backward"]


def _vec(v: np.ndarray | None, n: int, fill: float, dtype: type = np.float64) -> np.ndarray:
    return np.full(n, fill, dtype) if v is None else np.ascontiguousarray(v, dtype=dtype).reshape(n)


def channel_step(x3: np.ndarray, groups: int, eps: float, weight: np.ndarray | None,
                 bias: np.ndarray | None
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None:
    """(y (N, C, S), mean, var, invstd (N*groups,) float64) of GroupNorm (InstanceNorm: groups =
    C), or None when some row's first value was too far from its mean to shift the sums (the
    caller then runs the statistics step). N*C*S > 0."""
    N, C, S = x3.shape
    cg = C // groups
    R, M = N * groups, cg * S
    y = np.empty(x3.shape, x3.dtype)
    mean, var, invstd = np.empty(R), np.empty(R), np.empty(R)
    poor = np.zeros(R, np.bool_)
    like = np.empty(1, work_dtype(raw(x3)))
    norm_kernels.group_forward(raw(x3).reshape(1, R, M), cg, _vec(weight, C, 1.0), _vec(bias, C, 0.0),
                               float(eps), like, raw(y).reshape(1, R, M), mean, var, invstd, poor)
    return None if poor.any() else (y, mean, var, invstd)


def channel_backward(dy3: np.ndarray, x3: np.ndarray, groups: int, mean: np.ndarray,
                     invstd: np.ndarray, weight: np.ndarray | None
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(dx (N, C, S), dweight (C,), dbias (C,)) with batch statistics; N*C*S > 0."""
    N, C, S = x3.shape
    cg = C // groups
    R, M = N * groups, cg * S
    dx = np.empty(x3.shape, x3.dtype)
    t1, t2 = np.empty(N * C), np.empty(N * C)
    like = np.empty(1, work_dtype(raw(x3)))
    norm_kernels.group_backward(raw(dy3).reshape(1, R, M), raw(x3).reshape(1, R, M), cg,
                                np.ascontiguousarray(mean, dtype=np.float64),
                                np.ascontiguousarray(invstd, dtype=np.float64), _vec(weight, C, 1.0), like,
                                raw(dx).reshape(1, R, M), t1, t2)
    inv_r = np.repeat(invstd, cg)
    return dx, (t2 * inv_r).reshape(N, C).sum(axis=0), t1.reshape(N, C).sum(axis=0)


def element_step(x2: np.ndarray, eps: float, weight: np.ndarray | None, bias: np.ndarray | None
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None:
    """(y (R, D), mean, var, invstd (R,)) of LayerNorm, or None as `channel_step`. R*D > 0."""
    R, D = x2.shape
    wd = work_dtype(raw(x2))
    y = np.empty(x2.shape, x2.dtype)
    mean, var, invstd = np.empty(R), np.empty(R), np.empty(R)
    poor = np.zeros(R, np.bool_)
    norm_kernels.layer_forward(raw(x2)[None], _vec(weight, D, 1.0, wd), _vec(bias, D, 0.0, wd), float(eps),
                               np.empty(1, wd), raw(y)[None], mean, var, invstd, poor)
    return None if poor.any() else (y, mean, var, invstd)


def element_backward(dy2: np.ndarray, x2: np.ndarray, mean: np.ndarray, invstd: np.ndarray,
                     weight: np.ndarray | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(dx (R, D), dweight (D,), dbias (D,)) of LayerNorm; R*D > 0."""
    R, D = x2.shape
    wd = work_dtype(raw(x2))
    tile = min(D, norm_kernels.LN_TILE)
    nt = -(-D // tile)
    gp, hp = np.empty((nt, R)), np.empty((nt, R))
    dweight, dbias = np.empty(D), np.empty(D)
    mean = np.ascontiguousarray(mean, dtype=np.float64)
    invstd = np.ascontiguousarray(invstd, dtype=np.float64)
    hi = mean.astype(wd)
    xc = np.stack([invstd, (mean - hi) * invstd]).astype(wd)
    w = _vec(weight, D, 1.0, wd)
    norm_kernels.layer_backward_sums(raw(dy2)[None], raw(x2)[None], hi, xc, w, tile,
                                     norm_kernels.LN_FLUSH_ROWS, gp, hp, dweight, dbias)
    dx = np.empty(x2.shape, x2.dtype)
    norm_kernels.layer_backward_dx(raw(dy2)[None], raw(x2)[None], mean, invstd, gp, hp, w,
                                   np.empty(1, wd), raw(dx)[None])
    return dx, dweight, dbias
