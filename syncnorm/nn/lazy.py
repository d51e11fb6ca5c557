"""Lazy normalization layers: LazyBatchNorm1d/2d/3d and LazyInstanceNorm1d/2d/3d.

A lazy layer is built without `num_features`. Its weight, bias, running_mean and running_var are
placeholders (`UninitializedParameter`, `UninitializedBuffer`: empty arrays that say so in their
repr) until the first forward, which takes the number of features from the input's channel
dimension, materializes them (ones, zeros, zeros, ones), and turns the module into its concrete
class (`cls_to_become`, like torch): a LazyBatchNorm2d becomes a BatchNorm2d. The Parameter objects
are materialized in place, so references taken before (an optimizer's list) stay valid.

State dicts while uninitialized (torch stores UninitializedParameter placeholders; an ndarray state
dict has no such value, and leaving the keys out would drop them silently):
* `state_dict()` raises RuntimeError naming the uninitialized entries.
* `load_state_dict()` with the entries present materializes the module with the checkpoint's size
  and loads it (the module becomes its concrete class right away); a refused load undoes the
  materialization. With the entries absent, strict loading reports them missing; non-strict loading
  leaves the module uninitialized.

Where torch is wrong, syncnorm does better:
* The input is checked (dtype, rank, a non-zero channel count) before anything is materialized;
  torch materializes first and then rejects the input.
* Unbatched InstanceNorm input (C, *S) takes C from dim 0; torch reads input.shape[1].
* A lazy layer without parameters or running statistics still learns num_features; torch leaves it
  at 0 and then warns on every call that the input does not match.
* A state dict loaded into an uninitialized module sets num_features; torch leaves it at 0.
* `convert_sync_batchnorm` turns an uninitialized LazyBatchNorm into a `LazySyncBatchNorm`, which
  materializes on its first forward and becomes a SyncBatchNorm; `revert_sync_batchnorm` gives back
  the lazy class while uninitialized, the concrete BatchNormNd once materialized. torch's converter
  makes a SyncBatchNorm with 0 features out of it.
"""
from __future__ import annotations

from itertools import chain
from typing import Any, Callable

import numpy as np

from ._util import check_float_input
from .batchnorm import BatchNorm1d, BatchNorm2d, BatchNorm3d, _BatchNorm
from .instancenorm import InstanceNorm1d, InstanceNorm2d, InstanceNorm3d, _InstanceNorm
from .module import Parameter
from .sync_batchnorm import SyncBatchNorm

__all__ = ["UninitializedParameter", "UninitializedBuffer", "is_lazy", "LazyBatchNorm1d",
           "LazyBatchNorm2d", "LazyBatchNorm3d", "LazyInstanceNorm1d", "LazyInstanceNorm2d",
           "LazyInstanceNorm3d", "LazySyncBatchNorm"]


class UninitializedParameter(Parameter):
    """A Parameter whose shape is not known yet: `.data` is an empty array of its dtype."""

    __slots__ = ()

    def __init__(self, dtype: Any = np.float32, requires_grad: bool = True) -> None:
        super().__init__(np.empty(0, dtype), requires_grad)

    def materialize(self, shape: tuple[int, ...]) -> None:
        """Become an ordinary Parameter of `shape` (values uninitialized), in place."""
        self.data = np.empty(shape, self.data.dtype)
        self.grad = None
        self.__class__ = Parameter  # type: ignore[assignment]

    def __repr__(self) -> str:
        return "<UninitializedParameter>"


class UninitializedBuffer(np.ndarray):
    """A buffer whose shape is not known yet: an empty array of its dtype."""

    def __new__(cls, dtype: Any = np.float32) -> UninitializedBuffer:
        return np.empty(0, dtype).view(cls)

    def __repr__(self) -> str:
        return "<UninitializedBuffer>"

    __str__ = __repr__


def is_lazy(v: Any) -> bool:
    """True for an uninitialized parameter or buffer."""
    return isinstance(v, (UninitializedParameter, UninitializedBuffer))


