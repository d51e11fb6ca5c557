"""2-D convolution kernels (NCHW, weight (out, in/groups, kh, kw)) by im2col + one matrix product.

No state, no MPI. `conv2d_forward` returns the output and the column matrix that
`conv2d_backward` needs; both follow torch.nn.functional.conv2d's semantics (zero padding,
stride, dilation, groups) and its output-size rule
    out = floor((in + 2 * padding - dilation * (kernel - 1) - 1) / stride) + 1.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
from numpy.lib.stride_tricks import as_strided

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


def _windows(xp: np.ndarray, kh: int, kw: int, ho: int, wo: int, stride: tuple[int, int],
             dilation: tuple[int, int]) -> np.ndarray:
    """A read-only (N, Ho, Wo, C, kh, kw) view of the windows of padded `xp` (N, C, Hp, Wp)."""
    n, c = xp.shape[:2]
    sn, sc, sh, sw = xp.strides
    return as_strided(xp, shape=(n, ho, wo, c, kh, kw),
                      strides=(sn, sh * stride[0], sw * stride[1], sc, sh * dilation[0], sw * dilation[1]),
                      writeable=False)


def im2col(x: np.ndarray, kh: int, kw: int, stride: tuple[int, int], padding: tuple[int, int],
           dilation: tuple[int, int]) -> tuple[np.ndarray, int, int]:
    """x (N, C, H, W) -> (cols (N*Ho*Wo, C*kh*kw), Ho, Wo); column order (c, i, j) like the weight."""
    n, c, h, w = x.shape
    ho = conv_output_size(h, kh, stride[0], padding[0], dilation[0])
    wo = conv_output_size(w, kw, stride[1], padding[1], dilation[1])
    if ho <= 0 or wo <= 0:
        raise ValueError(f"input of spatial size ({h}, {w}) with padding {padding} is smaller than the "
                         f"dilated kernel ({dilation[0] * (kh - 1) + 1}, {dilation[1] * (kw - 1) + 1})")
    ph, pw = padding
    xp = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw))) if ph or pw else np.ascontiguousarray(x)
    cols = _windows(xp, kh, kw, ho, wo, stride, dilation).reshape(n * ho * wo, c * kh * kw)
    return cols, ho, wo


def col2im(dcols: np.ndarray, x_shape: tuple[int, int, int, int], kh: int, kw: int, ho: int, wo: int,
           stride: tuple[int, int], padding: tuple[int, int], dilation: tuple[int, int]) -> np.ndarray:
    """The adjoint of `im2col`: sum the column gradients (N*Ho*Wo, C*kh*kw) back into (N, C, H, W)."""
    n, c, h, w = x_shape
    ph, pw = padding
    sh, sw = stride
    dh, dw = dilation
    dxp = np.zeros((n, c, h + 2 * ph, w + 2 * pw), dcols.dtype)
    d6 = dcols.reshape(n, ho, wo, c, kh, kw)
    for i in range(kh):
        for j in range(kw):
            hs, ws = i * dh, j * dw
            dxp[:, :, hs:hs + sh * (ho - 1) + 1:sh, ws:ws + sw * (wo - 1) + 1:sw] += \
                d6[:, :, :, :, i, j].transpose(0, 3, 1, 2)
    return dxp if not (ph or pw) else np.ascontiguousarray(dxp[:, :, ph:ph + h, pw:pw + w])


def conv2d_forward(x: np.ndarray, weight: np.ndarray, bias: np.ndarray | None,
                   stride: tuple[int, int], padding: tuple[int, int], dilation: tuple[int, int],
                   groups: int) -> tuple[np.ndarray, np.ndarray]:
    """y (N, O, Ho, Wo) C-contiguous, and the columns (N*Ho*Wo, C*kh*kw) for the backward."""
    n = x.shape[0]
    o, cg, kh, kw = weight.shape
    cols, ho, wo = im2col(x, kh, kw, stride, padding, dilation)
    m = cols.shape[0]
    if groups == 1:
        ymat = cols @ weight.reshape(o, -1).T
    else:
        og, k = o // groups, cg * kh * kw
        ymat = np.empty((m, o), np.result_type(cols, weight))
        c3 = cols.reshape(m, groups, k)
        w3 = weight.reshape(groups, og, k)
        for g in range(groups):
            ymat[:, g * og:(g + 1) * og] = c3[:, g, :] @ w3[g].T
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
    if groups == 1:
        dw = (dymat.T @ cols).reshape(weight.shape)
        dcols = dymat @ weight.reshape(o, -1) if need_input_grad else None
    else:
        og, k = o // groups, cg * kh * kw
        c3 = cols.reshape(m, groups, k)
        w3 = weight.reshape(groups, og, k)
        dw = np.empty((groups, og, k), np.result_type(dy, cols))
        dcols = np.empty((m, groups, k), np.result_type(dy, weight)) if need_input_grad else None
        for g in range(groups):
            dyg = dymat[:, g * og:(g + 1) * og]
            dw[g] = dyg.T @ c3[:, g, :]
            if dcols is not None:
                dcols[:, g, :] = dyg @ w3[g]
        dw = dw.reshape(weight.shape)
        if dcols is not None:
            dcols = dcols.reshape(m, groups * k)
    dx = None
    if dcols is not None:
        dx = col2im(dcols, x_shape, kh, kw, ho, wo, stride, padding, dilation)
    return dx, dw, dbias
