"""Pooling layers as torch.nn: `MaxPool2d`, `AvgPool2d`, `AdaptiveAvgPool2d` (NCHW or CHW input)."""
from __future__ import annotations

from typing import Any

import numpy as np

from ..functional import pooling as pooling_kernels
from ..functional.conv import pair
from ._util import check_float_input, check_grad_shape, check_ndim, no_forward
from .module import Module

__all__ = ["MaxPool2d", "AvgPool2d", "AdaptiveAvgPool2d"]


def _as4(x: np.ndarray, who: str) -> tuple[np.ndarray, bool]:
    x = check_float_input(x, who)
    check_ndim(x, (3, 4), who, "(N, C, H, W) or (C, H, W)")
    return (x[None], True) if x.ndim == 3 else (x, False)


class _Pool(Module):
    def __init__(self) -> None:
        super().__init__()
        self._cache: tuple | None = None

    def _out(self, y: np.ndarray, unbatched: bool) -> np.ndarray:
        return y[0] if unbatched else y

    def _take(self, grad_output: np.ndarray, who: str) -> tuple[tuple, np.ndarray]:
        if self._cache is None:
            raise no_forward(who)
        cache, self._cache = self._cache, None
        yshape, unbatched = cache[0], cache[1]
        dy = check_grad_shape(grad_output, yshape[1:] if unbatched else yshape, who)
        return cache, (dy[None] if unbatched else dy)


class MaxPool2d(_Pool):
    """Max over kernel_size windows (stride defaults to kernel_size), -inf padding, dilation,
    ceil_mode; ties go to the first maximum, NaN propagates. `return_indices` is not supported."""

    def __init__(self, kernel_size: int | tuple[int, int], stride: int | tuple[int, int] | None = None,
                 padding: int | tuple[int, int] = 0, dilation: int | tuple[int, int] = 1,
                 return_indices: bool = False, ceil_mode: bool = False) -> None:
        super().__init__()
        if return_indices:
            raise ValueError("MaxPool2d(return_indices=True) is not supported by syncnorm (the layer "
                             "keeps the indices for its own backward)")
        self.kernel_size = kernel_size
        self.stride = stride if stride is not None else kernel_size
        self.padding = padding
        self.dilation = dilation
        self.return_indices = False
        self.ceil_mode = bool(ceil_mode)
        self._k = pair(kernel_size, "kernel_size", 1)
        self._s = pair(self.stride, "stride", 1)
        self._p = pair(padding, "padding", 0)
        self._d = pair(dilation, "dilation", 1)

    def forward(self, x: np.ndarray) -> np.ndarray:
        """x (N, C, H, W) or (C, H, W) -> the maximum of each window, (N, C, H_out, W_out) (unbatched
        in, unbatched out), in x's dtype.
        """
        x4, unbatched = _as4(x, "MaxPool2d")
        y, arg = pooling_kernels.max_pool2d_forward(x4, self._k, self._s, self._p, self._d, self.ceil_mode)
        out = self._out(y, unbatched)
        self._cache = (out.shape, unbatched, arg, x4.shape)
        return out

    def backward(self, grad_output: np.ndarray) -> np.ndarray:
        """grad_output shaped like the forward's output -> gradient shaped like its input."""
        (yshape, unbatched, arg, xshape), dy = self._take(grad_output, "MaxPool2d")
        dx = pooling_kernels.max_pool2d_backward(dy, arg, xshape, self._k, self._s, self._p, self._d)
        return dx[0] if unbatched else dx

    def extra_repr(self) -> str:
        return (f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}, "
                f"dilation={self.dilation}, ceil_mode={self.ceil_mode}")


