"""`Linear`: y = x W^T + b, as torch.nn.Linear (weight (out_features, in_features))."""
from __future__ import annotations

from typing import Any

import numpy as np

from . import init
from ._util import (check_device, check_float_input, check_grad_shape, check_param_dtype, no_forward,
                    param_dtype, weight_and_bias)
from .module import Module

__all__ = ["Linear"]


class Linear(Module):
    """x (*, in_features) -> y (*, out_features).

    Initialisation is torch's: weight ~ kaiming_uniform(a=sqrt(5)) = U(-1/sqrt(in), 1/sqrt(in)),
    bias ~ U(-1/sqrt(in), 1/sqrt(in)), drawn from `generator` (keyword; a numpy Generator) or
    `syncnorm.nn.init`'s default generator.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, device: Any = None,
                 dtype: Any = None, *, generator: np.random.Generator | None = None) -> None:
        super().__init__()
        check_device(device)
        in_features, out_features = int(in_features), int(out_features)
        if in_features < 0 or out_features < 0:
            raise ValueError(f"in_features and out_features must be >= 0, got {in_features} and "
                             f"{out_features}")
        dt = param_dtype(dtype)
        self.in_features = in_features
        self.out_features = out_features
        weight_and_bias(self, (out_features, in_features), dt, bias)
        self._cache: tuple | None = None
        self.reset_parameters(generator)

    def reset_parameters(self, generator: np.random.Generator | None = None) -> None:
        """Draw weight and bias again with torch's initialisation (from `generator` or the default
        generator of `syncnorm.nn.init`).
        """
        init.default_reset_(self.weight.data, None if self.bias is None else self.bias.data, generator)

    def forward(self, x: np.ndarray) -> np.ndarray:
        """x (*, in_features) -> y = x @ weight.T + bias, shape (*, out_features), in the layer's dtype.
        Raises ValueError when the last dimension is not in_features and TypeError when x's dtype is
        not the parameters'.
        """
        x = check_float_input(x, "Linear")
        if x.ndim < 1 or x.shape[-1] != self.in_features:
            raise ValueError(f"Linear: expected input of shape (*, {self.in_features}), got "
                             f"{tuple(x.shape)}")
        check_param_dtype(x, self.weight.dtype, "Linear")
        x2 = x.reshape(-1, self.in_features)
        y = x2 @ self.weight.data.T
        if self.bias is not None:
            y += self.bias.data
        self._cache = (x.shape, x2)
        return y.reshape(x.shape[:-1] + (self.out_features,))

    def backward(self, grad_output: np.ndarray) -> np.ndarray:
        """dy (*, out) -> dx (*, in); accumulates weight and bias gradients."""
        if self._cache is None:
            raise no_forward("Linear")
        shape, x2 = self._cache
        dy = check_grad_shape(grad_output, shape[:-1] + (self.out_features,), "Linear")
        self._cache = None
        dy2 = dy.reshape(-1, self.out_features).astype(self.weight.dtype, copy=False)
        self.weight.accumulate_grad(dy2.T @ x2)
        if self.bias is not None:
            self.bias.accumulate_grad(dy2.sum(axis=0))
        return (dy2 @ self.weight.data).reshape(shape)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}")
