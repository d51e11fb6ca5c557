"""GroupNorm with torch.nn's constructor, state_dict keys and semantics.

The C channels of each sample are split into `num_groups` groups of C/G consecutive channels; each
(sample, group) is normalized with its own mean and biased variance over its channels and
positions, then scaled and shifted per channel. Input (N, C, *), any rank >= 2; training and eval
behave alike (no running statistics). Groups of a single value are refused (see `GroupNorm`).

With `affine=False`, torch silently accepts an input whose channel count differs from
`num_channels` (when the groups still divide it); syncnorm accepts it too but warns, as torch's
InstanceNorm does.
"""
from __future__ import annotations

import numbers
import warnings
from typing import Any

import numpy as np

from ..functional.norms import channel_backward, channel_step
from ._util import (accumulate_affine, affine_parameters, check_device, check_eps,
                    check_float_input, check_grad_shape, no_forward, param_dtype, reset_affine)
from .module import Module

__all__ = ["GroupNorm"]


class GroupNorm(Module):
    """GroupNorm(num_groups, num_channels, eps=1e-5, affine=True, device=None, dtype=None, *,
    bias=True): weight (C,) ones and bias (C,) zeros when affine.

    Unlike torch: a non-empty input whose groups hold one value each (C/G = 1 channel and no
    positions, e.g. (N, C) with G = C) raises a ValueError at any batch size. Every output would be
    the bias and the input would get no gradient; torch 2.13 raises only for a batch of one sample
    and returns the bias silently otherwise. An empty batch (N = 0) is valid.
    """

    def __init__(self, num_groups: int, num_channels: int, eps: float = 1e-5, affine: bool = True,
                 device: Any = None, dtype: Any = None, *, bias: bool = True) -> None:
        super().__init__()
        check_device(device)
        for label, v in (("num_groups", num_groups), ("num_channels", num_channels)):
            if not isinstance(v, numbers.Integral) or isinstance(v, bool):
                raise TypeError(f"{label} must be an int, got {type(v).__name__}")
        if num_groups <= 0:
            raise ValueError(f"num_groups must be positive, got {num_groups}")
        if num_channels % num_groups != 0:
            raise ValueError(f"num_channels ({num_channels}) must be divisible by num_groups "
                             f"({num_groups})")
        dt = param_dtype(dtype)
        self.num_groups = int(num_groups)
        self.num_channels = int(num_channels)
        self.eps = check_eps(eps)
        self.affine = bool(affine)
        affine_parameters(self, (self.num_channels,), dt, self.affine, bias)
        self._cache: tuple | None = None

    def reset_parameters(self) -> None:
        """weight to ones and bias to zeros (when affine)."""
        reset_affine(self)

    def extra_repr(self) -> str:
        return ("{num_groups}, {num_channels}, eps={eps}, affine={affine}, bias={b}"
                .format(**self.__dict__, b=self.bias is not None))

    def _check_channels(self, x: np.ndarray) -> None:
        C, G = x.shape[1], self.num_groups
        if C == self.num_channels:
            return
        if self.affine:
            raise ValueError(f"GroupNorm: expected input with {self.num_channels} channels (the size "
                             f"of weight), got input of shape {tuple(x.shape)}")
        if C % G != 0:
            raise ValueError(f"GroupNorm: expected the number of channels in the input to be "
                             f"divisible by num_groups={G}, got input of shape {tuple(x.shape)}")
        warnings.warn(f"GroupNorm: input has {C} channels but num_channels={self.num_channels}; "
                      "normalizing its groups anyway because affine=False", UserWarning,
                      stacklevel=3)

    def forward(self, x: np.ndarray) -> np.ndarray:
        """x: (N, C, *) float16/32/64 -> y of the same shape and dtype."""
        x = check_float_input(x, "GroupNorm")
        if x.ndim < 2:
            raise ValueError(f"GroupNorm: expected input of at least 2 dimensions (N, C, *), got "
                             f"{x.ndim}D input of shape {tuple(x.shape)}")
        self._check_channels(x)
        N, C = x.shape[:2]
        G = self.num_groups
        S = int(np.prod(x.shape[2:], dtype=np.int64))
        if N > 0 and (C // G) * S == 1:
            raise ValueError(
                f"GroupNorm: each group holds 1 value (1 channel x 1 position), so the output "
                f"would be the bias whatever the input; got input of shape {tuple(x.shape)} with "
                f"{G} groups (torch raises this only for a batch of 1 sample). Use fewer groups, "
                f"or normalize an input with positions")
        x3 = np.ascontiguousarray(x).reshape(N, C, S)
        w = None if self.weight is None else self.weight.data
        b = None if self.bias is None else self.bias.data
        y3, mean, _, invstd = channel_step(x3, G, self.eps, w, b)
        self._cache = (x.shape, x.dtype, x3, mean, invstd)
        return y3.reshape(x.shape)

    def backward(self, grad_output: np.ndarray) -> np.ndarray:
        """grad_output (N, C, *) -> grad_input; adds into weight/bias .grad."""
        if self._cache is None:
            raise no_forward("GroupNorm")
        shape, dtype, x3, mean, invstd = self._cache
        dy = check_grad_shape(grad_output, shape, "GroupNorm", of="input")
        self._cache = None
        dy3 = np.ascontiguousarray(dy, dtype=dtype).reshape(x3.shape)
        w = None if self.weight is None else self.weight.data
        dx3, dw, db = channel_backward(dy3, x3, self.num_groups, mean, invstd, w)
        accumulate_affine(self, dw, db)
        return dx3.reshape(shape)
