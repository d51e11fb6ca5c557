"""BatchNorm1d/2d/3d with torch.nn's constructor, state_dict keys and train/eval rules.

One forward for local and synchronized BatchNorm: `_BatchNorm._step(x, exchange)` builds a
`functional.stats.StepPlan` and runs the statistics step with the exchange as a value (None here;
the group's `StatsExchange` in `SyncBatchNorm`), then the `functional.batch_norm` kernels.
"""
from __future__ import annotations

import os
from typing import Any

import numpy as np

from ..distributed.exchange import StatsExchange
from ..functional.batch_norm import (backward_reduce, eval_backward, flatten_spatial, forward,
                                     train_backward)
from ..functional.stats import Mode, StepPlan, choose_shift, running_update, unbiased
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
    when `track_running_stats=False`. `_step(x, exchange)` is the one forward of BatchNorm and
    SyncBatchNorm: the exchange (None here) is handed to the statistics step as a value."""

    def forward(self, x: np.ndarray) -> np.ndarray:
        """x: (N, C, *) float16/32/64 -> y of the same shape and dtype."""
        return self._step(x, None)

    # ------------------------------------------------------------------ forward
    def _check_channels(self, x: np.ndarray) -> None:
        if x.shape[1] == 0:
            raise ValueError(f"{type(self).__name__}: number of input channels should be non-zero, "
                             f"got input of shape {tuple(x.shape)}")
        if x.shape[1] != self.num_features:
            raise ValueError(f"{type(self).__name__}: expected input with {self.num_features} "
                             f"channels (shape (N, {self.num_features}, ...)), got input of shape "
                             f"{tuple(x.shape)}")

    def _validated(self, x: Any) -> np.ndarray:
        x = check_float_input(x, type(self).__name__)
        self._check_input_dim(x)
        self._check_channels(x)
        return x

    def _plan(self, exchange: StatsExchange | None) -> StepPlan:
        """What this forward does: training (batch statistics, over `exchange`'s group when given),
        eval with batch statistics (no running statistics), or eval with the running statistics."""
        who = type(self).__name__
        if self.training:
            return StepPlan(Mode.TRAIN, self.eps, exchange=exchange, shift=self._shift(),
                            record=self._record, check_finite=self.check_finite, who=who)
        if self.running_mean is None:
            return StepPlan(Mode.BATCH, self.eps, shift=self._shift(), one_value_error=False,
                            check_finite=self.check_finite, who=who)
        return StepPlan(Mode.RUNNING, self.eps, running=(self.running_mean.astype(np.float64),
                                                        self.running_var.astype(np.float64)))

    def _shift(self) -> np.ndarray:
        """A per-channel value near the mean, identical on every rank (see `choose_shift`)."""
        return choose_shift(self.running_mean, self._stat_shift, self.num_features)

    def _record(self, n: float, mean: np.ndarray, var: np.ndarray) -> None:
        """After a training step with n > 0 values (in the group): update the running statistics."""
        running_mean, running_var = self.running_mean, self.running_var
        if running_mean is None:
            self._stat_shift = mean
        if not self.track_running_stats:
            return
        self.num_batches_tracked += 1
        running_mean[...], running_var[...] = running_update(
            running_mean, running_var, mean, unbiased(var, n), self.momentum,
            int(self.num_batches_tracked))

    def _step(self, x: Any, exchange: StatsExchange | None) -> np.ndarray:
        """The forward: statistics as `_plan` says (one collective when `exchange` is given and the
        layer trains), then y = (x - mean) * invstd * weight + bias."""
        plan = self._plan(exchange)
        try:
            x = self._validated(x)
        except (TypeError, ValueError):
            if plan.exchange is not None:  # tell the peers before raising, so none waits
                plan.exchange.fail("forward")
            raise
        x3 = flatten_spatial(x)
        w = None if self.weight is None else self.weight.data.astype(np.float64)
        b = None if self.bias is None else self.bias.data.astype(np.float64)
        n, mean, invstd, y = forward(x3, plan, x.dtype, x.shape, w, b)
        self._cache = (x.shape, x.dtype, x3, plan, mean, invstd, n)
        if y is None:  # the whole group has 0 samples
            return np.empty(x.shape, x.dtype)
        return y.reshape(x.shape)

    # ------------------------------------------------------------------ backward
    def backward(self, grad_output: np.ndarray) -> np.ndarray:
        """grad_output (N, C, *) -> grad_input; adds the local weight/bias gradients into `.grad`.
        Training: ONE collective over the forward's group for sum(dy), sum(dy * (x - mean))."""
        if self._cache is None:
            raise no_forward(type(self).__name__)
        shape, dtype, x3, plan, mean, invstd, n = self._cache
        self._cache = None
        exchange = plan.exchange if plan.mode is Mode.TRAIN else None
        try:
            dy = check_grad_shape(grad_output, shape, type(self).__name__, of="input")
        except (TypeError, ValueError):
            if exchange is not None:
                exchange.fail("backward")
            raise
        dy3 = flatten_spatial(dy)
        C = shape[1]
        if mean is None:  # the whole group had 0 samples: take part in the collective, return empty
            if exchange is not None:
                exchange.backward(np.zeros(C), np.zeros(C), (str(dtype),))
            accumulate_affine(self, np.zeros(C), np.zeros(C))
            return np.empty(shape, dy.dtype)
        w = None if self.weight is None else self.weight.data.astype(np.float64)
        if plan.mode is Mode.RUNNING:
            g, h = backward_reduce(dy3, x3, mean, invstd)
            dx = eval_backward(dy3, invstd, w)
        else:  # the group's sums for dx (one collective), this process's for dweight, dbias
            dx, g, h = train_backward(dy3, x3, mean, invstd, w, n, exchange, dtype)
        accumulate_affine(self, h * invstd, g)
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
