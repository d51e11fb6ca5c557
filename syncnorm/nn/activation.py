"""`ReLU`, as torch.nn.ReLU (its gradient at 0 is 0, as in torch)."""
from __future__ import annotations

import numpy as np

from ._util import check_float_input, check_grad_shape, no_forward
from .module import Module

__all__ = ["ReLU"]


class ReLU(Module):
    """y = max(x, 0), any shape. `inplace=True` overwrites the input array."""

    def __init__(self, inplace: bool = False) -> None:
        super().__init__()
        self.inplace = bool(inplace)
        self._mask: np.ndarray | None = None

    def forward(self, x: np.ndarray) -> np.ndarray:
        """max(x, 0) elementwise, any shape and float dtype; NaN passes through as in torch."""
        x = check_float_input(x, "ReLU")
        mask = ~(x <= 0)  # NaN passes, forward and backward, as in torch (threshold_backward)
        self._mask = mask
        if self.inplace:
            np.maximum(x, 0, out=x)
            return x
        return np.where(mask, x, x.dtype.type(0))

    def backward(self, grad_output: np.ndarray) -> np.ndarray:
        """grad_output where the forward input was > 0 (or NaN), else 0."""
        if self._mask is None:
            raise no_forward("ReLU")
        mask, self._mask = self._mask, None
        dy = check_grad_shape(grad_output, mask.shape, "ReLU")
        return np.where(mask, dy, dy.dtype.type(0))

    def extra_repr(self) -> str:
        return "inplace=True" if self.inplace else ""
