"""The autograd Function of `syncnorm.torch.SyncBatchNorm`: syncnorm's kernels on tensor memory.

The module decides what a step does and hands it over as a `functional.stats.StepPlan` (the same
plan the numpy layer builds). Forward: `plan_stats` gives (count, mean, invstd) — in training the
group's, summed by the plan's exchange in ONE Allreduce —, and `normalize` writes the output straight
into the new tensor's memory. Backward: `backward_reduce` gives the local (sum dy, sum dy*(x - mean)),
ONE Allreduce sums them over the group, `backward_elemt` writes the input gradient. The weight and
bias gradients stay local (as in torch: DistributedDataParallel averages them).
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch.autograd.function import once_differentiable

from ..functional.batch_norm import backward_reduce, eval_backward, forward, train_backward
from ..functional.stats import Mode, StepPlan
from . import _views as views

__all__ = ["StepPlan", "SyncBatchNormFunction"]


def _f64(t: torch.Tensor | None) -> np.ndarray | None:
    """A float64 copy of a parameter (the values of this forward, whatever happens to it later)."""
    return None if t is None else t.detach().to(torch.float64, copy=True).numpy()


class SyncBatchNormFunction(torch.autograd.Function):
    """apply(input (N, C, *), weight (C,) or None, bias (C,) or None, plan) -> output (N, C, *)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None,
                plan: StepPlan) -> torch.Tensor:
        """input (N, C, *) -> output of the same shape, dtype and memory layout, as `plan` says:
        TRAIN (the group's batch statistics, ONE Allreduce), BATCH (this rank's batch statistics) or
        RUNNING (the running statistics). Keeps the input and statistics for backward.
        """
        x, layout = views.dense(x)
        xw, _ = views.dense(views.work_tensor(x), layout)
        x3 = views.kernel_view(xw, layout)
        w = _f64(weight)
        y = views.empty(x.shape, xw.dtype, layout)
        # statistics (the group's: ONE Allreduce) and normalize, written into y's memory
        n, mean, invstd, _ = forward(x3, plan, str(x.dtype), tuple(x.shape), w, _f64(bias),
                                     out3=views.kernel_view(y, layout))
        ctx.mode, ctx.layout, ctx.exchange, ctx.n = plan.mode, layout, plan.exchange, n
        ctx.param_dtypes = (None if weight is None else weight.dtype,
                            None if bias is None else bias.dtype)
        ctx.mean = mean
        if mean is None:  # the whole group has 0 samples
            ctx.save_for_backward(x)
            return views.empty(x.shape, x.dtype, layout)
        ctx.invstd, ctx.w = invstd, w
        ctx.save_for_backward(x)
        return y if y.dtype == x.dtype else y.to(x.dtype)

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, dy: torch.Tensor) -> tuple:
        """dy -> (dx, dweight, dbias, None). dx uses the group's sums (ONE Allreduce, in TRAIN mode
        and only when the input needs a gradient); dweight and dbias are this rank's own sums.
        """
        (x,) = ctx.saved_tensors
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        wdt, bdt = ctx.param_dtypes
        C = x.shape[1]
        if ctx.mean is None:  # every rank knows the group had 0 samples: nobody communicates
            return (views.empty(x.shape, x.dtype, ctx.layout) if need_x else None,
                    torch.zeros(C, dtype=wdt) if need_w else None,
                    torch.zeros(C, dtype=bdt) if need_b else None, None)
        layout, mean, invstd = ctx.layout, ctx.mean, ctx.invstd
        xw, _ = views.dense(views.work_tensor(x), layout)
        dyw, _ = views.dense(views.work_tensor(dy), layout)
        x3, dy3 = views.kernel_view(xw, layout), views.kernel_view(dyw, layout)
        dx = None
        if need_x and ctx.mode is not Mode.RUNNING:
            # the group's sums for dx (ONE Allreduce), this rank's for dweight and dbias
            dx = views.empty(x.shape, xw.dtype, layout)
            _, g, h = train_backward(dy3, x3, mean, invstd, ctx.w, ctx.n, ctx.exchange,
                                     str(x.dtype), out3=views.kernel_view(dx, layout))
        elif x3.size == 0:
            g, h = np.zeros(C), np.zeros(C)
        elif ctx.mode is Mode.RUNNING and not (need_w or need_b):
            g = h = None
        else:
            g, h = backward_reduce(dy3, x3, mean, invstd)  # invstd lets it fold when exact
        if need_x and ctx.mode is Mode.RUNNING:
            dx = views.from_kernel_view(eval_backward(dy3, invstd, ctx.w), x.shape, layout)
        if dx is not None and dx.dtype != x.dtype:
            dx = dx.to(x.dtype)
        dw = torch.from_numpy(h * invstd).to(wdt) if need_w else None
        db = torch.from_numpy(g).to(bdt) if need_b else None
        return dx, dw, db, None
