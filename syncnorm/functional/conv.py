"""2-D convolution kernels (NCHW, weight (out, in/groups, kh, kw)) by im2col + one matrix product.

No state, no MPI. `conv2d_forward` returns the output and the column matrix that
`conv2d_backward` needs; both follow torch.nn.functional.conv2d's semantics (zero padding,
stride, dilation, groups) and its output-size rule
    out = floor((in + 2 * padding - dilation * (kernel - 1) - 1) / stride) + 1.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

__all__ = ["pair", "conv_output_size", "im2col", "col2im", "conv2d_forward", "conv2d_backward"]


def pair(v: int | Sequence[int], name: str, minimum: int = 0) -> tuple[int, int]:
    """(v, v) for an int, the two values for a pair; each must be an int >= `minimum`."""
    vals = (v, v) if isinstance(v, (int, np.integer)) and not isinstance(v, bool) else tuple(v)
    if len(vals) != 2 or not all(isinstance(a, (int, np.integer)) and not isinstance(a, bool)
                                 for a in vals):
        raise TypeError(f"{name} must be an int or a pair of ints, got {v!r}")
    if any(a < minimum for a in vals):
        raise ValueError(f"{name} must be >= {minimum}, got {v!r}")
    return int(vals[0]), int(vals[1])


def conv_output_size(size: int, kernel: int, stride: int, padding: int, dilation: int) -> int:
    """torch's output length of a convolution along one axis (may be <= 0 for a too-small input)."""
    return (size + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1


def _hw_slices(i: int, j: int, ho: int, wo: int, stride: tuple[int, int],
               dilation: tuple[int, int]) -> tuple[slice, slice]:
    """Rows/columns of the padded input that kernel offset (i, j) meets, one per output position."""
    hs, ws = i * dilation[0], j * dilation[1]
    return (slice(hs, hs + stride[0] * (ho - 1) + 1, stride[0]),
            slice(ws, ws + stride[1] * (wo - 1) + 1, stride[1]))


def im2col(x: np.ndarray, kh: int, kw: int, stride: tuple[int, int], padding: tuple[int, int],
           dilation: tuple[int, int]) -> tuple[np.ndarray, int, int]:
    """x (N, C, H, W) -> (cols (N*Ho*Wo, kh*kw*C), Ho, Wo), column order (i, j, c).

    The input is moved to channels-last once; each of the kh*kw kernel offsets then copies one
    shifted (N, Ho, Wo, C) block, so the inner copies are runs of C values rather than a 6-D strided
    gather in (c, i, j) order."""
    n, c, h, w = x.shape
    ho = conv_output_size(h, kh, stride[0], padding[0], dilation[0])
    wo = conv_output_size(w, kw, stride[1], padding[1], dilation[1])
    if ho <= 0 or wo <= 0:
        raise ValueError(f"input of spatial size ({h}, {w}) with padding {padding} is smaller than the "
                         f"dilated kernel ({dilation[0] * (kh - 1) + 1}, {dilation[1] * (kw - 1) + 1})")
    ph, pw = padding
    xh = np.zeros((n, h + 2 * ph, w + 2 * pw, c), x.dtype)
    xh[:, ph:ph + h, pw:pw + w, :] = x.transpose(0, 2, 3, 1)
    cols = np.empty((n, ho, wo, kh, kw, c), x.dtype)
    for i in range(kh):
        for j in range(kw):
            rs, cs = _hw_slices(i, j, ho, wo, stride, dilation)
            cols[:, :, :, i, j, :] = xh[:, rs, cs, :]
    return cols.reshape(n * ho * wo, kh * kw * c), ho, wo


def col2im(dcols: np.ndarray, x_shape: tuple[int, int, int, int], kh: int, kw: int, ho: int, wo: int,
           stride: tuple[int, int], padding: tuple[int, int], dilation: tuple[int, int]) -> np.ndarray:
    """The adjoint of `im2col`: sum the column gradients (N*Ho*Wo, kh*kw*C) back into (N, C, H, W)."""
    n, c, h, w = x_shape
    ph, pw = padding
    dxh = np.zeros((n, h + 2 * ph, w + 2 * pw, c), dcols.dtype)
    d6 = dcols.reshape(n, ho, wo, kh, kw, c)
    for i in range(kh):
        for j in range(kw):
            rs, cs = _hw_slices(i, j, ho, wo, stride, dilation)
            dxh[:, rs, cs, :] += d6[:, :, :, i, j, :]
    return np.ascontiguousarray(dxh[:, ph:ph + h, pw:pw + w, :].transpose(0, 3, 1, 2))


def _weight_matrix(weight: np.ndarray) -> np.ndarray:
    """(O, Cg, kh, kw) -> (O, kh*kw*Cg), matching the (i, j, c) column order."""
    o = weight.shape[0]
    return weight.transpose(0, 2, 3, 1).reshape(o, -1)


def _group_cols(cols: np.ndarray, g: int, groups: int, khkw: int) -> np.ndarray:
    m = cols.shape[0]
    return cols.reshape(m, khkw, groups, -1)[:, :, g, :].reshape(m, -1)


def conv2d_forward(x: np.ndarray, weight: np.ndarray, bias: np.ndarray | None,
                   stride: tuple[int, int], padding: tuple[int, int], dilation: tuple[int, int],
                   groups: int) -> tuple[np.ndarray, np.ndarray]:
    """y (N, O, Ho, Wo) C-contiguous, and the columns (N*Ho*Wo, kh*kw*C) for the backward."""
    n = x.shape[0]
    o, cg, kh, kw = weight.shape
    cols, ho, wo = im2col(x, kh, kw, stride, padding, dilation)
    m = cols.shape[0]
    wmat = _weight_matrix(weight)
    if groups == 1:
        ymat = cols @ wmat.T
    else:
        og = o // groups
        ymat = np.empty((m, o), np.result_type(cols, weight))
        for g in range(groups):
            ymat[:, g * og:(g + 1) * og] = _group_cols(cols, g, groups, kh * kw) @ wmat[g * og:(g + 1) * og].T
    if bias is not None:
        ymat += bias
    y = np.ascontiguousarray(ymat.reshape(n, ho, wo, o).transpose(0, 3, 1, 2))
    return y, cols


def conv2d_backward(dy: np.ndarray, cols: np.ndarray, x_shape: tuple[int, int, int, int],
                    weight: np.ndarray, stride: tuple[int, int], padding: tuple[int, int],
                    dilation: tuple[int, int], groups: int, need_input_grad: bool = True
                    ) -> tuple[np.ndarray | None, np.ndarray, np.ndarray]:
    """dy (N, O, Ho, Wo) -> (dx (N, C, H, W) or None, dweight like weight, dbias (O,))."""
    n, o, ho, wo = dy.shape
    _, cg, kh, kw = weight.shape
    m = n * ho * wo
    dymat = dy.transpose(0, 2, 3, 1).reshape(m, o)
    dbias = dy.sum(axis=(0, 2, 3))
    wmat = _weight_matrix(weight)
    if groups == 1:
        dwmat = dymat.T @ cols
        dcols = dymat @ wmat if need_input_grad else None
    else:
        og = o // groups
        dwmat = np.empty((o, kh * kw * cg), np.result_type(dy, cols))
        dcols = np.empty((m, kh * kw, groups, cg), np.result_type(dy, weight)) if need_input_grad else None
        for g in range(groups):
            dyg = dymat[:, g * og:(g + 1) * og]
            dwmat[g * og:(g + 1) * og] = dyg.T @ _group_cols(cols, g, groups, kh * kw)
            if dcols is not None:
                dcols[:, :, g, :] = (dyg @ wmat[g * og:(g + 1) * og]).reshape(m, kh * kw, cg)
        if dcols is not None:
            dcols = dcols.reshape(m, -1)
    dw = dwmat.reshape(o, kh, kw, cg).transpose(0, 3, 1, 2)
    dx = None
    if dcols is not None:
        dx = col2im(dcols, x_shape, kh, kw, ho, wo, stride, padding, dilation)
    return dx, np.ascontiguousarray(dw), dbias