class AvgPool2d(_Pool):
    """Mean over kernel_size windows with torch's divisor rules (count_include_pad,
    divisor_override, ceil_mode)."""

    def __init__(self, kernel_size: int | tuple[int, int], stride: int | tuple[int, int] | None = None,
                 padding: int | tuple[int, int] = 0, ceil_mode: bool = False,
                 count_include_pad: bool = True, divisor_override: int | None = None) -> None:
        super().__init__()
        if divisor_override is not None and (not isinstance(divisor_override, (int, np.integer))
                                             or divisor_override == 0):
            raise ValueError(f"divisor must be a non-zero integer, got {divisor_override!r}")
        self.kernel_size = kernel_size
        self.stride = stride if stride is not None else kernel_size
        self.padding = padding
        self.ceil_mode = bool(ceil_mode)
        self.count_include_pad = bool(count_include_pad)
        self.divisor_override = divisor_override
        self._k = pair(kernel_size, "kernel_size", 1)
        self._s = pair(self.stride, "stride", 1)
        self._p = pair(padding, "padding", 0)

    def forward(self, x: np.ndarray) -> np.ndarray:
        """x (N, C, H, W) or (C, H, W) -> the mean of each window, (N, C, H_out, W_out) (unbatched
        in, unbatched out), in x's dtype.
        """
        x4, unbatched = _as4(x, "AvgPool2d")
        y = pooling_kernels.avg_pool2d_forward(x4, self._k, self._s, self._p, self.ceil_mode,
                                 self.count_include_pad, self.divisor_override)
        out = self._out(y, unbatched)
        self._cache = (out.shape, unbatched, x4.shape)
        return out

    def backward(self, grad_output: np.ndarray) -> np.ndarray:
        """grad_output shaped like the forward's output -> gradient shaped like its input."""
        (yshape, unbatched, xshape), dy = self._take(grad_output, "AvgPool2d")
        dx = pooling_kernels.avg_pool2d_backward(dy, xshape, self._k, self._s, self._p, self.count_include_pad,
                                   self.divisor_override)
        return dx[0] if unbatched else dx

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}"


class AdaptiveAvgPool2d(_Pool):
    """Mean over torch's adaptive windows to a fixed output size; `output_size` is an int, a pair,
    or a pair with None (keep that input dimension). AdaptiveAvgPool2d(1) is global average pooling."""

    def __init__(self, output_size: Any) -> None:
        super().__init__()
        self.output_size = output_size
        vals = (output_size, output_size) if not isinstance(output_size, (tuple, list)) \
            else tuple(output_size)
        if len(vals) != 2 or any(v is not None and (not isinstance(v, (int, np.integer)) or v < 0)
                                 for v in vals):
            raise ValueError(f"output_size must be an int >= 0 or a pair of them (or None), got "
                             f"{output_size!r}")
        self._o = vals

    def forward(self, x: np.ndarray) -> np.ndarray:
        """x (N, C, H, W) or (C, H, W) -> the mean of each window, (N, C, H_out, W_out) (unbatched
        in, unbatched out), in x's dtype.
        """
        x4, unbatched = _as4(x, "AdaptiveAvgPool2d")
        if x4.shape[2] == 0 or x4.shape[3] == 0:
            raise ValueError(f"AdaptiveAvgPool2d: expected non-empty spatial dimensions, got input of "
                             f"shape {tuple(x.shape)}")
        out = tuple(int(o) if o is not None else s for o, s in zip(self._o, x4.shape[2:]))
        y = self._out(pooling_kernels.adaptive_avg_pool2d_forward(x4, out), unbatched)
        self._cache = (y.shape, unbatched, x4.shape)
        return y

    def backward(self, grad_output: np.ndarray) -> np.ndarray:
        """grad_output shaped like the forward's output -> gradient shaped like its input."""
        (yshape, unbatched, xshape), dy = self._take(grad_output, "AdaptiveAvgPool2d")
        dx = pooling_kernels.adaptive_avg_pool2d_backward(dy, xshape)
        return dx[0] if unbatched else dx

    def extra_repr(self) -> str:
        return f"output_size={self.output_size}"
