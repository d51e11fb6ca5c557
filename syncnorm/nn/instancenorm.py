"""InstanceNorm1d/2d/3d with torch.nn's constructor, state_dict keys and train/eval rules.

Each (sample, channel) instance is normalized with its own mean and biased variance over the
spatial positions. Batched input is (N, C, *S) and unbatched input (C, *S) is accepted too.
With `track_running_stats=True`, training updates the running statistics the way torch does:
    running_mean <- (1 - f) * running_mean + f * mean over the batch of the instance means
    running_var  <- (1 - f) * running_var  + f * mean over the batch of the instances' unbiased
                                                 variances
and eval mode normalizes with them (otherwise every mode uses the input's statistics).

Where torch is wrong, syncnorm does better (and says so here):
* `momentum=None` means a cumulative moving average (f = 1 / num_batches_tracked), as in BatchNorm;
  torch passes momentum 0 to instance_norm, so its running statistics never move.
* `num_batches_tracked` counts the training steps that updated the running statistics (torch's
  InstanceNorm never increments it).
* A batch with no instances or no positions leaves the running statistics alone (torch writes NaN).
* An empty batch with `affine=True` returns an empty output and zero parameter gradients (torch
  raises IndexError).
"""
from __future__ import annotations

import warnings
from typing import Any

import numpy as np

from ..functional.norms import channel_backward, channel_forward, channel_step
from ..functional.stats import running_update, unbiased
from ._util import accumulate_affine, check_float_input, check_grad_shape, no_forward
from .batchnorm import _NormBase

__all__ = ["InstanceNorm1d", "InstanceNorm2d", "InstanceNorm3d"]


class _InstanceNorm(_NormBase):
    """Shared code of InstanceNorm1d/2d/3d; `_no_batch_dim` is the rank of unbatched input."""

    _no_batch_dim: int = 0

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float | None = 0.1,
                 affine: bool = False, track_running_stats: bool = False, device: Any = None,
                 dtype: Any = None, *, bias: bool = True) -> None:
        super().__init__(num_features, eps, momentum, affine, track_running_stats, device, dtype,
                         bias=bias)

    # ------------------------------------------------------------------ checks
    def _check_input_dim(self, x: np.ndarray) -> None:
        nb = self._no_batch_dim
        if x.ndim not in (nb, nb + 1):
            raise ValueError(f"expected {nb}D or {nb + 1}D input (got {x.ndim}D input)")

    def _channel_dim(self, x: np.ndarray) -> int:
        return x.ndim - self._no_batch_dim

    def _check_channels(self, x: np.ndarray, uses_running: bool) -> None:
        dim = self._channel_dim(x)
        C = x.shape[dim]
        if C == self.num_features:
            return
        if self.affine:
            raise ValueError(f"expected input's size at dim={dim} to match num_features "
                             f"({self.num_features}), but got: {C}.")
        if uses_running:
            raise ValueError(f"{type(self).__name__}: expected input's size at dim={dim} to match "
                             f"num_features ({self.num_features}), the size of the running "
                             f"statistics, but got: {C} (input of shape {tuple(x.shape)})")
        warnings.warn(f"input's size at dim={dim} does not match num_features. You can silence this "
                      "warning by not passing in num_features, which is not used because "
                      "affine=False", UserWarning, stacklevel=3)

    # ------------------------------------------------------------------ forward / backward
    def forward(self, x: np.ndarray) -> np.ndarray:
        """x: (N, C, *S) or unbatched (C, *S), float16/32/64 -> y of the same shape and dtype."""
        name = type(self).__name__
        x = check_float_input(x, name)
        self._check_input_dim(x)
        use_input_stats = self.training or not self.track_running_stats
        self._check_channels(x, self.track_running_stats)
        xb = x if x.ndim == self._no_batch_dim + 1 else x[None]
        N, C = xb.shape[:2]
        S = int(np.prod(xb.shape[2:], dtype=np.int64))
        x3 = np.ascontiguousarray(xb).reshape(N, C, S)
        w = None if self.weight is None else self.weight.data
        b = None if self.bias is None else self.bias.data
        if use_input_stats:
            if S == 1 and N * C > 0:
                raise ValueError("Expected more than 1 spatial element when training (or in eval "
                                 "mode without running statistics), got input of shape "
                                 f"{tuple(x.shape)}")
            y3, mean, var, invstd = channel_step(x3, C, self.eps, w, b)
            if N * C * S > 0 and self.training and self.track_running_stats:
                self._update_running(mean.reshape(N, C), var.reshape(N, C), S)
        else:
            mean = np.tile(self.running_mean.astype(np.float64), N)
            invstd = np.tile(1.0 / np.sqrt(self.running_var.astype(np.float64) + self.eps), N)
            y3 = channel_forward(x3, C, mean, invstd, w, b)
        self._cache = (x.shape, x.dtype, x3, mean, invstd, use_input_stats)
        return y3.reshape(x.shape)

    def _update_running(self, mean: np.ndarray, var: np.ndarray, S: int) -> None:
        """mean, var: biased per-instance statistics (N, C); S positions per instance."""
        self.num_batches_tracked += 1
        rm, rv = running_update(self.running_mean, self.running_var, mean.mean(axis=0),
                                unbiased(var, S).mean(axis=0), self.momentum,
                                int(self.num_batches_tracked))
        self.running_mean[...] = rm
        self.running_var[...] = rv

    def backward(self, grad_output: np.ndarray) -> np.ndarray:
        """grad_output (shape of the forward input) -> grad_input; adds into weight/bias .grad."""
        name = type(self).__name__
        if self._cache is None:
            raise no_forward(name)
        shape, dtype, x3, mean, invstd, use_input_stats = self._cache
        dy = check_grad_shape(grad_output, shape, name, of="input")
        self._cache = None
        C = x3.shape[1]
        dy3 = np.ascontiguousarray(dy, dtype=dtype).reshape(x3.shape)
        w = None if self.weight is None else self.weight.data
        dx3, dw, db = channel_backward(dy3, x3, C, mean, invstd, w, batch_stats=use_input_stats)
        accumulate_affine(self, dw, db)
        return dx3.reshape(shape)


class InstanceNorm1d(_InstanceNorm):
    """InstanceNorm over (N, C, L) or unbatched (C, L) input."""

    _no_batch_dim = 2


class InstanceNorm2d(_InstanceNorm):
    """InstanceNorm over (N, C, H, W) or unbatched (C, H, W) input."""

    _no_batch_dim = 3


class InstanceNorm3d(_InstanceNorm):
    """InstanceNorm over (N, C, D, H, W) or unbatched (C, D, H, W) input."""

    _no_batch_dim = 4
