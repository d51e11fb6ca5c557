"""The training step as torch custom operators, so that torch.compile traces a SyncBatchNorm.

torch.compile cannot trace numpy kernels, MPI calls or a Python object handed to an autograd
Function. The step is therefore three opaque operators, each with a fake (meta) implementation that
gives the output shapes:

- ``syncnorm::batch_norm_train(x, weight?, bias?, running_mean?, layer) -> (y, mean, var, invstd,
  count)``: the group's statistics (ONE Allreduce) about a shift taken from the running mean, and
  the normalized output; differentiable (its autograd formula calls the backward operator);
- ``syncnorm::batch_norm_train_backward(dy, x, weight?, mean, invstd, count, layer, need_x,
  need_w, need_b) -> (dx, dweight, dbias)`` (ONE Allreduce when the input needs a gradient);
- ``syncnorm::batch_norm_record(running_mean?, running_var?, num_batches_tracked?, mean, var,
  count, layer)``: the running-statistics update, in place (declared in ``mutates_args``, so the
  compiled graph knows the buffers change; torch allows no autograd formula on an operator that
  mutates, hence a separate one).

An operator takes tensors and numbers only, so a layer is named by an int key (`register`): the
operator finds the layer, and with it the exchange and the running-statistics rule, in a registry of
weak references. The kernels are `function.forward_step` / `backward_step`, the same as in eager
mode, so a compiled step gives the eager step's numbers.
"""
from __future__ import annotations

import dataclasses
import itertools
import weakref
from typing import TYPE_CHECKING, Optional

import numpy as np
import torch
from torch import Tensor

from ..functional.stats import Mode
from . import _views as views
from .function import Saved, backward_step, forward_step

if TYPE_CHECKING:
    from .sync_batchnorm import SyncBatchNorm

__all__ = ["register", "layer", "train_step", "traced", "AVAILABLE"]

_keys = itertools.count()
_LAYERS: dict[int, weakref.ref] = {}


def register(module: "SyncBatchNorm") -> int:
    """A new key naming `module` in the operators' calls (a deep copy or an unpickled layer gets
    its own)."""
    key = next(_keys)
    _LAYERS[key] = weakref.ref(module, lambda _, k=key: _LAYERS.pop(k, None))
    return key


def layer(key: int) -> "SyncBatchNorm":
    ref = _LAYERS.get(key)
    module = None if ref is None else ref()
    if module is None:
        raise RuntimeError(f"syncnorm::batch_norm_train: no SyncBatchNorm with key {key} is alive in "
                           "this process (a compiled graph outlived its model)")
    return module


def _f64(v: np.ndarray | None, C: int) -> Tensor:
    return torch.zeros(C, dtype=torch.float64) if v is None else torch.from_numpy(np.array(v, np.float64))


