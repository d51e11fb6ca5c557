"""Plain float64 numpy formulas of the normalization family (written from the definitions, whole
arrays at once, no blocking) and a central-difference gradient checker: the independent
references the family tests compare the blocked kernels with."""
from __future__ import annotations

from typing import Callable

import numpy as np


def group_norm_ref(x, G, w, b, eps):
    """GroupNorm forward in float64: x (N, C, *)."""
    x = np.asarray(x, np.float64)
    N, C = x.shape[:2]
    g = x.reshape(N, G, -1)
    mean = g.mean(axis=2, keepdims=True)
    var = ((g - mean) ** 2).mean(axis=2, keepdims=True)
    y = ((g - mean) / np.sqrt(var + eps)).reshape(x.shape)
    sh = (1, C) + (1,) * (x.ndim - 2)
    if w is not None:
        y = y * np.asarray(w, np.float64).reshape(sh)
    if b is not None:
        y = y + np.asarray(b, np.float64).reshape(sh)
    return y


def instance_norm_ref(x, w, b, eps):
    """InstanceNorm forward with the input's statistics, x (N, C, *)."""
    return group_norm_ref(x, x.shape[1], w, b, eps)


def layer_norm_ref(x, k, w, b, eps):
    """LayerNorm over the last k dims."""
    x = np.asarray(x, np.float64)
    axes = tuple(range(x.ndim - k, x.ndim))
    mean = x.mean(axis=axes, keepdims=True)
    var = ((x - mean) ** 2).mean(axis=axes, keepdims=True)
    y = (x - mean) / np.sqrt(var + eps)
    if w is not None:
        y = y * np.asarray(w, np.float64)
    if b is not None:
        y = y + np.asarray(b, np.float64)
    return y


def lrn_ref(x, size, alpha, beta, k):
    """torch's F.local_response_norm written literally: pad the squares, average a window."""
    x = np.asarray(x, np.float64)
    C = x.shape[1]
    sq = x * x
    pad = [(0, 0)] * x.ndim
    pad[1] = (size // 2, (size - 1) // 2)
    sq = np.pad(sq, pad)
    avg = sum(sq[:, i:i + C] for i in range(size)) / size
    return x / (k + alpha * avg) ** beta


def row_backward_ref(dy, x, w, eps, axes):
    """Input gradient of y = xhat * w (+ b), xhat normalized over `axes` (w broadcast to x)."""
    x = np.asarray(x, np.float64)
    dy = np.asarray(dy, np.float64)
    n = np.prod([x.shape[a] for a in axes])
    mean = x.mean(axis=axes, keepdims=True)
    inv = 1.0 / np.sqrt(((x - mean) ** 2).mean(axis=axes, keepdims=True) + eps)
    xhat = (x - mean) * inv
    gy = dy if w is None else dy * w
    return inv * (gy - gy.sum(axis=axes, keepdims=True) / n
                  - xhat * (gy * xhat).sum(axis=axes, keepdims=True) / n)


def numeric_grad(f: Callable[[], float], arr: np.ndarray, h: float = 1e-6) -> np.ndarray:
    """Central differences of the scalar f() with respect to every entry of `arr`, which is
    perturbed in place (any memory layout) and restored; float64 result of arr's shape."""
    g = np.zeros(arr.shape)
    for i in np.ndindex(arr.shape):
        old = arr[i]
        arr[i] = old + h
        fp = f()
        arr[i] = old - h
        fm = f()
        arr[i] = old
        g[i] = (fp - fm) / (2 * h)
    return g


def check_gradients(m, x: np.ndarray, rng: np.random.Generator, rtol: float = 1e-6) -> None:
    """Compare m.backward and the parameters' .grad with central differences of sum(m(x) * r)."""
    x = np.array(x, dtype=np.float64)
    y = m(x)
    r = rng.standard_normal(y.shape)
    m.zero_grad()
    m(x)
    dx = m.backward(r)
    grads = {n: p.grad.copy() for n, p in m.named_parameters()}

    def loss() -> float:
        return float(np.sum(m(x) * r))

    scale = max(1.0, float(np.abs(dx).max()))
    num = numeric_grad(loss, x)
    err = float(np.abs(num - dx).max())
    assert err <= rtol * scale, f"input gradient: max |analytic - numeric| {err:.3g}"
    for n, p in m.named_parameters():
        num = numeric_grad(loss, p.data)
        err = float(np.abs(num - grads[n]).max())
        scale = max(1.0, float(np.abs(grads[n]).max()))
        assert err <= rtol * scale, f"{n} gradient: max |analytic - numeric| {err:.3g}"
