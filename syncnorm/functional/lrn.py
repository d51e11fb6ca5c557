"""Local response normalization across channels, as torch.nn.functional.local_response_norm.

For x of shape (N, C, *) and a = size // 2, b = (size - 1) // 2 (torch zero-pads the channel axis
by (a, b) and average-pools a window of `size`, always dividing by `size`):
    W[c] = sum_{j = c - a}^{c + b} x[j]^2        (channels outside [0, C) count as 0)
    D[c] = k + alpha * W[c] / size
    y[c] = x[c] * D[c]^(-beta)
Backward (the window's transpose runs from j - b to j + a):
    dx[j] = dy[j] * D[j]^(-beta)
            - (2 alpha beta / size) * x[j] * sum_{c = j - b}^{j + a} dy[c] x[c] D[c]^(-beta - 1)

Computed in float64 over cache-sized blocks of (samples, positions) that hold all channels (the
window runs across channels); the result is in the input's dtype. D is recomputed in backward
rather than stored. The window sum adds shifted slices (at most 2C - 1 of them), so every sum is
formed directly, never as a difference of prefix sums. The compiled engine runs the betas with a
short power form (0.5, 0.75, 1) in `compiled.lrn`.
"""
from __future__ import annotations

import numpy as np

from . import engine
from .blocks import BLOCK_ELEMS

__all__ = ["window_sum", "lrn_forward", "lrn_backward"]


def window_sum(v: np.ndarray, before: int, after: int) -> np.ndarray:
    """out[:, c] = sum of v[:, j] for j in [c - before, c + after] within [0, C); v (n, C, s)."""
    C = v.shape[1]
    out = np.zeros(v.shape)
    for o in range(max(-before, -(C - 1)), min(after, C - 1) + 1):
        if o >= 0:
            out[:, :C - o] += v[:, o:]
        else:
            out[:, -o:] += v[:, :C + o]
    return out


def _blocks(N: int, C: int, S: int, block: int = BLOCK_ELEMS):
    """(n0, n1, s0, s1) blocks of about `block` elements, each holding all C channels."""
    if C * S <= block:
        step = max(1, block // max(1, C * S))
        for n0 in range(0, N, step):
            yield n0, min(N, n0 + step), 0, S
    else:
        sstep = max(1, block // max(1, C))
        for n in range(N):
            for s0 in range(0, S, sstep):
                yield n, n + 1, s0, min(S, s0 + sstep)


def _denominator(xb: np.ndarray, size: int, alpha: float, k: float) -> np.ndarray:
    """D = k + alpha * W / size for a float64 block (n, C, s)."""
    d = window_sum(xb * xb, size // 2, (size - 1) // 2)
    d *= alpha / size
    d += k
    return d


def lrn_forward(x3: np.ndarray, size: int, alpha: float, beta: float, k: float) -> np.ndarray:
    """y for x3 (N, C, S); returns an array of x3's shape and dtype."""
    N, C, S = x3.shape
    ck = engine.kernels()
    if ck is not None and x3.size and ck.lrn.supports(beta):
        return ck.lrn.forward(x3, size, alpha, beta, k)
    y = np.empty(x3.shape, x3.dtype)
    for n0, n1, s0, s1 in _blocks(N, C, S):
        xb = x3[n0:n1, :, s0:s1].astype(np.float64)
        d = _denominator(xb, size, alpha, k)
        np.power(d, -beta, out=d)
        d *= xb
        y[n0:n1, :, s0:s1] = d
    return y


def lrn_backward(dy3: np.ndarray, x3: np.ndarray, size: int, alpha: float, beta: float,
                 k: float) -> np.ndarray:
    """dx for x3 (N, C, S) and its upstream gradient dy3; returns x3's shape and dtype."""
    N, C, S = x3.shape
    ck = engine.kernels()
    if ck is not None and x3.size and ck.lrn.supports(beta):
        return ck.lrn.backward(dy3, x3, size, alpha, beta, k)
    dx = np.empty(x3.shape, x3.dtype)
    for n0, n1, s0, s1 in _blocks(N, C, S):
        xb = x3[n0:n1, :, s0:s1].astype(np.float64)
        db = dy3[n0:n1, :, s0:s1].astype(np.float64)
        d = _denominator(xb, size, alpha, k)
        p = np.power(d, -beta)  # D^-beta
        t = db * xb
        t *= p
        t /= d  # dy * x * D^(-beta-1)
        u = window_sum(t, (size - 1) // 2, size // 2)
        u *= xb
        u *= 2.0 * alpha * beta / size
        p *= db
        p -= u
        dx[n0:n1, :, s0:s1] = p
    return dx
