"""The compiled engine's LocalResponseNorm (see `lrn_kernels`), with the signatures of
`functional.lrn`'s numpy functions it stands in for; x3, dy3: contiguous (N, C, S) arrays of
float16 (as its bits), float32 or float64."""
from __future__ import annotations

import numpy as np

from . import lrn_kernels
from .batch_norm import raw

__all__ = ["supports", "forward", "backward"]


def supports(beta: float) -> bool:
    """Whether D^-beta has a compiled short form (other betas: the numpy kernel)."""
    return float(beta) in lrn_kernels.SHORT_POWERS


def forward(x3: np.ndarray, size: int, alpha: float, beta: float, k: float) -> np.ndarray:
    """y (N, C, S) in x3's dtype; `supports(beta)`."""
    y = np.empty(x3.shape, x3.dtype)
    lrn_kernels.lrn_forward(raw(x3), int(size), float(alpha), float(k),
                            lrn_kernels.SHORT_POWERS[float(beta)], raw(y))
    return y


def backward(dy3: np.ndarray, x3: np.ndarray, size: int, alpha: float, beta: float,
             k: float) -> np.ndarray:
    """dx (N, C, S) in x3's dtype; `supports(beta)`."""
    dx = np.empty(x3.shape, x3.dtype)
    lrn_kernels.lrn_backward(raw(dy3), raw(x3), int(size), float(alpha), float(beta), float(k),
                             lrn_kernels.SHORT_POWERS[float(beta)], raw(dx))
    return dx
