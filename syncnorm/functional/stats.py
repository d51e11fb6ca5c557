"""The statistics step of every normalization, local or synchronized, and the running-statistics
update: each exists once, here.

`group_stats(x3, shift, exchange)` is the whole step: the shifted sums of this process's batch
(`moments`), summed over a group when an `exchange` is given (None: local statistics), summed again
about the mean just found in the rare case the shift was far off, then (count, mean, biased var).
Synchronization is a value handed to the step, as Flax's `axis_name`: BatchNorm passes None,
SyncBatchNorm its group's exchange, and the per-sample norms (InstanceNorm, GroupNorm, LayerNorm)
call it with None on a (1, rows, row_length) view.

`StepPlan` says what one BatchNorm forward does (`Mode`), with the exchange as data; the numpy and
the torch SyncBatchNorm build the same plan and run it through `plan_stats`.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any, Callable, Protocol

import numpy as np

from .moments import mean_var, moments, poorly_shifted

__all__ = ["Exchange", "Mode", "StepPlan", "group_stats", "plan_stats", "choose_shift",
           "running_update", "unbiased"]


class Exchange(Protocol):
    """Sums a layer's statistics over its group: one collective per call (see
    `syncnorm.distributed.exchange.StatsExchange`). `agree` holds values every rank must share."""

    size: int

    def forward(self, n: float, s1: np.ndarray, s2: np.ndarray,
                agree: tuple = ()) -> tuple[float, np.ndarray, np.ndarray]: ...

    def backward(self, g: np.ndarray, h: np.ndarray, agree: tuple = ()) -> tuple[np.ndarray, np.ndarray]: ...

    def fail(self, phase: str) -> None: ...


class Mode(enum.Enum):
    """Which statistics a BatchNorm forward normalizes with."""

    TRAIN = "train"      #: batch statistics (of the group when the plan has an exchange); updates running stats
    BATCH = "batch"      #: eval without running statistics: this process's batch statistics
    RUNNING = "running"  #: eval with running statistics: constants, no reduction


@dataclass(slots=True)
class StepPlan:
    """What one BatchNorm forward does.

    mode: see `Mode`.
    eps: added to the variance.
    exchange: the group's exchange (TRAIN in a synchronized layer), else None.
    shift: (C,) float64 statistics shift, identical on every rank of the group (TRAIN, BATCH).
    running: (mean, var) float64 (C,) each (RUNNING only).
    record: called with (count, mean, var) of the (group's) batch after a TRAIN step with count > 0
        (updates the running statistics).
    one_value_error: raise when there is 1 value per channel (torch's rule for batch statistics in
        training).
    check_finite: raise FloatingPointError when the statistics are not finite.
    who: the layer's name, for messages.
    """

    mode: Mode
    eps: float
    exchange: Exchange | None = None
    shift: np.ndarray | None = None
    running: tuple[np.ndarray, np.ndarray] | None = None
    record: Callable[[float, np.ndarray, np.ndarray], None] | None = None
    one_value_error: bool = True
    check_finite: bool = False
    who: str = "BatchNorm"


def _finite(s1: np.ndarray, s2: np.ndarray) -> bool:
    return bool(np.all(np.isfinite(s1)) and np.all(np.isfinite(s2)))


def group_stats(x3: np.ndarray, shift: np.ndarray, exchange: Exchange | None = None, *,
                dtype: Any = None, one_value_error: bool = False, shape: tuple = (),
                check_finite: bool = False, who: str = "BatchNorm"
                ) -> tuple[float, np.ndarray | None, np.ndarray | None]:
    """(count, mean, biased var) per channel of x3 (A, C, M), over the group when `exchange` is given.

    shift: (C,) float64, equal on every rank (see `choose_shift`). dtype: the input's dtype (ranks
    must agree on it; its name joins the exchange's fingerprint). Returns (0, None, None) when the group has no values; mean and var
    are float64 (C,). Raises ValueError for 1 value per channel when `one_value_error` (every rank
    of the group alike), FloatingPointError for non-finite statistics when `check_finite`.
    """
    def sums(k: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
        n, s1, s2 = moments(x3, k)
        local_ok = _finite(s1, s2) if check_finite else True
        if exchange is not None:
            n, s1, s2 = exchange.forward(n, s1, s2, (str(dtype), k.tobytes()))
        if check_finite and not _finite(s1, s2):
            where = "this rank's input" if not local_ok else "another rank's input"
            raise FloatingPointError(
                f"{who}: the batch statistics are not finite: {where} holds NaN or Inf "
                "(check_finite=True; without it NaN propagates like torch)")
        return n, s1, s2

    n, s1, s2 = sums(shift)
    if poorly_shifted(n, s1, s2):  # rare (first step on data far from the shift): every rank alike
        shift = shift + s1 / n
        n, s1, s2 = sums(shift)
    if one_value_error and n == 1:
        grouped = exchange is not None and exchange.size > 1
        raise ValueError("Expected more than 1 value per channel when training, got input size "
                         f"{tuple(shape)}" + (" (1 value in the whole process group)" if grouped else ""))
    if n == 0:
        return 0, None, None
    mean, var = mean_var(n, s1, s2, shift)
    return n, mean, var


def plan_stats(x3: np.ndarray, plan: StepPlan, dtype: Any, shape: tuple
               ) -> tuple[float, np.ndarray | None, np.ndarray | None]:
    """(count, mean, invstd) that `plan` normalizes x3 (A, C, M) with; mean None when the (group's)
    batch is empty. A TRAIN step hands (count, mean, var) to `plan.record`."""
    if plan.mode is Mode.RUNNING:
        assert plan.running is not None
        mean, var = plan.running
        return x3.shape[0] * x3.shape[2], mean, 1.0 / np.sqrt(var + plan.eps)
    assert plan.shift is not None
    n, mean, var = group_stats(x3, plan.shift, plan.exchange, dtype=dtype,
                               one_value_error=plan.one_value_error, shape=shape,
                               check_finite=plan.check_finite, who=plan.who)
    if mean is None:
        return 0, None, None
    if plan.mode is Mode.TRAIN and plan.record is not None:
        plan.record(n, mean, var)
    return n, mean, 1.0 / np.sqrt(var + plan.eps)


def choose_shift(running_mean: np.ndarray | None, last_mean: np.ndarray | None,
                 channels: int) -> np.ndarray:
    """The shift for `group_stats`, identical on every rank of a group: the running mean (saved in
    checkpoints, so a resumed run rounds exactly like an uninterrupted one), else the last training
    step's group mean, else 0. Non-finite entries (a running mean gone NaN) become 0, so they cannot
    turn a finite batch's output into NaN. float64 (C,)."""
    if running_mean is not None:
        k = np.asarray(running_mean, dtype=np.float64)
    elif last_mean is not None and last_mean.shape == (channels,):
        k = last_mean
    else:
        return np.zeros(channels)
    if not np.isfinite(k).all():
        k = np.where(np.isfinite(k), k, 0.0)
    return k


def unbiased(var: np.ndarray, n: float) -> np.ndarray:
    """The unbiased variance from the biased one over n > 1 values: var * n / (n - 1)."""
    return var * (n / (n - 1))


def running_update(running_mean: np.ndarray, running_var: np.ndarray, mean: np.ndarray,
                   unbiased_var: np.ndarray, momentum: float | None, steps: int
                   ) -> tuple[np.ndarray, np.ndarray]:
    """New running statistics (float64 (C,)): (1 - f) * running + f * batch, with f = momentum, or
    f = 1 / steps (a cumulative average; `steps` is num_batches_tracked after this update) when
    momentum is None."""
    f = 1.0 / float(steps) if momentum is None else momentum
    rm = np.asarray(running_mean, dtype=np.float64)
    rv = np.asarray(running_var, dtype=np.float64)
    return (1 - f) * rm + f * mean, (1 - f) * rv + f * unbiased_var
