"""`convert_sync_batchnorm` and its exact inverse `revert_sync_batchnorm` for torch modules.

torch.nn.SyncBatchNorm.convert_sync_batchnorm builds a fresh layer and copies a list of
attributes: hooks, extra attributes and subclass behaviour are lost without a word (timm's
BatchNormAct2d loses its activation, pytorch issue 187298), an uninitialized LazyBatchNorm becomes
a SyncBatchNorm with 0 features, and there is no way back (pytorch issue 41081).

Here the converted module takes over the original's whole `__dict__` (the dict object itself, not a
copy): the same Parameter objects, buffers, `training`, `qconfig`, hooks (with their handles),
submodules and every extra attribute. Hooks bound to the old object are re-bound to the new one. The
original class is recorded, and `revert_sync_batchnorm` moves the state back into an instance of
exactly that class. An old module object that is still referenced elsewhere shares the state with
its replacement (as torch's converter shares parameters and buffers), but runs unsynchronized: use
the returned module.

Subclasses: a BatchNorm subclass becomes a class made from it and SyncBatchNorm, which keeps its
forward, checks and buffers (`subclass.py`); lazy subclasses and torch.nn.SyncBatchNorm subclasses
are refused with a TypeError before anything is converted.

Lazy modules: an uninitialized torch LazyBatchNorm1d/2d/3d becomes a `LazySyncBatchNorm`, which
infers num_features and materializes its parameters on the first forward (torch's lazy protocol)
and then becomes a SyncBatchNorm; revert gives back the lazy class while still uninitialized, and
the class the lazy module would have become (BatchNorm2d for LazyBatchNorm2d) afterwards.
"""
from __future__ import annotations

import types
import weakref
from typing import Any

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm, _LazyNormBase
from torch.nn.modules.lazy import LazyModuleMixin

from ..distributed.group import check_process_group
from .subclass import check_convertible, synchronized_class
from .sync_batchnorm import LazySyncBatchNorm, SyncBatchNorm

try:
    from torch.nn.modules.module import _WrappedHook
except ImportError:  # pragma: no cover - older torch
    _WrappedHook = None

__all__ = ["convert_sync_batchnorm", "revert_sync_batchnorm", "KNOWN_BATCHNORMS"]

KNOWN_BATCHNORMS: set[type] = {nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm,
                               nn.LazyBatchNorm1d, nn.LazyBatchNorm2d, nn.LazyBatchNorm3d}
"""The torch BatchNorm classes that become a plain `SyncBatchNorm` (their own input-dimension check
is kept); any other `_BatchNorm` subclass becomes a class made from it and SyncBatchNorm that keeps
its methods (see `syncnorm.torch.subclass`)."""

_SAVED = "_sync_saved_attrs"


# ---------------------------------------------------------------------------------------- moving
def _rebound(hook: Any, old: nn.Module, new: nn.Module) -> Any:
    if isinstance(hook, types.MethodType) and hook.__self__ is old:
        return types.MethodType(hook.__func__, new)
    if _WrappedHook is not None and isinstance(hook, _WrappedHook):
        if getattr(hook, "with_module", False) and hook.module() is old:
            hook.module = weakref.ref(new)
        hook.hook = _rebound(hook.hook, old, new)
    return hook


def _move(src: nn.Module, cls: type) -> nn.Module:
    """A `cls` instance that owns `src`'s __dict__ (the same dict object); hooks bound to `src`
    are re-bound to it."""
    dst = cls.__new__(cls)
    d = src.__dict__
    object.__setattr__(dst, "__dict__", d)
    for key, store in d.items():
        if key.startswith("_") and "hooks" in key and isinstance(store, dict):
            for hid, hook in list(store.items()):
                store[hid] = _rebound(hook, src, dst)
    return dst


# ---------------------------------------------------------------------------------------- convert
def _to_sync(m: _BatchNorm, process_group: Any) -> SyncBatchNorm:
    cls = type(m)
    lazy = isinstance(m, LazyModuleMixin) and isinstance(m, _LazyNormBase)
    if cls in KNOWN_BATCHNORMS:
        target = LazySyncBatchNorm if lazy else SyncBatchNorm
    else:
        target = synchronized_class(cls)
    sync = _move(m, target)
    d = sync.__dict__
    d[_SAVED] = {k: d[k] for k in SyncBatchNorm._SYNC_ATTRS if k in d}
    sync._sync_init(process_group, cls, None)
    return sync  # type: ignore[return-value]


