"""BatchNorm1d/2d/3d with torch.nn's constructor, state_dict keys and train/eval rules.

The statistics step is one code path for local and synchronized BatchNorm: `_BatchNorm` computes the
local shifted sums (`functional.moments`) and hands them to `_reduce_stats`, which is the identity
here and one Allreduce within the process group in `SyncBatchNorm`. Likewise `_reduce_grads` in
backward.
"""
from __future__ import annotations

import os
from typing import Any

import numpy as np

from ..functional import batch_norm as K
from ..functional.moments import choose_shift, mean_var, moments, poorly_shifted
from ._util import (accumulate_affine, affine_parameters, check_device, check_eps,
                    check_float_input, check_grad_shape, no_forward, param_dtype, reset_affine)
from .module import Module

__all__ = ["BatchNorm1d", "BatchNorm2d", "BatchNorm3d"]

class _NormBase(Module):
    """Parameters and buffers shared by the BatchNorm and InstanceNorm families (torch's _NormBase)."""

    _version = 2

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float | None = 0.1,
                 affine: bool = True, track_running_stats: bool = True, device: Any = None,
                 dtype: Any = None, *, bias: bool = True, check_finite: bool | None = None) -> None:
        super().__init__()
        check_device(device)
        num_features = int(num_features)
        if num_features < 0:
            raise ValueError(f"num_features must be >= 0, got {num_features}")
        if momentum is not None and not 0.0 <= float(momentum) <= 1.0:
            raise ValueError(f"momentum must be in [0, 1] or None, got {momentum}")
        dt = param_dtype(dtype)
        self.num_features = num_features
        self.eps = check_eps(eps)
        self.momentum = None if momentum is None else float(momentum)
        self.affine = bool(affine)
        self.track_running_stats = bool(track_running_stats)
        self._param_dtype = dt
        affine_parameters(self, (num_features,), dt, self.affine, bias)
        if self.track_running_stats:
            self.register_buffer("running_mean", np.zeros(num_features, dt))
            self.register_buffer("running_var", np.ones(num_features, dt))
            self.register_buffer("num_batches_tracked", np.array(0, dtype=np.int64))
        else:
            self.register_buffer("running_mean", None)
            self.register_buffer("running_var", None)
            self.register_buffer("num_batches_tracked", None)
        self._cache: tuple | None = None
        self._stat_shift: np.ndarray | None = None
        if check_finite is None:
            check_finite = os.environ.get("SYNCNORM_CHECK_FINITE", "").lower() in ("1", "true", "yes")
        self.check_finite = bool(check_finite)

    def reset_running_stats(self) -> None:
        if self.track_running_stats:
            self.running_mean[...] = 0
            self.running_var[...] = 1
            self.num_batches_tracked[...] = 0

    def reset_parameters(self) -> None:
        self.reset_running_stats()
        reset_affine(self)

    def extra_repr(self) -> str:
        return ("{num_features}, eps={eps}, momentum={momentum}, affine={affine}, bias={b}, "
                "track_running_stats={track_running_stats}".format(**self.__dict__,
                                                                   b=self.bias is not None))

    def _upgrade_state(self, state: dict, prefix: str, version: int | None) -> None:
        # torch: state dicts before version 2 have no num_batches_tracked; fill it in.
        key = prefix + "num_batches_tracked"
        if (version is None or version < 2) and self.track_running_stats and key not in state:
            state[key] = np.array(self.num_batches_tracked, copy=True)

    def _check_input_dim(self, x: np.ndarray) -> None:
        raise NotImplementedError