def _train(x: Tensor, weight: Optional[Tensor], bias: Optional[Tensor],
                     running_mean: Optional[Tensor], key: int
                     ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """x (N, C, *) dense -> (y like x, mean (C,), biased var (C,), invstd (C,), count ()), all
    statistics float64, of the group's batch; `running_mean` gives the shift. Count 0: the group
    had no samples (the statistics are zeros then)."""
    got: dict[str, np.ndarray] = {}
    plan = dataclasses.replace(layer(key)._plan(buffers=(running_mean, None, None)),
                               record=lambda n, mean, var: got.update(var=var))
    y, s, _ = forward_step(x, weight, bias, plan)
    C = x.shape[1]
    return (y, _f64(s.mean, C), _f64(got.get("var"), C), _f64(s.invstd, C),
            torch.tensor(float(s.n), dtype=torch.float64))


def _train_fake(x, weight, bias, running_mean, key):
    stat = x.new_empty(x.shape[1], dtype=torch.float64)
    return (torch.empty_like(x), stat, torch.empty_like(stat), torch.empty_like(stat),
            x.new_empty((), dtype=torch.float64))


def _record(running_mean: Optional[Tensor], running_var: Optional[Tensor],
                      num_batches_tracked: Optional[Tensor], mean: Tensor, var: Tensor, count: Tensor,
                      key: int) -> None:
    """The running-statistics update of a training step (in place; nothing when count is 0)."""
    n = float(count)
    if n > 0:
        layer(key)._record(running_mean, running_var, num_batches_tracked, n, mean.numpy(), var.numpy())


def _record_fake(running_mean, running_var, num_batches_tracked, mean, var, count, key):
    return None


def _train_backward(dy: Tensor, x: Tensor, weight: Optional[Tensor], mean: Tensor,
                              invstd: Tensor, count: Tensor, key: int, need_x: bool, need_w: bool,
                              need_b: bool) -> tuple[Tensor, Tensor, Tensor]:
    """-> (dx like x, or (0,) when not needed; dweight (C,) f64; dbias (C,) f64)."""
    n = float(count)
    w = None if weight is None else weight.detach().to(torch.float64, copy=True).numpy()
    s = Saved(Mode.TRAIN, views.layout_of(x) or "nc", layer(key)._exchange, n,
              mean.numpy() if n > 0 else None, invstd.numpy() if n > 0 else None, w,
              (torch.float64, torch.float64))
    dx, dw, db = backward_step(s, x, dy, need_x, need_w, need_b)
    C = x.shape[1]
    return (x.new_empty(0) if dx is None else dx,
            torch.zeros(C, dtype=torch.float64) if dw is None else dw,
            torch.zeros(C, dtype=torch.float64) if db is None else db)


def _train_backward_fake(dy, x, weight, mean, invstd, count, key, need_x, need_w, need_b):
    C = x.shape[1]
    return (torch.empty_like(x) if need_x else x.new_empty(0), mean.new_empty(C), mean.new_empty(C))


def _setup_context(ctx, inputs, output) -> None:
    x, weight, bias, _, key = inputs
    _, mean, _, invstd, count = output
    ctx.save_for_backward(x, weight, mean, invstd, count)
    ctx.key = key
    ctx.dtypes = (None if weight is None else weight.dtype, None if bias is None else bias.dtype)


def _backward(ctx, dy, *_stat_grads):
    x, weight, mean, invstd, count = ctx.saved_tensors
    need_x, need_w, need_b = ctx.needs_input_grad[:3]
    dx, dw, db = torch.ops.syncnorm.batch_norm_train_backward(
        dy.contiguous() if views.layout_of(dy) is None else dy, x, weight, mean, invstd, count,
        ctx.key, need_x, need_w, need_b)
    wdt, bdt = ctx.dtypes
    return (dx if need_x else None, dw.to(wdt) if need_w else None, db.to(bdt) if need_b else None,
            None, None)


#: torch >= 2.4 has torch.library.custom_op; with an older torch, training is not traced by
#: torch.compile (the eager Function runs, as before these operators existed)
AVAILABLE = hasattr(torch.library, "custom_op")

if AVAILABLE:
    _lib = torch.library
    batch_norm_train = _lib.custom_op("syncnorm::batch_norm_train", _train, mutates_args=(),
                                      device_types="cpu")
    batch_norm_train.register_fake(_train_fake)
    batch_norm_train.register_autograd(_backward, setup_context=_setup_context)
    batch_norm_train_backward = _lib.custom_op("syncnorm::batch_norm_train_backward", _train_backward,
                                               mutates_args=(), device_types="cpu")
    batch_norm_train_backward.register_fake(_train_backward_fake)
    batch_norm_record = _lib.custom_op("syncnorm::batch_norm_record", _record, device_types="cpu",
                                       mutates_args=("running_mean", "running_var",
                                                     "num_batches_tracked"))
    batch_norm_record.register_fake(_record_fake)

_is_compiling = getattr(getattr(torch, "compiler", None), "is_compiling", lambda: False)


def traced() -> bool:
    """True while torch.compile traces (and the operators exist to trace the training step)."""
    return AVAILABLE and _is_compiling()


def train_step(module: "SyncBatchNorm", x: Tensor) -> Tensor:
    """The training forward through the operators (what torch.compile traces)."""
    if views.layout_of(x) is None:
        x = x.contiguous()
    key = module._op_key
    y, mean, var, _, count = torch.ops.syncnorm.batch_norm_train(x, module.weight, module.bias,
                                                                 module.running_mean, key)
    torch.ops.syncnorm.batch_norm_record(module.running_mean, module.running_var,
                                         module.num_batches_tracked, mean.detach(), var.detach(),
                                         count.detach(), key)
    return y
