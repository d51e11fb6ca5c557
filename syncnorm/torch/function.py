"""The autograd Function of `syncnorm.torch.SyncBatchNorm`: syncnorm's kernels on tensor memory.

The module decides what a step does and hands it over as a `functional.stats.StepPlan` (the same
plan the numpy layer builds). Forward: `plan_stats` gives (count, mean, invstd) — in training the
group's, summed by the plan's exchange in ONE Allreduce —, and `normalize` writes the output straight
into the new tensor's memory. Backward: `backward_reduce` gives the local (sum dy, sum dy*(x - mean)),
ONE Allreduce sums them over the group, `backward_elemt` writes the input gradient. The weight and
bias gradients stay local (as in torch: DistributedDataParallel averages them).

`forward_step` and `backward_step` are the two halves without autograd: the Function below runs them
in eager mode, the custom operator of `ops.py` under torch.compile. With a `StatsStash`, a training
forward recomputed by activation checkpointing reuses its first run's statistics (`_recompute.py`).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.autograd.function import once_differentiable

from ..functional.batch_norm import (backward_reduce, eval_backward, forward, normalize,
                                     train_backward)
from ..functional.stats import Exchange, Mode, StepPlan, plan_stats
from . import _views as views
from ._recompute import CapturingExchange, StashEntry, StatsStash, recomputing

__all__ = ["StepPlan", "SyncBatchNormFunction", "Saved", "forward_step", "backward_step"]


def _f64(t: torch.Tensor | None) -> np.ndarray | None:
    """A float64 copy of a parameter (the values of this forward, whatever happens to it later)."""
    return None if t is None else t.detach().to(torch.float64, copy=True).numpy()


@dataclass
class Saved:
    """What a backward needs from its forward besides the input: the statistics it normalized
    with (mean None: the group had 0 samples), the float64 weight, and where its stash entry is."""

    mode: Mode
    layout: str
    exchange: Exchange | None
    n: float
    mean: np.ndarray | None
    invstd: np.ndarray | None
    w: np.ndarray | None
    param_dtypes: tuple[torch.dtype | None, torch.dtype | None]
    stash: StatsStash | None = None
    entry: StashEntry | None = None


def _stashes(plan: StepPlan, stash: StatsStash | None) -> bool:
    """True when a synchronized training forward keeps its statistics for checkpointing."""
    return (stash is not None and plan.mode is Mode.TRAIN and plan.exchange is not None
            and plan.shift is not None)


def _stats(x3: np.ndarray, plan: StepPlan, x: torch.Tensor, stash: StatsStash | None
           ) -> tuple[float, np.ndarray | None, np.ndarray | None, StashEntry | None]:
    """(count, mean, invstd, stash entry) of a forward: reused when checkpointing recomputes it."""
    if stash is None or plan.mode is not Mode.TRAIN or plan.exchange is None or plan.shift is None:
        n, mean, invstd = plan_stats(x3, plan, str(x.dtype), tuple(x.shape))
        return n, mean, invstd, None
    if recomputing():
        seen = stash.take(x3)
        if seen is not None:  # no collective, no running-statistics update
            return seen.n, seen.mean, seen.invstd, None
    capture = CapturingExchange(plan.exchange)
    n, mean, invstd = plan_stats(x3, dataclasses.replace(plan, exchange=capture), str(x.dtype),
                                 tuple(x.shape))
    entry = None
    if capture.first is not None:
        entry = StashEntry(plan.shift.copy(), capture.first, n, mean, invstd)
        stash.put(entry)
    return n, mean, invstd, entry


def forward_step(x: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None,
                 plan: StepPlan, stash: StatsStash | None = None
                 ) -> tuple[torch.Tensor, Saved, torch.Tensor]:
    """input (N, C, *) -> (output of the same shape, dtype and memory layout, what backward needs,
    the input in a dense layout (itself, or the one copy made) to save for backward), as `plan`
    says: TRAIN (the group's batch statistics, ONE Allreduce), BATCH (this rank's batch statistics)
    or RUNNING (the running statistics)."""
    x, layout = views.dense(x)
    xw, _ = views.dense(views.work_tensor(x), layout)
    x3 = views.kernel_view(xw, layout)
    dtypes = (None if weight is None else weight.dtype, None if bias is None else bias.dtype)
    w = _f64(weight)
    y = views.empty(x.shape, xw.dtype, layout)
    entry = None
    if _stashes(plan, stash):  # statistics kept for a checkpointed recomputation, then normalize
        n, mean, invstd, entry = _stats(x3, plan, x, stash)
        if mean is not None and x3.size:
            normalize(x3, mean, invstd, w, _f64(bias), out3=views.kernel_view(y, layout))
    else:  # statistics (the group's: ONE Allreduce) and normalize, written into y's memory
        n, mean, invstd, _ = forward(x3, plan, x.dtype, tuple(x.shape), w, _f64(bias),
                                     out3=views.kernel_view(y, layout))
    if mean is None:  # the whole group has 0 samples
        return (views.empty(x.shape, x.dtype, layout),
                Saved(plan.mode, layout, plan.exchange, n, None, None, None, dtypes, stash, entry), x)
    saved = Saved(plan.mode, layout, plan.exchange, n, mean, invstd, w, dtypes, stash, entry)
    return (y if y.dtype == x.dtype else y.to(x.dtype)), saved, x


def backward_step(s: Saved, x: torch.Tensor, dy: torch.Tensor, need_x: bool, need_w: bool,
                  need_b: bool) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
    """dy -> (dx, dweight, dbias), each None unless needed. dx uses the group's sums (ONE
    Allreduce, in TRAIN mode and only when the input needs a gradient); dweight and dbias are this
    rank's own sums."""
    if s.stash is not None:
        s.stash.drop(s.entry)
    wdt, bdt = s.param_dtypes
    C = x.shape[1]
    if s.mean is None:  # every rank knows the group had 0 samples: nobody communicates
        return (views.empty(x.shape, x.dtype, s.layout) if need_x else None,
                torch.zeros(C, dtype=wdt) if need_w else None,
                torch.zeros(C, dtype=bdt) if need_b else None)
    layout, mean, invstd = s.layout, s.mean, s.invstd
    assert invstd is not None
    x, _ = views.dense(x, layout)
    xw, _ = views.dense(views.work_tensor(x), layout)
    dyw, _ = views.dense(views.work_tensor(dy), layout)
    x3, dy3 = views.kernel_view(xw, layout), views.kernel_view(dyw, layout)
    dx = None
    if need_x and s.mode is not Mode.RUNNING:
        # the group's sums for dx (ONE Allreduce), this rank's for dweight and dbias
        dx = views.empty(x.shape, xw.dtype, layout)
        _, g, h = train_backward(dy3, x3, mean, invstd, s.w, s.n, s.exchange, x.dtype,
                                 out3=views.kernel_view(dx, layout))
    elif x3.size == 0:
        g, h = np.zeros(C), np.zeros(C)
    elif s.mode is Mode.RUNNING and not (need_w or need_b):
        g = h = None
    else:
        g, h = backward_reduce(dy3, x3, mean, invstd)  # invstd lets it fold when exact
    if need_x and s.mode is Mode.RUNNING:
        dx = views.from_kernel_view(eval_backward(dy3, invstd, s.w), x.shape, layout)
    if dx is not None and dx.dtype != x.dtype:
        dx = dx.to(x.dtype)
    dw = torch.from_numpy(h * invstd).to(wdt) if need_w else None
    db = torch.from_numpy(g).to(bdt) if need_b else None
    return dx, dw, db


class SyncBatchNormFunction(torch.autograd.Function):
    """apply(input (N, C, *), weight (C,) or None, bias (C,) or None, plan, stash=None) -> output
    (N, C, *). `stash`: the layer's `StatsStash`, for activation checkpointing (optional)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None,
                plan: StepPlan, stash: StatsStash | None = None) -> torch.Tensor:
        """See `forward_step`. Keeps the input and statistics for backward."""
        y, ctx.s, xd = forward_step(x, weight, bias, plan, stash)
        ctx.save_for_backward(xd)
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, dy: torch.Tensor) -> tuple:
        """dy -> (dx, dweight, dbias, None, None): see `backward_step`."""
        (x,) = ctx.saved_tensors
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        return (*backward_step(ctx.s, x, dy, need_x, need_w, need_b), None, None)
