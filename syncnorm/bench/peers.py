"""What syncnorm is measured against: a textbook numpy implementation, and torch when installed.

The textbook versions are written the way a tutorial writes them: whole-array numpy expressions
(`x.mean`, `x.var`, `(x - mean) / sqrt(var + eps)`, the standard three-term backward), no blocking,
no accuracy tricks. torch is optional (never a dependency of syncnorm): without it the torch
column is skipped with a note.

`layer_specs` lists the benchmarked layers and shapes (float32): BatchNorm2d on (32, 64, 32, 32)
and (32, 256, 28, 28), and GroupNorm(32, 256), LayerNorm([256, 28, 28]), InstanceNorm2d(256) on
(32, 256, 28, 28) when syncnorm has them; `--quick` uses tiny shapes.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

__all__ = ["TextbookNorm", "LayerSpec", "layer_specs", "load_torch"]


class TextbookNorm:
    """y = gamma * (x - mean) / sqrt(var + eps) + beta, statistics over `axes` of `view(x)`.

    Training mode only (batch statistics; a BatchNorm also updates its running statistics like a
    tutorial would). `backward(dy)` returns dx and stores dgamma, dbeta."""

    def __init__(self, view: Callable[[np.ndarray], np.ndarray], axes: tuple[int, ...],
                 param_shape: tuple[int, ...] | None, eps: float = 1e-5,
                 running: int | None = None, momentum: float = 0.1) -> None:
        self.view, self.axes, self.eps = view, axes, eps
        self.gamma = None if param_shape is None else np.ones(param_shape, np.float32)
        self.beta = None if param_shape is None else np.zeros(param_shape, np.float32)
        self.running_mean = None if running is None else np.zeros(running, np.float32)
        self.running_var = None if running is None else np.ones(running, np.float32)
        self.momentum = momentum

    def forward(self, x: np.ndarray) -> np.ndarray:
        xv = self.view(x)
        mean = xv.mean(axis=self.axes, keepdims=True)
        var = xv.var(axis=self.axes, keepdims=True)
        invstd = 1.0 / np.sqrt(var + self.eps)
        xhat = ((xv - mean) * invstd).reshape(x.shape)
        if self.running_mean is not None:
            n = xv.size / mean.size
            m = self.momentum
            self.running_mean = (1 - m) * self.running_mean + m * mean.ravel()
            self.running_var = (1 - m) * self.running_var + m * var.ravel() * n / (n - 1)
        self.cache = (xhat, invstd)
        if self.gamma is None:
            return xhat
        return self.gamma * xhat + self.beta

    def backward(self, dy: np.ndarray) -> np.ndarray:
        xhat, invstd = self.cache
        if self.gamma is not None:
            outer = tuple(i for i in range(dy.ndim) if self.gamma.shape[i] == 1)
            self.dgamma = (dy * xhat).sum(axis=outer, keepdims=True)
            self.dbeta = dy.sum(axis=outer, keepdims=True)
            dxhat = dy * self.gamma
        else:
            dxhat = dy
        dxh, xh = self.view(dxhat), self.view(xhat)
        n = xh.size / invstd.size
        dx = invstd / n * (n * dxh - dxh.sum(axis=self.axes, keepdims=True)
                           - xh * (dxh * xh).sum(axis=self.axes, keepdims=True))
        return dx.reshape(dy.shape)


@dataclass
class LayerSpec:
    """One benchmarked layer: constructors of the three implementations and the input shape."""
    key: str                    # "BatchNorm2d[32x256x28x28]"
    layer: str                  # "BatchNorm2d"
    label: str                  # "BatchNorm2d(256)"
    shape: tuple[int, ...]
    ours: Callable[[], Any]
    textbook: Callable[[], TextbookNorm]
    torch: Callable[[Any], Any]  # torch module -> torch.nn.Module


def load_torch() -> tuple[Any, str]:
    """(torch or None, a note). torch runs on one thread."""
    try:
        import torch
    except ImportError:
        return None, "torch is not installed: the torch column is skipped (pip install torch)"
    from syncnorm.functional import engine
    n = engine.num_threads()  # SYNCNORM_NUM_THREADS: torch gets as many threads as our kernels
    torch.set_num_threads(n)
    return torch, f"torch {torch.__version__} (CPU, {n} thread{'s' if n > 1 else ''})"


def _key(layer: str, shape: tuple[int, ...]) -> str:
    return f"{layer}[{'x'.join(map(str, shape))}]"


def layer_specs(quick: bool = False) -> list[LayerSpec]:
    """The layers and shapes to time (only layers syncnorm.nn has)."""
    from syncnorm import nn

    bn_shapes = [(4, 8, 8, 8), (4, 16, 7, 7)] if quick else [(32, 64, 32, 32), (32, 256, 28, 28)]
    fam = bn_shapes[1]
    _, C, H, W = fam
    G = 4 if quick else 32
    specs = []
    for s in bn_shapes:
        c = s[1]
        specs.append(LayerSpec(
            _key("BatchNorm2d", s), "BatchNorm2d", f"BatchNorm2d({c})", s,
            lambda c=c: nn.BatchNorm2d(c),
            lambda c=c: TextbookNorm(lambda x: x, (0, 2, 3), (1, c, 1, 1), running=c),
            lambda t, c=c: t.nn.BatchNorm2d(c)))
    if hasattr(nn, "GroupNorm"):
        specs.append(LayerSpec(
            _key("GroupNorm", fam), "GroupNorm", f"GroupNorm({G}, {C})", fam,
            lambda: nn.GroupNorm(G, C),
            lambda: TextbookNorm(lambda x: x.reshape(x.shape[0], G, -1), (2,), (1, C, 1, 1)),
            lambda t: t.nn.GroupNorm(G, C)))
    if hasattr(nn, "LayerNorm"):
        specs.append(LayerSpec(
            _key("LayerNorm", fam), "LayerNorm", f"LayerNorm([{C}, {H}, {W}])", fam,
            lambda: nn.LayerNorm([C, H, W]),
            lambda: TextbookNorm(lambda x: x, (1, 2, 3), (1, C, H, W)),
            lambda t: t.nn.LayerNorm([C, H, W])))
    if hasattr(nn, "InstanceNorm2d"):
        specs.append(LayerSpec(
            _key("InstanceNorm2d", fam), "InstanceNorm2d", f"InstanceNorm2d({C})", fam,
            lambda: nn.InstanceNorm2d(C),
            lambda: TextbookNorm(lambda x: x, (2, 3), None),
            lambda t: t.nn.InstanceNorm2d(C)))
    return specs