class _BatchNorm(_NormBase):
    """Training normalizes with batch statistics (biased variance) and updates the running
    statistics with the unbiased variance; eval uses the running statistics, or batch statistics
    when `track_running_stats=False`."""

    # ------------------------------------------------------------------ hooks for SyncBatchNorm
    def _reduce_stats(self, n: int, s1: np.ndarray, s2: np.ndarray,
                      shift: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
        return n, s1, s2

    def _reduce_grads(self, g: np.ndarray, h: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return g, h

    def _syncs(self) -> bool:
        return False

    # ------------------------------------------------------------------ forward
    def _check_channels(self, x: np.ndarray) -> None:
        if x.shape[1] == 0:
            raise ValueError(f"{type(self).__name__}: number of input channels should be non-zero, "
                             f"got input of shape {tuple(x.shape)}")
        if x.shape[1] != self.num_features:
            raise ValueError(f"{type(self).__name__}: expected input with {self.num_features} "
                             f"channels (shape (N, {self.num_features}, ...)), got input of shape "
                             f"{tuple(x.shape)}")

    def _shift(self) -> np.ndarray:
        """A per-channel value near the mean, identical on every rank (see `choose_shift`)."""
        return choose_shift(self.running_mean, self._stat_shift, self.num_features)

    def _batch_sums(self, x3: np.ndarray, shift: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
        n, s1, s2 = moments(x3, shift)
        local_ok = bool(np.all(np.isfinite(s1)) and np.all(np.isfinite(s2))) if self.check_finite else True
        if self.training:
            n, s1, s2 = self._reduce_stats(n, s1, s2, shift)
        self._check_finite(n, s1, s2, local_ok)
        return n, s1, s2

    def _bad_input(self, phase: str) -> None:
        """Hook: this rank's input was bad (SyncBatchNorm tells its peers before raising)."""

    def _validated(self, x: Any) -> np.ndarray:
        x = check_float_input(x, type(self).__name__)
        self._check_input_dim(x)
        self._check_channels(x)
        return x

    def _check_finite(self, n: float, s1: np.ndarray, s2: np.ndarray, local_ok: bool) -> None:
        if self.check_finite and not (np.all(np.isfinite(s1)) and np.all(np.isfinite(s2))):
            where = "this rank's input" if not local_ok else "another rank's input"
            raise FloatingPointError(
                f"{type(self).__name__}: the batch statistics are not finite: {where} holds NaN or "
                "Inf (check_finite=True; without it NaN propagates like torch)")

    def forward(self, x: np.ndarray) -> np.ndarray:
        """x: (N, C, *) float16/32/64 -> y of the same shape and dtype."""
        try:
            x = self._validated(x)
        except (TypeError, ValueError):
            self._bad_input("forward")
            raise
        x3 = K.as_acm(x)
        use_batch = self.training or self.running_mean is None
        if use_batch:
            shift = self._shift()
            n, s1, s2 = self._batch_sums(x3, shift)
            if poorly_shifted(n, s1, s2):  # rare: the first step on data far from 0
                shift = shift + s1 / n
                n, s1, s2 = self._batch_sums(x3, shift)
            if self.training and n == 1:
                raise ValueError("Expected more than 1 value per channel when training, got input "
                                 f"size {tuple(x.shape)}"
                                 + (" (1 value in the whole process group)" if self._syncs() else ""))
            if n == 0:
                self._cache = (x.shape, x3, None, None, True, 0, self.training)
                return np.empty(x.shape, x.dtype)
            mean, var = mean_var(n, s1, s2, shift)
            if self.training and self.running_mean is None:
                self._stat_shift = mean
            if self.training and self.track_running_stats:
                self._update_running(mean, var, n)
            invstd = 1.0 / np.sqrt(var + self.eps)
        else:
            mean = self.running_mean.astype(np.float64)
            invstd = 1.0 / np.sqrt(self.running_var.astype(np.float64) + self.eps)
            n = x3.shape[0] * x3.shape[2]
        w = None if self.weight is None else self.weight.data.astype(np.float64)
        b = None if self.bias is None else self.bias.data.astype(np.float64)
        y = K.normalize(x3, mean, invstd, w, b).reshape(x.shape)
        self._cache = (x.shape, x3, mean, invstd, use_batch, n, use_batch and self.training)
        return y

    def _update_running(self, mean: np.ndarray, var: np.ndarray, n: float) -> None:
        self.num_batches_tracked += 1
        if self.momentum is None:
            f = 1.0 / float(self.num_batches_tracked)
        else:
            f = self.momentum
        unbiased = var * (n / (n - 1))
        rm, rv = self.running_mean, self.running_var
        rm[...] = (1 - f) * rm.astype(np.float64) + f * mean
        rv[...] = (1 - f) * rv.astype(np.float64) + f * unbiased

    # ------------------------------------------------------------------ backward
    def backward(self, grad_output: np.ndarray) -> np.ndarray:
        """grad_output (N, C, *) -> grad_input; adds the local weight/bias gradients into `.grad`."""
        if self._cache is None:
            raise no_forward(type(self).__name__)
        shape, x3, mean, invstd, use_batch, n, synced = self._cache
        self._cache = None
        try:
            dy = check_grad_shape(grad_output, shape, type(self).__name__, of="input")
        except (TypeError, ValueError):
            if synced:
                self._bad_input("backward")
            raise
        dy3 = K.as_acm(dy)
        C = shape[1]
        if mean is None:  # the whole group had 0 samples: take part in the collective, return empty
            if synced:
                self._reduce_grads(np.zeros(C), np.zeros(C))
            accumulate_affine(self, np.zeros(C), np.zeros(C))
            return np.empty(shape, dy.dtype)
        g, h = K.backward_reduce(dy3, x3, mean, invstd)
        accumulate_affine(self, h * invstd, g)
        w = None if self.weight is None else self.weight.data.astype(np.float64)
        if use_batch:
            G, H = self._reduce_grads(g, h) if synced else (g, h)
            dx = K.backward_elemt(dy3, x3, mean, invstd, w, G, H, n)
        else:
            dx = K.eval_backward(dy3, invstd, w)
        return dx.reshape(shape).astype(dy.dtype, copy=False)


class BatchNorm1d(_BatchNorm):
    """BatchNorm over (N, C) or (N, C, L) input; arguments and semantics as `BatchNorm2d`."""

    def _check_input_dim(self, x: np.ndarray) -> None:
        if x.ndim not in (2, 3):
            raise ValueError(f"expected 2D or 3D input (got {x.ndim}D input)")


class BatchNorm2d(_BatchNorm):
    """BatchNorm over (N, C, H, W) input: y = (x - mean) / sqrt(var + eps) * weight + bias, per channel.

    Args:
        num_features: C, the size of the input's dim 1.
        eps: added to the variance (default 1e-5).
        momentum: factor of the running-statistics update (default 0.1); None gives a cumulative
            average over `num_batches_tracked` steps.
        affine: learn `weight` (ones) and `bias` (zeros), shape (C,).
        track_running_stats: keep `running_mean` (zeros), `running_var` (ones), shape (C,), and
            `num_batches_tracked`; without them every mode uses the batch statistics.
        device: None or "cpu" (anything else raises ValueError).
        dtype: of the parameters and buffers: float16, float32 (default) or float64.
        check_finite: (keyword) raise FloatingPointError when the batch statistics hold NaN or Inf;
            default from SYNCNORM_CHECK_FINITE (off: NaN propagates, as in torch).

    Training mode normalizes with the batch's mean and biased variance and updates the running
    statistics with the unbiased one (n / (n - 1)); eval mode uses the running statistics. Input
    float16 (computed in float32), float32 or float64, any strides; the output has the input's shape
    and dtype. Statistics are float64 shifted sums, accurate at any mean (see the Numerics page).
    `backward(grad_output)` returns the input gradient and adds into `weight.grad` / `bias.grad`.
    Raises ValueError for input of another rank or channel count, or 1 value per channel in
    training, and TypeError for non-float input. State dict keys and versioning are torch's.
    """

    def _check_input_dim(self, x: np.ndarray) -> None:
        if x.ndim != 4:
            raise ValueError(f"expected 4D input (got {x.ndim}D input)")


class BatchNorm3d(_BatchNorm):
    """BatchNorm over (N, C, D, H, W) input; arguments and semantics as `BatchNorm2d`."""

    def _check_input_dim(self, x: np.ndarray) -> None:
        if x.ndim != 5:
            raise ValueError(f"expected 5D input (got {x.ndim}D input)")