def convert_sync_batchnorm(module: nn.Module, process_group: Any = None) -> nn.Module:
    """Replace every torch BatchNorm (any `_BatchNorm`: BatchNorm1d/2d/3d, their lazy forms,
    torch.nn.SyncBatchNorm, subclasses) in the tree by a syncnorm `SyncBatchNorm` over
    `process_group` (a torch.distributed group, a syncnorm ProcessGroup, an mpi4py communicator,
    or None = the launcher's world: torch's default group under torchrun, else the MPI world).

    Returns the converted module (a new object when `module` itself is a BatchNorm). Layers are
    told apart by the order of their first training use in the group, which must be the same on
    every rank (it is when every rank trains the same model). A subclass keeps what it adds: it
    becomes a `Sync<Name>` class made from it and SyncBatchNorm (see `syncnorm.torch.subclass`);
    the few that cannot be kept raise TypeError before anything is converted. A module object that
    appears several times in the tree is converted once.
    """
    check_process_group(process_group)
    _check_subclasses(module, "", set())
    return _convert(module, process_group, {})


def _check_subclasses(module: nn.Module, path: str, seen: set[int]) -> None:
    if id(module) in seen:
        return
    seen.add(id(module))
    if (isinstance(module, _BatchNorm) and not isinstance(module, SyncBatchNorm)
            and type(module) not in KNOWN_BATCHNORMS):
        check_convertible(type(module), path or "the top module")
    for name, child in module._modules.items():
        if child is not None:
            _check_subclasses(child, f"{path}.{name}" if path else name, seen)


def _convert(module: nn.Module, process_group: Any, memo: dict[int, nn.Module]) -> nn.Module:
    if id(module) in memo:
        return memo[id(module)]
    out = module
    if isinstance(module, _BatchNorm) and not isinstance(module, SyncBatchNorm):
        out = _to_sync(module, process_group)
    memo[id(module)] = out
    for name, child in list(out._modules.items()):
        if child is not None:
            new = _convert(child, process_group, memo)
            if new is not child:
                out._modules[name] = new
    return out


# ---------------------------------------------------------------------------------------- revert
class _BatchNormXd(_BatchNorm):
    """Local BatchNorm for any input of rank >= 2 (what a directly built SyncBatchNorm reverts to)."""

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {input.dim()}D input)")


class _LazyBatchNormXd(_LazyNormBase, _BatchNormXd):
    """Lazy form of `_BatchNormXd` (what a directly built, uninitialized LazySyncBatchNorm reverts to)."""

    cls_to_become = _BatchNormXd


def _local_class(m: SyncBatchNorm) -> type:
    original = m.__dict__.get("_original_class")
    still_lazy = isinstance(m, LazySyncBatchNorm)
    if original is None:
        return _LazyBatchNormXd if still_lazy else _BatchNormXd
    if issubclass(original, LazyModuleMixin) and not still_lazy:
        return getattr(original, "cls_to_become", None) or original  # what it would have become
    return original


def revert_sync_batchnorm(module: nn.Module) -> nn.Module:
    """Undo `convert_sync_batchnorm` exactly: every syncnorm SyncBatchNorm becomes its recorded
    class again, owning the same state (Parameters, buffers, hooks, attributes).

    A SyncBatchNorm built directly (not converted) becomes a local BatchNorm that accepts any
    input of rank >= 2. A converted lazy BatchNorm that has materialized since becomes the class
    torch's lazy module would have become (LazyBatchNorm2d -> BatchNorm2d).
    """
    return _revert(module, {})


def _revert(module: nn.Module, memo: dict[int, nn.Module]) -> nn.Module:
    if id(module) in memo:
        return memo[id(module)]
    out = module
    if isinstance(module, SyncBatchNorm):
        out = _move(module, _local_class(module))
        d = out.__dict__
        saved = d.pop(_SAVED, {})
        for k in SyncBatchNorm._SYNC_ATTRS:
            d.pop(k, None)
        d.update(saved)
    memo[id(module)] = out
    for name, child in list(out._modules.items()):
        if child is not None:
            new = _revert(child, memo)
            if new is not child:
                out._modules[name] = new
    return out
