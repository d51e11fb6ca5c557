"""LayerNorm with torch.nn's constructor, state_dict keys and semantics.

Normalizes over the trailing `normalized_shape` dimensions of the input (*B, *normalized_shape):
each of the prod(B) rows gets its own mean and biased variance; then an elementwise affine with
weight and bias of shape `normalized_shape`. Training and eval behave alike.
"""
from __future__ import annotations

import numbers
from typing import Any, Sequence

import numpy as np

from ..functional.norms import element_backward, element_step
from ._util import (accumulate_affine, affine_parameters, check_device, check_eps,
                    check_float_input, check_grad_shape, no_forward, param_dtype, reset_affine)
from .module import Module

__all__ = ["LayerNorm"]


def _as_shape(normalized_shape: int | Sequence[int]) -> tuple[int, ...]:
    if isinstance(normalized_shape, numbers.Integral) and not isinstance(normalized_shape, bool):
        return (int(normalized_shape),)
    try:
        shape = tuple(normalized_shape)
    except TypeError:
        raise TypeError("normalized_shape must be an int or a sequence of ints, got "
                        f"{type(normalized_shape).__name__}") from None
    for s in shape:
        if not isinstance(s, numbers.Integral) or isinstance(s, bool) or s < 0:
            raise TypeError(f"normalized_shape must hold non-negative ints, got {normalized_shape!r}")
    return tuple(int(s) for s in shape)


class LayerNorm(Module):
    """LayerNorm(normalized_shape, eps=1e-5, elementwise_affine=True, bias=True, device=None,
    dtype=None): weight ones and bias zeros of shape `normalized_shape` when elementwise_affine."""

    def __init__(self, normalized_shape: int | Sequence[int], eps: float = 1e-5,
                 elementwise_affine: bool = True, bias: bool = True, device: Any = None,
                 dtype: Any = None) -> None:
        super().__init__()
        check_device(device)
        dt = param_dtype(dtype)
        self.normalized_shape = _as_shape(normalized_shape)
        self.eps = check_eps(eps)
        self.elementwise_affine = bool(elementwise_affine)
        affine_parameters(self, self.normalized_shape, dt, self.elementwise_affine, bias)
        self._cache: tuple | None = None

    def reset_parameters(self) -> None:
        """weight to ones and bias to zeros (when elementwise_affine)."""
        reset_affine(self)

    def extra_repr(self) -> str:
        return ("{normalized_shape}, eps={eps}, elementwise_affine={elementwise_affine}, bias={b}"
                .format(**self.__dict__, b=self.bias is not None))

    def _check_shape(self, x: np.ndarray) -> None:
        k = len(self.normalized_shape)
        if x.ndim < k or tuple(x.shape[x.ndim - k:]) != self.normalized_shape:
            want = ", ".join(["*"] + [str(s) for s in self.normalized_shape])
            raise ValueError(f"LayerNorm: given normalized_shape={list(self.normalized_shape)}, "
                             f"expected input with shape [{want}], but got input of shape "
                             f"{list(x.shape)}")

    def forward(self, x: np.ndarray) -> np.ndarray:
        """x: (*B, *normalized_shape) float16/32/64 -> y of the same shape and dtype."""
        x = check_float_input(x, "LayerNorm")
        self._check_shape(x)
        D = int(np.prod(self.normalized_shape, dtype=np.int64))
        R = int(np.prod(x.shape[:x.ndim - len(self.normalized_shape)], dtype=np.int64))
        x2 = np.ascontiguousarray(x).reshape(R, D)
        w = None if self.weight is None else self.weight.data.reshape(D)
        b = None if self.bias is None else self.bias.data.reshape(D)
        y2, mean, _, invstd = element_step(x2, self.eps, w, b)
        self._cache = (x.shape, x.dtype, x2, mean, invstd)
        return y2.reshape(x.shape)

    def backward(self, grad_output: np.ndarray) -> np.ndarray:
        """grad_output (shape of the forward input) -> grad_input; adds into weight/bias .grad."""
        if self._cache is None:
            raise no_forward("LayerNorm")
        shape, dtype, x2, mean, invstd = self._cache
        dy = check_grad_shape(grad_output, shape, "LayerNorm", of="input")
        self._cache = None
        dy2 = np.ascontiguousarray(dy, dtype=dtype).reshape(x2.shape)
        w = None if self.weight is None else self.weight.data.reshape(-1)
        dx2, dw, db = element_backward(dy2, x2, mean, invstd, w)
        accumulate_affine(self, dw, db)
        return dx2.reshape(shape)