class _LazyNormMixin:
    """Lazy behaviour shared by the lazy BatchNorm, InstanceNorm and SyncBatchNorm classes.

    Classes using it put it first in their bases, call `_lazy_setup()` at the end of `__init__`,
    set `cls_to_become`, and define `_channel_dim(x)`.
    """

    cls_to_become: type | None = None

    def _lazy_setup(self) -> None:
        """Replace the (0-sized) weight, bias and running statistics by placeholders."""
        dt = self._param_dtype
        for name, p in list(self._parameters.items()):
            if p is not None:
                self._parameters[name] = UninitializedParameter(dt, p.requires_grad)
        if self.track_running_stats:
            for name in ("running_mean", "running_var"):
                self._buffers[name] = UninitializedBuffer(dt)

    def has_uninitialized_params(self) -> bool:
        """True while some parameter or buffer is a placeholder."""
        return any(is_lazy(v) for v in chain(self._parameters.values(), self._buffers.values()))

    # ------------------------------------------------------------------ materialization
    def _materialize(self, num_features: int) -> Callable[[], None]:
        """Give every placeholder `num_features` entries, reset them (like torch's
        initialize_parameters) and become `cls_to_become`. Returns a callable undoing all this."""
        cls = type(self)
        attrs = {k: self.__dict__[k] for k in self._lazy_attrs() if k in self.__dict__}
        buffers = dict(self._buffers)
        params = [(p, p.data, p.grad) for p in self._parameters.values() if is_lazy(p)]
        nbt = self._buffers.get("num_batches_tracked")
        nbt_value = None if nbt is None else nbt.copy()
        self.num_features = int(num_features)
        for p, _, _ in params:
            p.materialize((self.num_features,))
        for name, b in list(self._buffers.items()):
            if isinstance(b, UninitializedBuffer):
                self._buffers[name] = np.empty(self.num_features, b.dtype)
        self.reset_parameters()
        self._become()

        def undo() -> None:
            for p, data, grad in params:
                p.__class__ = UninitializedParameter
                p.data, p.grad = data, grad
            self._buffers.clear()
            self._buffers.update(buffers)
            if nbt_value is not None:
                self._buffers["num_batches_tracked"][...] = nbt_value
            self.__dict__.update(attrs)
            self.__class__ = cls

        return undo

    def _lazy_attrs(self) -> tuple[str, ...]:
        """Attributes that materialization changes (restored by its undo)."""
        return ("num_features",)

    def _become(self) -> None:
        if self.cls_to_become is not None:
            self.__class__ = self.cls_to_become

    def initialize_parameters(self, x: np.ndarray) -> None:
        """Materialize from an example input without running forward (the module becomes its
        concrete class, which has no such method)."""
        self._materialize(self._features_of(x))

    def _features_of(self, x: Any) -> int:
        name = type(self).__name__
        x = check_float_input(x, name)
        self._check_input_dim(x)
        dim = self._channel_dim(x)
        if x.shape[dim] == 0:
            raise ValueError(f"{name}: cannot infer num_features from an input with 0 channels "
                             f"(dim={dim} of input of shape {tuple(x.shape)})")
        return int(x.shape[dim])

    def forward(self, x: np.ndarray) -> np.ndarray:
        """The first call: infer num_features from x, materialize, become the concrete class and
        run its forward."""
        self._materialize(self._features_of(x))
        return self.forward(x)

    # ------------------------------------------------------------------ state dicts
    def _check_state_dict_allowed(self) -> None:
        lazy = [n for n, v in chain(self._parameters.items(), self._buffers.items()) if is_lazy(v)]
        if lazy:
            raise RuntimeError(
                f"{type(self).__name__} is not initialized: {', '.join(lazy)} have no shape until "
                "the first forward, so state_dict() cannot save them (leaving them out would drop "
                "them silently). Run a forward pass on an example batch first, or load_state_dict() "
                "from an initialized module, which materializes them.")

    def _upgrade_state(self, state: dict, prefix: str,
                       version: int | None) -> Callable[[], None] | None:
        super()._upgrade_state(state, prefix, version)  # type: ignore[misc]
        names = [n for n, v in chain(self._parameters.items(), self._buffers.items())
                 if is_lazy(v) and prefix + n in state]
        sizes = [_shape_or_none(state[prefix + n]) for n in names]
        features = next((s[0] for s in sizes if s is not None and len(s) == 1), None)
        if features is None:  # nothing to load here, or no 1-D entry (a size mismatch is reported)
            return None
        return self._materialize(int(features))


