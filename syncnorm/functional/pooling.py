"""2-D pooling kernels on (N, C, H, W): max, average and adaptive average, forward and backward.

No state, no MPI. Output sizes, padding, ceil_mode and the average divisor follow
torch.nn.functional (max_pool2d, avg_pool2d, adaptive_avg_pool2d):
    out = floor_or_ceil((in + 2 * padding - dilation * (kernel - 1) - 1) / stride) + 1,
and with ceil_mode the last window must start inside the input or its left padding.
"""
from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import as_strided

__all__ = ["pool_output_size", "max_pool2d_forward", "max_pool2d_backward", "avg_pool2d_forward",
           "avg_pool2d_backward", "adaptive_ranges", "adaptive_avg_pool2d_forward",
           "adaptive_avg_pool2d_backward"]


def pool_output_size(size: int, kernel: int, stride: int, padding: int, dilation: int,
                     ceil_mode: bool) -> int:
    """torch's pooling output length along one axis."""
    span = size + 2 * padding - dilation * (kernel - 1) - 1
    out = (-(-span // stride) if ceil_mode else span // stride) + 1
    if ceil_mode and (out - 1) * stride >= size + padding:
        out -= 1
    return out


def _check_pool_args(h: int, w: int, k: tuple[int, int], p: tuple[int, int], who: str) -> None:
    if p[0] * 2 > k[0] or p[1] * 2 > k[1]:
        raise ValueError(f"{who}: padding should be at most half of the kernel size, got padding {p} "
                         f"and kernel size {k}")


def _padded(x: np.ndarray, ho: int, wo: int, k: tuple[int, int], s: tuple[int, int],
            p: tuple[int, int], d: tuple[int, int], fill: float) -> np.ndarray:
    """x padded left/top by p and right/bottom far enough for every window (ceil_mode)."""
    n, c, h, w = x.shape
    need_h = (ho - 1) * s[0] + d[0] * (k[0] - 1) + 1
    need_w = (wo - 1) * s[1] + d[1] * (k[1] - 1) + 1
    rh = max(0, need_h - h - p[0])
    rw = max(0, need_w - w - p[1])
    if not (p[0] or p[1] or rh or rw):
        return np.ascontiguousarray(x)
    return np.pad(x, ((0, 0), (0, 0), (p[0], rh), (p[1], rw)), constant_values=fill)


def _win(xp: np.ndarray, ho: int, wo: int, k: tuple[int, int], s: tuple[int, int],
         d: tuple[int, int]) -> np.ndarray:
    """Read-only (N, C, Ho, Wo, kh, kw) view of the windows."""
    n, c = xp.shape[:2]
    sn, sc, sh, sw = xp.strides
    return as_strided(xp, (n, c, ho, wo, k[0], k[1]),
                      (sn, sc, sh * s[0], sw * s[1], sh * d[0], sw * d[1]), writeable=False)


def _sizes(x: np.ndarray, k, s, p, d, ceil_mode, who) -> tuple[int, int]:
    n, c, h, w = x.shape
    _check_pool_args(h, w, k, p, who)
    ho = pool_output_size(h, k[0], s[0], p[0], d[0], ceil_mode)
    wo = pool_output_size(w, k[1], s[1], p[1], d[1], ceil_mode)
    if ho <= 0 or wo <= 0:
        raise ValueError(f"{who}: output size is too small ({ho}x{wo}) for input {tuple(x.shape)}")
    return ho, wo


def _offset_slices(i: int, j: int, ho: int, wo: int, s: tuple[int, int],
                   d: tuple[int, int]) -> tuple[slice, slice, slice, slice]:
    hs, ws = i * d[0], j * d[1]
    return (slice(None), slice(None), slice(hs, hs + s[0] * (ho - 1) + 1, s[0]),
            slice(ws, ws + s[1] * (wo - 1) + 1, s[1]))


def max_pool2d_forward(x: np.ndarray, k: tuple[int, int], s: tuple[int, int], p: tuple[int, int],
                       d: tuple[int, int], ceil_mode: bool) -> tuple[np.ndarray, np.ndarray]:
    """(y (N, C, Ho, Wo), arg (N, C, Ho, Wo) uint16/int64: the window offset i*kw+j of the maximum).

    torch's rule, offset by offset in row-major window order: a value replaces the running maximum
    when it is larger or NaN, so ties go to the first maximum and NaN propagates."""
    ho, wo = _sizes(x, k, s, p, d, ceil_mode, "MaxPool2d")
    xp = _padded(x, ho, wo, k, s, p, d, -np.inf)
    y = np.full((x.shape[0], x.shape[1], ho, wo), -np.inf, x.dtype)
    arg = np.zeros(y.shape, np.uint16 if k[0] * k[1] < 2 ** 16 else np.int64)
    for i in range(k[0]):
        for j in range(k[1]):
            v = xp[_offset_slices(i, j, ho, wo, s, d)]
            upd = (v > y) | np.isnan(v)
            np.copyto(y, v, where=upd)
            np.copyto(arg, i * k[1] + j, where=upd, casting="unsafe")
    return y, arg


def max_pool2d_backward(dy: np.ndarray, arg: np.ndarray, x_shape: tuple[int, int, int, int],
                        k: tuple[int, int], s: tuple[int, int], p: tuple[int, int],
                        d: tuple[int, int]) -> np.ndarray:
    """Route each output gradient to the input position of its window's maximum."""
    n, c, h, w = x_shape
    ho, wo = dy.shape[2:]
    hp = max(h + p[0], (ho - 1) * s[0] + d[0] * (k[0] - 1) + 1)
    wp = max(w + p[1], (wo - 1) * s[1] + d[1] * (k[1] - 1) + 1)
    dxp = np.zeros((n, c, hp, wp), dy.dtype)
    zero = dy.dtype.type(0)
    for i in range(k[0]):
        for j in range(k[1]):
            dxp[_offset_slices(i, j, ho, wo, s, d)] += np.where(arg == i * k[1] + j, dy, zero)
    if p == (0, 0) and (hp, wp) == (h, w):
        return dxp
    return np.ascontiguousarray(dxp[:, :, p[0]:p[0] + h, p[1]:p[1] + w])


def _avg_divisor(h: int, w: int, ho: int, wo: int, k: tuple[int, int], s: tuple[int, int],
                 p: tuple[int, int], count_include_pad: bool, divisor_override: int | None
                 ) -> np.ndarray:
    """(Ho, Wo) divisors, torch's rule: windows are clipped to the padded input for
    count_include_pad, to the input itself otherwise."""
    if divisor_override is not None:
        return np.full((ho, wo), float(divisor_override))

    def axis(size: int, out: int, kk: int, ss: int, pp: int) -> tuple[np.ndarray, np.ndarray]:
        start = np.arange(out) * ss - pp
        end = np.minimum(start + kk, size + pp)
        padded = end - start
        inside = np.minimum(end, size) - np.maximum(start, 0)
        return padded, inside

    ph_, ih = axis(h, ho, k[0], s[0], p[0])
    pw_, iw = axis(w, wo, k[1], s[1], p[1])
    if count_include_pad:
        return np.outer(ph_, pw_).astype(np.float64)
    return np.outer(ih, iw).astype(np.float64)


def avg_pool2d_forward(x: np.ndarray, k: tuple[int, int], s: tuple[int, int], p: tuple[int, int],
                       ceil_mode: bool, count_include_pad: bool, divisor_override: int | None
                       ) -> np.ndarray:
    """y (N, C, Ho, Wo): window sums (zero padding) over torch's divisor."""
    ho, wo = _sizes(x, k, s, p, (1, 1), ceil_mode, "AvgPool2d")
    xp = _padded(x, ho, wo, k, s, p, (1, 1), 0.0)
    sums = _win(xp, ho, wo, k, s, (1, 1)).sum(axis=(-2, -1))
    div = _avg_divisor(x.shape[2], x.shape[3], ho, wo, k, s, p, count_include_pad, divisor_override)
    return (sums / div.astype(x.dtype)).astype(x.dtype, copy=False)


def avg_pool2d_backward(dy: np.ndarray, x_shape: tuple[int, int, int, int], k: tuple[int, int],
                        s: tuple[int, int], p: tuple[int, int], count_include_pad: bool,
                        divisor_override: int | None) -> np.ndarray:
    """Spread each output gradient / divisor over its window."""
    n, c, h, w = x_shape
    ho, wo = dy.shape[2:]
    div = _avg_divisor(h, w, ho, wo, k, s, p, count_include_pad, divisor_override)
    g = dy / div.astype(dy.dtype)
    hp = max(h + p[0], (ho - 1) * s[0] + k[0])
    wp = max(w + p[1], (wo - 1) * s[1] + k[1])
    dxp = np.zeros((n, c, hp, wp), dy.dtype)
    for i in range(k[0]):
        for j in range(k[1]):
            dxp[:, :, i:i + s[0] * (ho - 1) + 1:s[0], j:j + s[1] * (wo - 1) + 1:s[1]] += g
    return np.ascontiguousarray(dxp[:, :, p[0]:p[0] + h, p[1]:p[1] + w])


def adaptive_ranges(size: int, out: int) -> list[tuple[int, int]]:
    """torch's adaptive windows: [floor(i*size/out), ceil((i+1)*size/out))."""
    return [((i * size) // out, -(-((i + 1) * size) // out)) for i in range(out)]


def adaptive_avg_pool2d_forward(x: np.ndarray, out: tuple[int, int]) -> np.ndarray:
    """y (N, C, oh, ow): the mean of each adaptive window."""
    n, c, h, w = x.shape
    if out == (1, 1):
        return x.mean(axis=(2, 3), keepdims=True, dtype=np.float64).astype(x.dtype)
    y = np.empty((n, c) + out, x.dtype)
    for a, (h0, h1) in enumerate(adaptive_ranges(h, out[0])):
        for b, (w0, w1) in enumerate(adaptive_ranges(w, out[1])):
            y[:, :, a, b] = x[:, :, h0:h1, w0:w1].mean(axis=(2, 3), dtype=np.float64)
    return y


def adaptive_avg_pool2d_backward(dy: np.ndarray, x_shape: tuple[int, int, int, int]) -> np.ndarray:
    n, c, h, w = x_shape
    oh, ow = dy.shape[2:]
    if (oh, ow) == (1, 1):
        return np.broadcast_to(dy / dy.dtype.type(h * w), x_shape).copy()
    dx = np.zeros(x_shape, dy.dtype)
    for a, (h0, h1) in enumerate(adaptive_ranges(h, oh)):
        for b, (w0, w1) in enumerate(adaptive_ranges(w, ow)):
            dx[:, :, h0:h1, w0:w1] += (dy[:, :, a, b] / dy.dtype.type((h1 - h0) * (w1 - w0)))[:, :, None, None]
    return dx
