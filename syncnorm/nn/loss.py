"""`CrossEntropyLoss`, as torch.nn.CrossEntropyLoss (softmax + negative log likelihood)."""
from __future__ import annotations

from typing import Any

import numpy as np

from ..functional import loss as loss_kernels
from ._util import check_float_input, no_forward
from .module import Module

__all__ = ["CrossEntropyLoss"]


class CrossEntropyLoss(Module):
    """loss = criterion(logits, target); dlogits = criterion.backward(grad=1.0).

    logits: (N, C), (N, C, d1, ...) or unbatched (C,). target: class indices (int, shape (N,),
    (N, d1, ...) or ()) or class probabilities (float, the logits' shape). weight (C,),
    ignore_index, reduction ("mean" default, "sum", "none") and label_smoothing follow torch,
    including torch's divisor for a weighted mean (the sum of the targets' weights). The loss is a
    0-d array (or per-sample for "none") of the logits' dtype, computed in float64.
    `backward(grad_output)` returns dL/dlogits (grad_output a scalar, or per-sample for "none").
    """

    def __init__(self, weight: np.ndarray | None = None, size_average: Any = None, ignore_index: int = -100,
                 reduce: Any = None, reduction: str = "mean", label_smoothing: float = 0.0) -> None:
        super().__init__()
        if size_average is not None or reduce is not None:
            raise ValueError("size_average and reduce are deprecated in torch and not supported; use "
                             "reduction='mean' | 'sum' | 'none'")
        if reduction not in loss_kernels.REDUCTIONS:
            raise ValueError(f"{reduction} is not a valid value for reduction (one of {loss_kernels.REDUCTIONS})")
        if not 0.0 <= float(label_smoothing) <= 1.0:
            raise ValueError(f"label_smoothing must be between 0.0 and 1.0. Got: {label_smoothing}")
        if weight is not None:
            weight = np.asarray(weight, dtype=np.float64)
            if weight.ndim != 1:
                raise ValueError(f"weight must be a 1-D array of class weights, got shape {weight.shape}")
            self.register_buffer("weight", weight)
        else:
            self.register_buffer("weight", None)
        self.ignore_index = int(ignore_index)
        self.reduction = reduction
        self.label_smoothing = float(label_smoothing)
        self._cache: tuple | None = None

    def forward(self, input: np.ndarray, target: np.ndarray) -> np.ndarray:  # noqa: A002
        """loss = criterion(logits, target): see the class docstring for the shapes. Returns a 0-d
        array ("mean", "sum") or the per-sample losses ("none"), in the logits' dtype.
        """
        z = check_float_input(input, "CrossEntropyLoss")
        if z.ndim == 0:
            raise ValueError("CrossEntropyLoss: expected logits of shape (C,), (N, C) or (N, C, d1, ...), "
                             "got a 0-d array")
        c = z.shape[0] if z.ndim == 1 else z.shape[1]
        t = np.asarray(target)
        if t.dtype.kind == "f":
            if t.shape != z.shape:
                raise ValueError(f"CrossEntropyLoss: probability targets must have the logits' shape "
                                 f"{tuple(z.shape)}, got {tuple(t.shape)}")
        elif t.dtype.kind in "iu":
            want = () if z.ndim == 1 else (z.shape[0],) + tuple(z.shape[2:])
            if t.shape != want:
                raise ValueError(f"CrossEntropyLoss: expected class-index target of shape {want} for "
                                 f"logits of shape {tuple(z.shape)}, got {tuple(t.shape)}")
        else:
            raise TypeError(f"CrossEntropyLoss: target must hold class indices (integers) or class "
                            f"probabilities (floats), got dtype {t.dtype}")
        if self.weight is not None and self.weight.shape != (c,):
            raise ValueError(f"CrossEntropyLoss: weight has shape {self.weight.shape}, expected ({c},) "
                             "for the logits' number of classes")
        loss, logp, a = loss_kernels.cross_entropy_forward(z, t, self.weight, self.ignore_index,
                                                self.label_smoothing, self.reduction)
        self._cache = (z.shape, z.dtype, logp, a, loss.shape)
        return loss.astype(z.dtype)

    def backward(self, grad_output: np.ndarray | float = 1.0) -> np.ndarray:
        """dL/dlogits, shaped and typed like the logits."""
        if self._cache is None:
            raise no_forward("CrossEntropyLoss")
        shape, dtype, logp, a, lshape = self._cache
        go = np.asarray(grad_output, dtype=np.float64)
        if go.shape not in ((), lshape) and go.size != 1:
            raise ValueError(f"CrossEntropyLoss.backward: grad_output must be a scalar or of the "
                             f"loss's shape {lshape}, got {go.shape}")
        if self.reduction == "none" and go.shape == ():
            go = np.broadcast_to(go, lshape)
        self._cache = None
        return loss_kernels.cross_entropy_backward(logp, a, shape, go, self.reduction).astype(dtype)

    def extra_repr(self) -> str:
        return f"reduction={self.reduction}" if self.reduction != "mean" else ""
