"""LocalResponseNorm with torch.nn's constructor and torch's exact formula.

y = x / (k + alpha / size * sum of x^2 over a window of `size` channels)^beta, the window
zero-padded by (size // 2, (size - 1) // 2) along the channels and always divided by `size`
(see `syncnorm.functional.lrn`). Input (N, C, *) of rank >= 3; no parameters, no state.
"""
from __future__ import annotations

import numbers

import numpy as np

from ..functional.lrn import lrn_backward, lrn_forward
from ._util import check_float_input, check_grad_shape, no_forward
from .module import Module

__all__ = ["LocalResponseNorm"]


class LocalResponseNorm(Module):
    """LocalResponseNorm(size, alpha=1e-4, beta=0.75, k=1.0).

    torch accepts size <= 0 at construction and fails in the first forward; syncnorm raises at
    construction.
    """

    def __init__(self, size: int, alpha: float = 1e-4, beta: float = 0.75, k: float = 1.0) -> None:
        super().__init__()
        if not isinstance(size, numbers.Integral) or isinstance(size, bool):
            raise TypeError(f"size must be an int, got {type(size).__name__}")
        if size <= 0:
            raise ValueError(f"size must be a positive number of channels, got {size}")
        self.size = int(size)
        self.alpha = float(alpha)
        self.beta = float(beta)
        self.k = float(k)
        self._cache: tuple | None = None

    def extra_repr(self) -> str:
        return "{size}, alpha={alpha}, beta={beta}, k={k}".format(**self.__dict__)

    def _as3(self, x: np.ndarray) -> np.ndarray:
        N, C = x.shape[:2]
        S = int(np.prod(x.shape[2:], dtype=np.int64))
        return np.ascontiguousarray(x).reshape(N, C, S)

    def forward(self, x: np.ndarray) -> np.ndarray:
        """x: (N, C, *) of rank >= 3, float16/32/64 -> y of the same shape and dtype."""
        x = check_float_input(x, "LocalResponseNorm")
        if x.ndim < 3:
            raise ValueError(f"LocalResponseNorm: expected 3D or higher dimensionality input (N, C, "
                             f"*), got {x.ndim}D input of shape {tuple(x.shape)}")
        x3 = self._as3(x)
        y = lrn_forward(x3, self.size, self.alpha, self.beta, self.k).reshape(x.shape)
        self._cache = (x.shape, x.dtype, x3)
        return y

    def backward(self, grad_output: np.ndarray) -> np.ndarray:
        """grad_output (shape of the forward input) -> grad_input."""
        if self._cache is None:
            raise no_forward("LocalResponseNorm")
        shape, dtype, x3 = self._cache
        dy = check_grad_shape(grad_output, shape, "LocalResponseNorm", of="input")
        self._cache = None
        dy3 = np.ascontiguousarray(dy, dtype=dtype).reshape(x3.shape)
        return lrn_backward(dy3, x3, self.size, self.alpha, self.beta, self.k).reshape(shape)
