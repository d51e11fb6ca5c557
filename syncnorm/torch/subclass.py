"""Converting a BatchNorm subclass without losing what it adds (timm's `BatchNormAct2d`, say).

The converter turns an instance of a subclass `Sub` (of BatchNorm1d/2d/3d or `_BatchNorm`) into an
instance of `synchronized_class(Sub)`, a class made once per `Sub` whose bases are `(Sub,
SyncBatchNorm)`: everything `Sub` defines keeps running (its forward, `_check_input_dim`, extra
buffers, repr), and what `Sub` inherits from torch's BatchNorm comes from SyncBatchNorm:

- a `Sub.forward` that calls `super().forward(x)` reaches SyncBatchNorm's forward;
- a `Sub.forward` that calls `torch.nn.functional.batch_norm` itself (timm's does, with its own
  momentum and num_batches_tracked bookkeeping) has that call synchronized in training: while the
  module runs, a torch function mode routes every training-mode `F.batch_norm` call to the group's
  statistics with the call's own arguments (weight, bias, running buffers, momentum, eps), so the
  function is exactly the one `Sub` computed, with the group's batch;
- a training forward that produced no synchronized step (statistics computed some other way)
  raises `RuntimeError` instead of training with local statistics.

Eval runs `Sub`'s own forward untouched (torch's batch norm with the running statistics), so
export, TorchScript and torch.compile see the subclass's code. A training forward with the torch
function mode is not traceable: torch.compile runs it eagerly (a graph break; fullgraph=True
refuses).

Refused (TypeError at conversion): lazy subclasses (convert after their first forward), and
subclasses of torch.nn.SyncBatchNorm: the made class would still be a torch.nn.SyncBatchNorm, which
DistributedDataParallel refuses on CPU ("SyncBatchNorm layers only work with GPU modules"), and
their `super().forward` is torch's GPU-only one.
"""
from __future__ import annotations

import functools
import inspect
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F
from torch.overrides import TorchFunctionMode

from ..functional.stats import Mode, StepPlan, running_update, unbiased
from . import _views as views
from .function import SyncBatchNormFunction
from .sync_batchnorm import SyncBatchNorm

__all__ = ["synchronized_class", "check_convertible", "synchronized_batch_norm"]

_CLASSES: dict[type, type] = {}
_BN_SIGNATURE = inspect.signature(F.batch_norm)


def check_convertible(cls: type, where: str) -> None:
    """Raise TypeError for the subclasses the converter cannot keep (see the module doc)."""
    from torch.nn.modules.lazy import LazyModuleMixin
    name = f"{cls.__module__}.{cls.__qualname__}"
    if issubclass(cls, LazyModuleMixin):
        raise TypeError(f"convert_sync_batchnorm: {name} (at {where}) is a lazy BatchNorm subclass; "
                        "convert the model after its first forward (when the layer has become "
                        "its non-lazy class)")
    if issubclass(cls, nn.SyncBatchNorm):
        raise TypeError(f"convert_sync_batchnorm: {name} (at {where}) subclasses "
                        "torch.nn.SyncBatchNorm, which stays GPU-only (its forward, and "
                        "DistributedDataParallel's CPU check); subclass torch.nn.BatchNorm2d (or "
                        "syncnorm.torch.SyncBatchNorm) instead")


def synchronized_class(cls: type) -> type:
    """The class (made once per `cls`) that a converted `cls` instance becomes."""
    made = _CLASSES.get(cls)
    if made is None:
        ns: dict[str, Any] = {"__module__": cls.__module__, "__qualname__": f"Sync{cls.__qualname__}",
                              "__reduce_ex__": _reduce_ex, "__call__": _call,
                              "__doc__": f"{cls.__qualname__} with syncnorm's synchronized statistics "
                                         "(made by convert_sync_batchnorm; revert gives back the original)."}
        made = _CLASSES[cls] = type(f"Sync{cls.__name__}", (cls, SyncBatchNorm), ns)
    return made


def _new_synchronized(original: type) -> nn.Module:
    klass = synchronized_class(original)
    return klass.__new__(klass)


def _reduce_ex(self: SyncBatchNorm, protocol: int) -> tuple:
    """Pickle by the original class (the made class cannot be found by its name)."""
    return _new_synchronized, (self._original_class,), self.__getstate__()


def _call(self: SyncBatchNorm, *args: Any, **kwargs: Any) -> Any:
    if self.training:
        return _synchronized_call(self, *args, **kwargs)
    return nn.Module.__call__(self, *args, **kwargs)


@torch._dynamo.disable
def _synchronized_call(self: SyncBatchNorm, *args: Any, **kwargs: Any) -> Any:
    """A training call: the subclass's forward with its F.batch_norm calls synchronized."""
    before = self.__dict__.get("_sync_steps", 0)
    with _SynchronizeBatchNorm(self):
        out = nn.Module.__call__(self, *args, **kwargs)
    if self.__dict__.get("_sync_steps", 0) == before:
        cls = self._original_class
        raise RuntimeError(
            f"{type(self).__name__}: the training forward of {cls.__module__}.{cls.__qualname__} "
            "computed no batch statistics through torch.nn.functional.batch_norm or "
            "super().forward, so syncnorm could not synchronize them over the group; revert the "
            "model (revert_sync_batchnorm), or make its forward call one of those two")
    return out


class _SynchronizeBatchNorm(TorchFunctionMode):
    """Routes training-mode F.batch_norm calls made during one module call to the group's step."""

    def __init__(self, module: SyncBatchNorm) -> None:
        super().__init__()
        self.module = module

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.batch_norm:
            a = _BN_SIGNATURE.bind(*args, **kwargs)
            a.apply_defaults()
            if a.arguments["training"]:
                return synchronized_batch_norm(self.module, **a.arguments)
        return func(*args, **kwargs)


def synchronized_batch_norm(module: SyncBatchNorm, input: torch.Tensor, running_mean: torch.Tensor | None,
                            running_var: torch.Tensor | None, weight: torch.Tensor | None = None,
                            bias: torch.Tensor | None = None, training: bool = True,
                            momentum: float = 0.1, eps: float = 1e-5) -> torch.Tensor:
    """F.batch_norm in training (its arguments, its running-statistics rule: (1 - momentum) *
    running + momentum * batch, num_batches_tracked untouched) with the statistics of `module`'s
    group."""
    who = type(module).__name__
    views.check_tensor(input, who)
    module._check_channels(input)
    module.__dict__["_sync_steps"] = module.__dict__.get("_sync_steps", 0) + 1
    record = functools.partial(_record, module, running_mean, running_var, float(momentum))
    plan = StepPlan(Mode.TRAIN, float(eps), exchange=module._get_exchange(),
                    shift=module._shift(running_mean), record=record, who=who)
    return SyncBatchNormFunction.apply(input, weight, bias, plan, module._stash_for_step())


def _record(module: SyncBatchNorm, running_mean: torch.Tensor | None, running_var: torch.Tensor | None,
            momentum: float, n: float, mean: np.ndarray, var: np.ndarray) -> None:
    if running_mean is None:
        module._stat_shift = mean
    if running_mean is None or running_var is None:
        return
    f64 = lambda t: t.detach().to(torch.float64, copy=True).numpy()  # noqa: E731
    new_m, new_v = running_update(f64(running_mean), f64(running_var), mean, unbiased(var, n),
                                  momentum, 1)
    running_mean.copy_(torch.from_numpy(new_m))
    running_var.copy_(torch.from_numpy(new_v))
