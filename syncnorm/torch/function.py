"""The autograd Function of `syncnorm.torch.SyncBatchNorm`: syncnorm's kernels on tensor memory.

Forward (training): the local shifted sums of `functional.moments` (float64, about a shift equal on
every rank), summed over the group in ONE Allreduce by the layer's `StatsExchange`, give the global
(count, mean, biased variance); `functional.batch_norm.normalize` writes the output straight into the
new tensor's memory. Backward: `backward_reduce` gives the local (sum dy, sum dy*(x - mean)), ONE
Allreduce sums them over the group, `backward_elemt` writes the input gradient. The weight and bias
gradients stay local (as in torch: DistributedDataParallel averages them).

The module (`sync_batchnorm.py`) decides what a step does and hands it over as a `StepPlan`:
"sync" (training: batch statistics of the group; a group of size 1 never communicates), "local"
(eval without running statistics: this rank's batch statistics) or "running" (eval with running
statistics: constants).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch
from torch.autograd.function import once_differentiable

from ..distributed.exchange import StatsExchange
from ..functional import batch_norm as K
from ..functional.moments import mean_var, moments, poorly_shifted
from . import _views as V

__all__ = ["StepPlan", "SyncBatchNormFunction"]


@dataclass
class StepPlan:
    """What one forward does.

    mode: "sync" | "local" | "running".
    exchange: the group's exchange ("sync" only).
    shift: (C,) float64 statistics shift, identical on every rank of the group ("sync", "local").
    running: (mean, var) float64 (C,) each ("running" only).
    record: called with (count, mean, var) of the group's batch after a "sync" step with count > 0
        (updates the running statistics).
    """

    mode: str
    eps: float
    exchange: StatsExchange | None = None
    shift: np.ndarray | None = None
    running: tuple[np.ndarray, np.ndarray] | None = None
    record: Callable[[float, np.ndarray, np.ndarray], None] | None = None


def _f64(t: torch.Tensor | None) -> np.ndarray | None:
    """A float64 copy of a parameter (the values of this forward, whatever happens to it later)."""
    return None if t is None else t.detach().to(torch.float64, copy=True).numpy()


def _batch_stats(x3: np.ndarray, plan: StepPlan, dtype: torch.dtype,
                 shape: tuple) -> tuple[float, np.ndarray | None, np.ndarray | None]:
    """(count, mean, var) of the batch ("local") or of the group's batch ("sync")."""
    shift = plan.shift
    assert shift is not None

    def sums(k: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
        n, s1, s2 = moments(x3, k)
        if plan.exchange is not None:
            n, s1, s2 = plan.exchange.forward(n, s1, s2, (str(dtype), k.tobytes()))
        return n, s1, s2

    n, s1, s2 = sums(shift)
    if poorly_shifted(n, s1, s2):  # rare (first step on data far from the shift): every rank alike
        shift = shift + s1 / n
        n, s1, s2 = sums(shift)
    if n == 1:
        grouped = plan.exchange is not None and plan.exchange.group.size > 1
        raise ValueError("Expected more than 1 value per channel when training, got input size "
                         f"{tuple(shape)}" + (" (1 value in the whole process group)" if grouped else ""))
    if n == 0:
        return 0, None, None
    mean, var = mean_var(n, s1, s2, shift)
    if plan.record is not None:
        plan.record(n, mean, var)
    return n, mean, var


class SyncBatchNormFunction(torch.autograd.Function):
    """apply(input (N, C, *), weight (C,) or None, bias (C,) or None, plan) -> output (N, C, *)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None,
                plan: StepPlan) -> torch.Tensor:
        """input (N, C, *) -> output of the same shape, dtype and memory layout, as `plan` says:
        "sync" (the group's batch statistics, ONE Allreduce), "local" (this rank's batch statistics) or
        "running" (the running statistics). Keeps the input and statistics for backward.
        """
        x, layout = V.dense(x)
        xw, _ = V.dense(V.work_tensor(x), layout)
        x3 = V.acm(xw, layout)
        if plan.mode == "running":
            assert plan.running is not None
            mean, var = plan.running
            n: float = x3.shape[0] * x3.shape[2]
        else:
            n, mean, var = _batch_stats(x3, plan, x.dtype, tuple(x.shape))
        ctx.mode, ctx.layout, ctx.exchange, ctx.n = plan.mode, layout, plan.exchange, n
        ctx.param_dtypes = (None if weight is None else weight.dtype,
                            None if bias is None else bias.dtype)
        ctx.mean = mean
        if mean is None:  # the whole group has 0 samples
            ctx.save_for_backward(x)
            return V.empty(x.shape, x.dtype, layout)
        invstd = 1.0 / np.sqrt(var + plan.eps)
        w = _f64(weight)
        y = V.empty(x.shape, xw.dtype, layout)
        if x3.size:
            K.normalize(x3, mean, invstd, w, _f64(bias), out3=V.acm(y, layout))
        ctx.invstd, ctx.w = invstd, w
        ctx.save_for_backward(x)
        return y if y.dtype == x.dtype else y.to(x.dtype)

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, dy: torch.Tensor) -> tuple:
        """dy -> (dx, dweight, dbias, None). dx uses the group's sums (ONE Allreduce, in "sync" mode
        and only when the input needs a gradient); dweight and dbias are this rank's own sums.
        """
        (x,) = ctx.saved_tensors
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        wdt, bdt = ctx.param_dtypes
        C = x.shape[1]
        if ctx.mean is None:  # every rank knows the group had 0 samples: nobody communicates
            return (V.empty(x.shape, x.dtype, ctx.layout) if need_x else None,
                    torch.zeros(C, dtype=wdt) if need_w else None,
                    torch.zeros(C, dtype=bdt) if need_b else None, None)
        layout, mean, invstd = ctx.layout, ctx.mean, ctx.invstd
        xw, _ = V.dense(V.work_tensor(x), layout)
        dyw, _ = V.dense(V.work_tensor(dy), layout)
        x3, dy3 = V.acm(xw, layout), V.acm(dyw, layout)
        if x3.size == 0:
            g, h = np.zeros(C), np.zeros(C)
        elif ctx.mode == "running" and not (need_w or need_b):
            g = h = None
        else:
            g, h = K.backward_reduce(dy3, x3, mean, invstd)  # invstd lets it fold when exact
        dw = torch.from_numpy(h * invstd).to(wdt) if need_w else None
        db = torch.from_numpy(g).to(bdt) if need_b else None
        dx = None
        if need_x:
            if ctx.mode == "running":
                dx = V.from_acm(K.eval_backward(dy3, invstd, ctx.w), x.shape, layout)
            else:
                if ctx.exchange is not None:
                    g, h = ctx.exchange.backward(g, h, (str(x.dtype),))
                dx = V.empty(x.shape, xw.dtype, layout)
                if x3.size:
                    K.backward_elemt(dy3, x3, mean, invstd, ctx.w, g, h, ctx.n,
                                     out3=V.acm(dx, layout))
            if dx.dtype != x.dtype:
                dx = dx.to(x.dtype)
        return dx, dw, db, None
