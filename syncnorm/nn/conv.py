"""`Conv2d` as torch.nn.Conv2d: weight (out_channels, in_channels // groups, kh, kw), NCHW input."""
from __future__ import annotations

from typing import Any

import numpy as np

from ..functional import conv as conv_kernels
from . import init
from ._util import (accumulate_affine, check_device, check_float_input, check_grad_shape, check_ndim,
                    check_param_dtype, no_forward, param_dtype, weight_and_bias)
from .module import Module

__all__ = ["Conv2d"]


class Conv2d(Module):
    """x (N, C_in, H, W) or unbatched (C_in, H, W) -> (N, C_out, H_out, W_out).

    stride, padding (an int, a pair, "valid" or "same"), dilation and groups as in torch; zero
    padding only (padding_mode="zeros": other modes raise ValueError). Computed by im2col and one
    matrix product per group. Initialisation is torch's (kaiming_uniform with a=sqrt(5), bias
    U(-1/sqrt(fan_in), 1/sqrt(fan_in))) from `generator` (keyword) or the default generator.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int | tuple[int, int],
                 stride: int | tuple[int, int] = 1, padding: int | tuple[int, int] | str = 0,
                 dilation: int | tuple[int, int] = 1, groups: int = 1, bias: bool = True,
                 padding_mode: str = "zeros", device: Any = None, dtype: Any = None, *,
                 generator: np.random.Generator | None = None) -> None:
        super().__init__()
        check_device(device)
        if not isinstance(groups, (int, np.integer)) or groups <= 0:
            raise ValueError(f"groups must be a positive integer, got {groups!r}")
        if in_channels % groups != 0:
            raise ValueError(f"in_channels must be divisible by groups (in_channels={in_channels}, "
                             f"groups={groups})")
        if out_channels % groups != 0:
            raise ValueError(f"out_channels must be divisible by groups (out_channels={out_channels}, "
                             f"groups={groups})")
        if padding_mode != "zeros":
            raise ValueError(f"padding_mode {padding_mode!r} is not supported by syncnorm's Conv2d "
                             "(only 'zeros')")
        self.in_channels = int(in_channels)
        self.out_channels = int(out_channels)
        self.kernel_size = conv_kernels.pair(kernel_size, "kernel_size", 1)
        self.stride = conv_kernels.pair(stride, "stride", 1)
        self.dilation = conv_kernels.pair(dilation, "dilation", 1)
        self.groups = int(groups)
        self.padding_mode = padding_mode
        if isinstance(padding, str):
            if padding not in ("valid", "same"):
                raise ValueError(f"Invalid padding string {padding!r}, should be one of "
                                 "{'valid', 'same'}")
            if padding == "same":
                if self.stride != (1, 1):
                    raise ValueError("padding='same' is not supported for strided convolutions (got "
                                     f"stride={self.stride}); give the padding as numbers")
                total = [d * (k - 1) for d, k in zip(self.dilation, self.kernel_size)]
                if any(t % 2 for t in total):
                    raise ValueError("padding='same' needs an even total padding "
                                     f"(dilation * (kernel - 1) = {tuple(total)}); torch pads "
                                     "asymmetrically there, syncnorm does not")
                self._pad = (total[0] // 2, total[1] // 2)
            else:
                self._pad = (0, 0)
            self.padding: Any = padding
        else:
            self.padding = conv_kernels.pair(padding, "padding", 0)
            self._pad = self.padding
        dt = param_dtype(dtype)
        weight_and_bias(self, (self.out_channels, self.in_channels // self.groups) + self.kernel_size,
                        dt, bias)
        self._cache: tuple | None = None
        self.reset_parameters(generator)

    def reset_parameters(self, generator: np.random.Generator | None = None) -> None:
        """Draw weight and bias again with torch's initialisation (from `generator` or the default
        generator of `syncnorm.nn.init`).
        """
        init.default_reset_(self.weight.data, None if self.bias is None else self.bias.data, generator)

    def forward(self, x: np.ndarray) -> np.ndarray:
        """x (N, C_in, H, W) or (C_in, H, W) -> (N, C_out, H_out, W_out) (unbatched in, unbatched out),
        with H_out = floor((H + 2 padding - dilation (kernel - 1) - 1) / stride) + 1 and likewise W_out.
        Raises ValueError for another channel count or an input smaller than the dilated kernel.
        """
        x = check_float_input(x, "Conv2d")
        check_ndim(x, (3, 4), "Conv2d", "(N, C, H, W) or (C, H, W)")
        unbatched = x.ndim == 3
        x4 = x[None] if unbatched else x
        if x4.shape[1] != self.in_channels:
            raise ValueError(f"Conv2d: expected input with {self.in_channels} channels, got input of "
                             f"shape {tuple(x.shape)}")
        check_param_dtype(x, self.weight.dtype, "Conv2d")
        b = None if self.bias is None else self.bias.data
        y, cols = conv_kernels.conv2d_forward(x4, self.weight.data, b, self.stride, self._pad, self.dilation,
                                   self.groups)
        self._cache = (x.shape, x4.shape, cols, y.shape, unbatched)
        return y[0] if unbatched else y

    def backward(self, grad_output: np.ndarray) -> np.ndarray:
        """dy like the output -> dx like the input; accumulates weight and bias gradients."""
        if self._cache is None:
            raise no_forward("Conv2d")
        xshape, x4shape, cols, yshape, unbatched = self._cache
        dy = check_grad_shape(grad_output, yshape[1:] if unbatched else yshape, "Conv2d")
        self._cache = None
        dy4 = (dy[None] if unbatched else dy).astype(self.weight.dtype, copy=False)
        dx, dw, db = conv_kernels.conv2d_backward(dy4, cols, x4shape, self.weight.data, self.stride, self._pad,
                                       self.dilation, self.groups)
        accumulate_affine(self, dw, db)
        return dx.reshape(xshape)

    def extra_repr(self) -> str:
        s = (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
             f"stride={self.stride}")
        if self.padding != (0, 0):
            s += f", padding={self.padding}"
        if self.dilation != (1, 1):
            s += f", dilation={self.dilation}"
        if self.groups != 1:
            s += f", groups={self.groups}"
        if self.bias is None:
            s += ", bias=False"
        return s