def _shape_or_none(value: Any) -> tuple[int, ...] | None:
    """The shape of a state-dict value, or None when numpy cannot read it as an array (a ragged
    list, say: load_state_dict then reports it as "not an array" instead of crashing here)."""
    try:
        return np.shape(value)
    except (ValueError, TypeError):
        return None


# --------------------------------------------------------------------------- LazyBatchNorm
class _LazyBatchNorm(_LazyNormMixin, _BatchNorm):
    """Arguments as the concrete BatchNormNd's, without num_features."""

    def __init__(self, eps: float = 1e-5, momentum: float | None = 0.1, affine: bool = True,
                 track_running_stats: bool = True, device: Any = None, dtype: Any = None, *,
                 bias: bool = True, check_finite: bool | None = None) -> None:
        super().__init__(0, eps, momentum, affine, track_running_stats, device, dtype, bias=bias,
                         check_finite=check_finite)
        self._lazy_setup()

    def _channel_dim(self, x: np.ndarray) -> int:
        return 1


class LazyBatchNorm1d(_LazyBatchNorm):
    """BatchNorm1d whose num_features is inferred from input.shape[1] on the first forward."""

    cls_to_become = BatchNorm1d
    _check_input_dim = BatchNorm1d._check_input_dim


class LazyBatchNorm2d(_LazyBatchNorm):
    """BatchNorm2d whose num_features is inferred from input.shape[1] on the first forward."""

    cls_to_become = BatchNorm2d
    _check_input_dim = BatchNorm2d._check_input_dim


class LazyBatchNorm3d(_LazyBatchNorm):
    """BatchNorm3d whose num_features is inferred from input.shape[1] on the first forward."""

    cls_to_become = BatchNorm3d
    _check_input_dim = BatchNorm3d._check_input_dim


# --------------------------------------------------------------------------- LazyInstanceNorm
class _LazyInstanceNorm(_LazyNormMixin, _InstanceNorm):
    """torch's lazy InstanceNorm defaults to affine=True and track_running_stats=True (unlike
    InstanceNorm); kept."""

    def __init__(self, eps: float = 1e-5, momentum: float | None = 0.1, affine: bool = True,
                 track_running_stats: bool = True, device: Any = None, dtype: Any = None, *,
                 bias: bool = True) -> None:
        super().__init__(0, eps, momentum, affine, track_running_stats, device, dtype, bias=bias)
        self._lazy_setup()


class LazyInstanceNorm1d(_LazyInstanceNorm):
    """InstanceNorm1d whose num_features is inferred from the input's channel dim."""

    cls_to_become = InstanceNorm1d
    _no_batch_dim = 2


class LazyInstanceNorm2d(_LazyInstanceNorm):
    """InstanceNorm2d whose num_features is inferred from the input's channel dim."""

    cls_to_become = InstanceNorm2d
    _no_batch_dim = 3


class LazyInstanceNorm3d(_LazyInstanceNorm):
    """InstanceNorm3d whose num_features is inferred from the input's channel dim."""

    cls_to_become = InstanceNorm3d
    _no_batch_dim = 4


# --------------------------------------------------------------------------- converted
class LazySyncBatchNorm(_LazyNormMixin, SyncBatchNorm):
    """What `convert_sync_batchnorm` makes of an uninitialized LazyBatchNorm1d/2d/3d.

    The first forward takes num_features from input.shape[1] (every rank of the group must see
    the same channel count; the statistics exchange checks it), materializes, and becomes a
    SyncBatchNorm whose recorded original class is the concrete BatchNormNd, so that
    `revert_sync_batchnorm` gives back what the lazy module would have become.
    """

    cls_to_become = SyncBatchNorm

    def _channel_dim(self, x: np.ndarray) -> int:
        return 1

    def _lazy_attrs(self) -> tuple[str, ...]:
        return ("num_features", "_original_class")

    def _become(self) -> None:
        original = self._original_class
        if isinstance(original, type) and issubclass(original, _LazyNormMixin):
            self._original_class = original.cls_to_become
        super()._become()
