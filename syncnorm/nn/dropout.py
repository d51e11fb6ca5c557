"""`Dropout`, as torch.nn.Dropout, with optional per-sample random streams.

In training mode each element is zeroed with probability p and the rest are scaled by 1/(1-p); in
eval mode (or with p = 0) the input passes through unchanged.

Where the random numbers come from:
- by default from the layer's numpy Generator (`generator=`, else `syncnorm.nn.init`'s default):
  the masks then depend on how the batch was split across ranks, as in torch;
- after `set_dropout_keys(model, sample_ids, step, seed)`, the next forward of every Dropout in
  `model` draws the mask of sample i from its own counter-based stream keyed by (seed, the layer's
  position in the model, step, sample_ids[i]) (`keyed_uniform`). A sample then gets the same mask whichever rank processes it and
  whatever the batch size, which makes data-parallel training with dropout follow exactly the same
  trajectory as one process training on the whole batch (see `syncnorm.train`). torch has no such
  mode.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from . import init
from ._util import check_float_input, check_grad_shape, no_forward
from .module import Module

__all__ = ["Dropout", "set_dropout_keys", "keyed_uniform"]


class Dropout(Module):
    """Elementwise dropout on any input shape (N, *)."""

    def __init__(self, p: float = 0.5, inplace: bool = False, *,
                 generator: np.random.Generator | None = None) -> None:
        super().__init__()
        if not 0.0 <= float(p) <= 1.0:
            raise ValueError(f"dropout probability has to be between 0 and 1, but got {p}")
        self.p = float(p)
        self.inplace = bool(inplace)
        self.generator = None if generator is None else init.resolve_generator(generator)
        self._keys: tuple[int, int, int, np.ndarray] | None = None
        self._scale: np.ndarray | None = None
        self._shape: tuple[int, ...] | None = None

    def _uniform(self, shape: tuple[int, ...]) -> np.ndarray:
        keys, self._keys = self._keys, None
        if keys is None:
            gen = self.generator if self.generator is not None else init.default_generator()
            return gen.random(shape)
        seed, stream, step, ids = keys
        if len(shape) == 0 or shape[0] != len(ids):
            raise ValueError(f"Dropout: set_dropout_keys gave {len(ids)} sample ids but the input has "
                             f"shape {shape} (one id per sample along dim 0 is expected)")
        return keyed_uniform(seed, stream, step, ids, shape)

    def forward(self, x: np.ndarray) -> np.ndarray:
        """In training mode, zero each element with probability p and scale the others by 1/(1 - p)
        (any shape; the mask is drawn per sample, see `set_dropout_keys`); in eval mode (or p = 0)
        return x unchanged.
        """
        x = check_float_input(x, "Dropout")
        self._shape = x.shape
        if not self.training or self.p == 0.0:
            self._keys = None
            self._scale = None
            return x
        if self.p == 1.0:
            self._keys = None
            scale = np.zeros(x.shape, x.dtype)
        else:
            keep = self._uniform(x.shape) >= self.p
            scale = keep.astype(x.dtype) * x.dtype.type(1.0 / (1.0 - self.p))
        self._scale = scale
        if self.inplace:
            x *= scale
            return x
        return x * scale

    def backward(self, grad_output: np.ndarray) -> np.ndarray:
        """grad_output times the forward's mask and scale (unchanged in eval mode)."""
        if self._shape is None:
            raise no_forward("Dropout")
        shape, scale = self._shape, self._scale
        self._shape = self._scale = None
        dy = check_grad_shape(grad_output, shape, "Dropout")
        return dy if scale is None else dy * scale.astype(dy.dtype, copy=False)

    def extra_repr(self) -> str:
        return f"p={self.p}, inplace={self.inplace}"


_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def _mix(z: np.ndarray) -> np.ndarray:
    """SplitMix64's finalizer on uint64 (wrapping arithmetic): a bijection with full avalanche."""
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def keyed_uniform(seed: int, stream: int, step: int, ids: np.ndarray,
                  shape: tuple[int, ...]) -> np.ndarray:
    """U[0, 1) float64 of `shape`; row i is a function of (seed, stream, step, ids[i]) only.

    Counter-based (SplitMix64 mixing of the key and the element's position), vectorized, and defined
    by integer arithmetic alone, so the same key gives the same numbers on every rank, every platform
    and every numpy version."""
    with np.errstate(over="ignore"):
        h = _mix(np.array([seed], np.uint64) + _GOLDEN)
        h = _mix(h ^ (np.uint64(stream) + _GOLDEN * np.uint64(2)))
        h = _mix(h ^ (np.uint64(step) + _GOLDEN * np.uint64(3)))
        keys = _mix(h ^ np.asarray(ids, np.int64).astype(np.uint64))
        per_row = int(np.prod(shape[1:], dtype=np.int64))
        pos = (np.arange(1, per_row + 1, dtype=np.uint64) * _GOLDEN)
        bits = _mix(keys[:, None] + pos[None, :])
    return ((bits >> np.uint64(11)).astype(np.float64) * 2.0 ** -53).reshape(shape)


def set_dropout_keys(module: Module, sample_ids: Sequence[int] | np.ndarray, step: int,
                     seed: int = 0) -> int:
    """Key the next forward of every Dropout in `module` by sample: sample i of that forward's
    batch (dim 0) draws from the stream (seed, layer position, step, sample_ids[i]). Returns the
    number of Dropout layers keyed. `sample_ids` must be non-negative integers (global dataset
    indices, say); keys are used once, by the next forward."""
    ids = np.asarray(sample_ids, dtype=np.int64).reshape(-1)
    if ids.size and ids.min() < 0:
        raise ValueError(f"set_dropout_keys: sample ids must be >= 0, got {int(ids.min())}")
    if step < 0 or seed < 0:
        raise ValueError(f"set_dropout_keys: step and seed must be >= 0, got {step} and {seed}")
    n = 0
    for m in module.modules():
        if isinstance(m, Dropout):
            m._keys = (int(seed), n, int(step), ids)
            n += 1
    return n
