"""`convert_sync_batchnorm` and its exact inverse `revert_sync_batchnorm`.

Conversion moves a BatchNorm module's whole state into a SyncBatchNorm: the same Parameter objects,
the same buffer arrays, the training flag and every extra attribute (nothing is copied by a list of
names, so nothing is dropped), and records the original class. Revert puts everything back into an
instance of the recorded class. An unknown subclass gets a warning naming what will not run. (How
this differs from torch's converter: docs/comparison.md.)
"""
from __future__ import annotations

import warnings
from collections import OrderedDict
from typing import Any

from .batchnorm import BatchNorm1d, BatchNorm2d, BatchNorm3d, _BatchNorm
from .lazy import (LazyBatchNorm1d, LazyBatchNorm2d, LazyBatchNorm3d, LazySyncBatchNorm,
                   _LazyNormMixin)
from .module import Module
from .sync_batchnorm import SyncBatchNorm

__all__ = ["convert_sync_batchnorm", "revert_sync_batchnorm", "KNOWN_BATCHNORMS"]

#: classes the converter knows completely
KNOWN_BATCHNORMS: set[type] = {BatchNorm1d, BatchNorm2d, BatchNorm3d,
                               LazyBatchNorm1d, LazyBatchNorm2d, LazyBatchNorm3d}

_SAVED = "_sync_saved_attrs"


def _move_state(src: Module, dst_cls: type) -> Module:
    dst = dst_cls.__new__(dst_cls)
    d = dict(src.__dict__)
    for store in ("_parameters", "_buffers", "_modules"):
        d[store] = OrderedDict(d[store])
    d["_non_persistent_buffers"] = set(d["_non_persistent_buffers"])
    object.__setattr__(dst, "__dict__", d)
    return dst


def _overridden(cls: type) -> list[str]:
    base = next(b for b in cls.__mro__ if b in KNOWN_BATCHNORMS or b is _BatchNorm)
    names = set()
    for klass in cls.__mro__:
        if klass is base:
            break
        names |= {n for n, v in vars(klass).items() if callable(v) and not n.startswith("__")}
        names |= {n for n in ("forward", "backward", "__call__") if n in vars(klass)}
    return sorted(names)


def _to_sync(m: _BatchNorm, process_group: Any) -> SyncBatchNorm:
    cls = type(m)
    if cls not in KNOWN_BATCHNORMS:
        warnings.warn(
            f"convert_sync_batchnorm: {cls.__module__}.{cls.__qualname__} is a BatchNorm subclass the "
            f"converter does not know; in the SyncBatchNorm that replaces it its own methods "
            f"({', '.join(_overridden(cls)) or 'none'}) will not run. revert_sync_batchnorm restores "
            "the original class.", UserWarning, stacklevel=3)
    # an uninitialized lazy BatchNorm stays lazy: it materializes on its first forward
    sync = _move_state(m, LazySyncBatchNorm if isinstance(m, _LazyNormMixin) else SyncBatchNorm)
    saved = {k: sync.__dict__[k] for k in SyncBatchNorm._SYNC_ATTRS if k in sync.__dict__}
    sync._sync_init(process_group, cls, None)
    object.__setattr__(sync, _SAVED, saved)
    return sync  # type: ignore[return-value]


def convert_sync_batchnorm(module: Module, process_group: Any = None) -> Module:
    """Replace every BatchNorm1d/2d/3d in the tree by a SyncBatchNorm over `process_group`.

    Returns the converted module (a new object when `module` itself is a BatchNorm). The
    Parameter objects, buffers, training flag and extra attributes are kept; the input-dimension
    check of the original class keeps working.
    """
    if isinstance(module, _BatchNorm) and not isinstance(module, SyncBatchNorm):
        return _to_sync(module, process_group)
    for name, child in list(module._modules.items()):
        if child is not None:
            new = convert_sync_batchnorm(child, process_group)
            if new is not child:
                module._modules[name] = new
    return module


def revert_sync_batchnorm(module: Module) -> Module:
    """Undo `convert_sync_batchnorm` exactly: every SyncBatchNorm becomes its recorded class again.

    A SyncBatchNorm that was built directly (not converted) becomes a `_BatchNormXd`, a local
    BatchNorm that accepts any input of rank >= 2.
    """
    if isinstance(module, SyncBatchNorm):
        cls = module._original_class or _BatchNormXd
        saved = module.__dict__.get(_SAVED, {})
        out = _move_state(module, cls)
        for k in SyncBatchNorm._SYNC_ATTRS + (_SAVED,):
            out.__dict__.pop(k, None)
        out.__dict__.update(saved)
        return out
    for name, child in list(module._modules.items()):
        if child is not None:
            new = revert_sync_batchnorm(child)
            if new is not child:
                module._modules[name] = new
    return module


class _BatchNormXd(_BatchNorm):
    """Local BatchNorm for any input of rank >= 2 (what a directly built SyncBatchNorm reverts to)."""

    def _check_input_dim(self, x: Any) -> None:
        if x.ndim < 2:
            raise ValueError(f"expected at least 2D input (got {x.ndim}D input)")
