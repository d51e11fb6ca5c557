"""Softmax cross-entropy as torch.nn.functional.cross_entropy computes it, forward and backward.

No state, no MPI. Every variant is one weighted sum over classes: with logp = log_softmax(z),
    loss_i = -sum_c A[i, c] * logp[i, c]
where the coefficients A hold the class weights, the label smoothing and the reduction's divisor.
The gradient is then dz[i, c] = softmax[i, c] * sum_c A[i, c] - A[i, c] (times grad_output).

Class-index targets (torch's rules): A[i, c] = (1 - eps) w[y_i] [c == y_i] + (eps / C) w[c]
for non-ignored samples (0 for ignored ones); "mean" divides by sum_i w[y_i] over non-ignored
samples (NaN when every sample is ignored, as in torch). Probability targets: q = (1 - eps) t + eps/C,
A[i, c] = w[c] q[i, c]; "mean" divides by the number of samples. Computed in float64.
"""
from __future__ import annotations

import numpy as np

__all__ = ["log_softmax", "cross_entropy_coefficients", "cross_entropy_forward",
           "cross_entropy_backward"]

REDUCTIONS = ("mean", "sum", "none")


def log_softmax(z: np.ndarray, axis: int = -1) -> np.ndarray:
    """Numerically stable log-softmax in float64."""
    z = z.astype(np.float64)
    m = np.max(z, axis=axis, keepdims=True)
    m = np.where(np.isfinite(m), m, 0.0)
    s = z - m
    return s - np.log(np.sum(np.exp(s), axis=axis, keepdims=True))


def _to_rows(z: np.ndarray) -> np.ndarray:
    """(N, C, d1, ...) -> (N*d1*..., C); (C,) -> (1, C)."""
    if z.ndim == 1:
        return z[None, :]
    if z.ndim == 2:
        return z
    c = z.shape[1]
    return np.moveaxis(z, 1, -1).reshape(-1, c)


def _from_rows(rows: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    if len(shape) == 1:
        return rows[0]
    if len(shape) == 2:
        return rows
    moved = (shape[0],) + tuple(shape[2:]) + (shape[1],)
    return np.moveaxis(rows.reshape(moved), -1, 1)


def cross_entropy_coefficients(z_shape: tuple[int, ...], target: np.ndarray, weight: np.ndarray | None,
                               ignore_index: int, label_smoothing: float, reduction: str
                               ) -> np.ndarray:
    """A (rows, C) float64 as described in the module docstring (per-row, before grad_output)."""
    c = z_shape[0] if len(z_shape) == 1 else z_shape[1]
    w = np.ones(c) if weight is None else weight.astype(np.float64)
    eps = float(label_smoothing)
    if target.dtype.kind == "f":  # class probabilities, same shape as the input
        q = _to_rows(target).astype(np.float64)
        if eps > 0:
            q = q * (1 - eps) + eps / c
        a = q * w
        if reduction == "mean":
            a = a / a.shape[0]
        return a
    t = np.asarray(target).reshape(-1).astype(np.int64)  # rows in the order of _to_rows(z)
    keep = t != ignore_index
    bad = keep & ((t < 0) | (t >= c))
    if np.any(bad):
        raise IndexError(f"Target {int(t[bad][0])} is out of bounds (expected class indices in "
                         f"[0, {c - 1}] or ignore_index={ignore_index})")
    rows = t.size
    a = np.zeros((rows, c))
    tk = np.where(keep, t, 0)
    a[np.arange(rows), tk] = (1 - eps) * w[tk]
    if eps > 0:
        a += (eps / c) * w
    a[~keep] = 0.0
    if reduction == "mean":
        a = a / np.sum(w[tk] * keep) if np.any(keep) else a * np.nan
    return a


def cross_entropy_forward(z: np.ndarray, target: np.ndarray, weight: np.ndarray | None = None,
                          ignore_index: int = -100, label_smoothing: float = 0.0,
                          reduction: str = "mean") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(loss (0-d, or per-sample for "none", float64), logp rows, A) for z (N, C, *) or (C,)."""
    if reduction not in REDUCTIONS:
        raise ValueError(f"{reduction} is not a valid value for reduction (one of {REDUCTIONS})")
    logp = log_softmax(_to_rows(z), axis=-1)
    a = cross_entropy_coefficients(z.shape, target, weight, ignore_index, label_smoothing, reduction)
    with np.errstate(invalid="ignore"):
        per_row = -np.sum(np.where(a != 0, a * logp, 0.0), axis=-1)
    if reduction == "none":
        if z.ndim == 1:
            return per_row.reshape(()), logp, a
        return per_row.reshape((z.shape[0],) + tuple(z.shape[2:])), logp, a
    return np.asarray(per_row.sum()), logp, a


def cross_entropy_backward(logp: np.ndarray, a: np.ndarray, z_shape: tuple[int, ...],
                           grad_output: np.ndarray | float, reduction: str) -> np.ndarray:
    """dL/dz in float64, shaped like z."""
    g = np.exp(logp) * a.sum(axis=-1, keepdims=True) - a
    go = np.asarray(grad_output, dtype=np.float64)
    if reduction == "none":
        g = g * go.reshape(-1, 1)
    else:
        g = g * float(go)
    return _from_rows(g, tuple(z_shape))
