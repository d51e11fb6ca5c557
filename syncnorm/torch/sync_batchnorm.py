"""`SyncBatchNorm` for PyTorch CPU tensors over MPI or torch.distributed, and its lazy variant.

torch.nn.SyncBatchNorm refuses CPU tensors ("SyncBatchNorm expected input tensor to be on GPU");
this layer takes its place on CPUs. The communication (`distributed.exchange.StatsExchange`: one
Allreduce each way, fingerprints that make out-of-step ranks fail together, timeouts) and the
mathematics (`functional.moments`, `functional.batch_norm`) are syncnorm's, shared with
`syncnorm.nn.SyncBatchNorm`; `function.py` runs them on the tensors' memory, and `ops.py` wraps
them as torch custom operators for torch.compile.
"""

import copy
import functools
import inspect
from typing import Any, Optional

import numpy as np
import torch
from torch import Tensor
from torch.nn import functional as F
from torch.nn.modules.batchnorm import _BatchNorm, _LazyNormBase

from ..distributed.exchange import RanksOutOfStepError, StatsExchange, creation_order, exchange_for
from ..distributed.group import check_process_group
from ..functional.stats import Mode, StepPlan, choose_shift, running_update, unbiased
from . import _views as views
from . import ops
from ._recompute import StatsStash
from .function import SyncBatchNormFunction

__all__ = ["SyncBatchNorm", "LazySyncBatchNorm", "RanksOutOfStepError"]

_HAS_BIAS_KW = "bias" in inspect.signature(_BatchNorm.__init__).parameters


def _f64(t: torch.Tensor) -> np.ndarray:
    """A float64 numpy copy of a small tensor (never a view of a parameter or buffer)."""
    return t.detach().to(torch.float64, copy=True).numpy()


class SyncBatchNorm(_BatchNorm):
    """BatchNorm over (N, C, *) CPU tensors (any rank >= 2) with training statistics summed over
    the ranks of an MPI process group.

    Args as torch.nn.SyncBatchNorm (num_features, eps, momentum, affine, track_running_stats,
    process_group, device, dtype, keyword-only bias). `process_group`: a torch.distributed group
    (gloo), a syncnorm ProcessGroup or an mpi4py communicator (MPI), or None: the MPI world under an
    MPI launcher, torch's default group under torchrun (`distributed.group.layer_group`); a plain
    `python` process is a world of size 1.
    `timeout` (keyword-only, seconds) bounds each collective; None takes SYNCNORM_COLLECTIVE_TIMEOUT
    from the environment, or waits for ever when it is unset.

    Input float16, bfloat16 (through a float32 copy), float32 or float64, contiguous or channels
    last (other strides are copied once); output of the same dtype and memory layout. Parameters and
    buffers may have another floating dtype than the input.

    Semantics (torch's, where torch is right):
    - training: batch statistics of the whole group (ONE Allreduce forward, ONE backward, only when
      the input needs a gradient); the normalizing variance is biased, running_var is updated with
      the unbiased variance of the GROUP's count (n / (n - 1)); momentum=None is the cumulative
      average over `num_batches_tracked` steps. Weight and bias gradients stay local: data-parallel
      training (DistributedDataParallel) averages them.
    - eval: running statistics, or this rank's own batch statistics when there are none
      (track_running_stats=False), as torch.nn.SyncBatchNorm; eval never communicates, nor does a
      group of size 1. Eval runs torch's own `F.batch_norm` (bitwise torch.nn.BatchNorm2d), so an
      eval model exports, scripts, traces and compiles like a torch one.
    - under torch.compile the training step is the custom operator `syncnorm::batch_norm_train`
      (see `ops.py`); under activation checkpointing a recomputed forward reuses the first
      forward's statistics (see `_recompute.py`).

    Where this differs from torch.nn.SyncBatchNorm, on purpose:
    - exact for any batch sizes: statistics are float64 shifted sums about a shift equal on every
      rank (the running mean, else the last step's group mean), added by one Allreduce;
    - a rank with 0 samples takes part in both collectives and gets zero (not None) weight and
      bias gradients, so DistributedDataParallel still finds a gradient for every parameter;
    - a step where the whole group has 0 samples changes nothing: no running-statistics update and
      num_batches_tracked stays;
    - "Expected more than 1 value per channel when training" is decided on the group's count, so
      every rank raises together (torch only checks a group of size 1);
    - ranks that are out of step (a skipped layer, another order, different running statistics)
      raise RanksOutOfStepError on every rank instead of mixing statistics or hanging.
    """

    _SYNC_ATTRS = ("process_group", "timeout", "_original_class", "_layer_index", "_exchange",
                   "_stat_shift", "_op_key", "_stash", "_sync_steps")
    #: what TorchScript must not try to compile (Python objects of the training path)
    __jit_ignored_attributes__ = [*_SYNC_ATTRS, "_sync_saved_attrs"]

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float | None = 0.1,
                 affine: bool = True, track_running_stats: bool = True, process_group: Any = None,
                 device: Any = None, dtype: Any = None, *, bias: bool = True,
                 timeout: float | None = None) -> None:
        if _HAS_BIAS_KW:
            super().__init__(num_features, eps, momentum, affine, track_running_stats, device, dtype,
                             bias=bias)
        else:  # torch < 2.6 has no `bias` argument
            super().__init__(num_features, eps, momentum, affine, track_running_stats, device, dtype)
            if affine and not bias:
                self.register_parameter("bias", None)
        self._sync_init(process_group, None, timeout)

    def _sync_init(self, process_group: Any, original: type | None, timeout: float | None) -> None:
        check_process_group(process_group)
        self.process_group = process_group
        self.timeout = timeout
        self._original_class = original
        self._layer_index = creation_order()  # identity: first training use (distributed.identity)
        self._exchange: StatsExchange | None = None
        self._stat_shift: np.ndarray | None = None
        self._op_key: int = ops.register(self)
        self._stash = StatsStash()

    # ------------------------------------------------------------------ checks
    def _check_input_dim(self, input: torch.Tensor) -> None:
        original = self._original_class
        if original is not None and hasattr(original, "_check_input_dim"):
            original._check_input_dim(self, input)
        elif input.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {input.dim()}D input)")

    def _check_channels(self, input: torch.Tensor) -> None:
        name = type(self).__name__
        if input.size(1) == 0:
            raise ValueError(f"{name}: number of input channels should be non-zero, got input of "
                             f"shape {tuple(input.shape)}")
        if input.size(1) != self.num_features:
            raise ValueError(f"{name}: expected input with {self.num_features} channels (shape "
                             f"(N, {self.num_features}, ...)), got input of shape {tuple(input.shape)}")

    # ------------------------------------------------------------------ the group
    def _get_exchange(self) -> StatsExchange:
        self._exchange = exchange_for(self._exchange, self.process_group, self._layer_index,
                                      self.num_features, "syncnorm.torch.SyncBatchNorm",
                                      self.timeout)
        return self._exchange

    # ------------------------------------------------------------------ statistics
    def _shift(self, running_mean: Tensor | None) -> np.ndarray:
        """A per-channel value near the mean, identical on every rank (see `choose_shift`)."""
        rm = None if running_mean is None else _f64(running_mean)
        return choose_shift(rm, self._stat_shift, self.num_features)

    def _record(self, running_mean: Tensor | None, running_var: Tensor | None,
                nbt: Tensor | None, n: float, mean: np.ndarray, var: np.ndarray) -> None:
        """After a training step with n > 0 values in the group: update the running statistics
        (the layer's buffers, or the tensors the custom operator was given for them)."""
        if running_mean is None:
            self._stat_shift = mean
        if not (self.track_running_stats and running_mean is not None and running_var is not None):
            return
        if nbt is None:
            raise AssertionError("num_batches_tracked must not be None")
        nbt.add_(1)
        momentum = None if self.momentum is None else float(self.momentum)
        new_m, new_v = running_update(_f64(running_mean), _f64(running_var), mean,
                                      unbiased(var, n), momentum, int(nbt))
        running_mean.copy_(torch.from_numpy(new_m))
        running_var.copy_(torch.from_numpy(new_v))

    def _plan(self, buffers: tuple[Tensor | None, Tensor | None, Tensor | None] | None = None
              ) -> StepPlan:
        """The training step of this forward (eval runs torch's batch norm, see `_eval_forward`).
        `buffers`: (running_mean, running_var, num_batches_tracked) to read and update instead of
        the layer's own (the custom operator's arguments)."""
        rm, rv, nbt = buffers or (self.running_mean, self.running_var, self.num_batches_tracked)
        return StepPlan(Mode.TRAIN, self.eps, exchange=self._get_exchange(), shift=self._shift(rm),
                        record=functools.partial(self._record, rm, rv, nbt), who=type(self).__name__)

    # ------------------------------------------------------------------ forward
    def forward(self, input: Tensor) -> Tensor:
        """input (N, C, *) -> output of the same shape, dtype and memory layout."""
        if not torch.jit.is_scripting():  # TorchScript compiles the eval path only
            views.check_tensor(input, type(self).__name__)
            self._check_input_dim(input)
            if not torch.jit.is_tracing():  # a traced graph has torch's own shape checks
                self._check_channels(input)
        elif input.dim() < 2:
            raise ValueError("expected at least 2D input (got " + str(input.dim()) + "D input)")
        if self.training:
            return self._train_forward(input)
        return self._eval_forward(input)

    @torch.jit.unused
    def _train_forward(self, input: Tensor) -> Tensor:
        """The group's statistics: the custom operator under torch.compile, else the Function."""
        if ops.traced():
            return ops.train_step(self, input)
        self.__dict__["_sync_steps"] = self.__dict__.get("_sync_steps", 0) + 1
        return SyncBatchNormFunction.apply(input, self.weight, self.bias, self._plan(),
                                           self._stash_for_step())

    def _stash_for_step(self) -> StatsStash:
        """This layer's recent training statistics (for activation checkpointing)."""
        stash = self.__dict__.get("_stash")
        if stash is None:
            stash = self.__dict__["_stash"] = StatsStash()
        return stash

    def _eval_forward(self, input: Tensor) -> Tensor:
        """torch's own batch norm with the running statistics (or this rank's batch statistics
        when there are none): bitwise torch.nn.BatchNorm*d."""
        rm = self.running_mean
        rv = self.running_var
        batch = rm is None and rv is None
        if not batch and (rm is None or rv is None):
            raise ValueError("SyncBatchNorm: running_mean and running_var must both be tensors or "
                             "both be None in eval mode")
        dtype = _param_dtype(input.dtype, self.weight, rm)
        return F.batch_norm(input, _as(rm, dtype), _as(rv, dtype), _as(self.weight, dtype),
                            _as(self.bias, dtype), batch, 0.0, self.eps)

    # ------------------------------------------------------------------ copies, pickling
    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_exchange"] = None  # holds a communicator; made again at the next training forward
        state["_stash"] = None  # statistics of steps in flight belong to this object
        state.pop("_op_key", None)  # a copy gets its own key (__setstate__, __deepcopy__)
        return state

    def __setstate__(self, state: dict) -> None:
        super().__setstate__(state)
        self.__dict__["_op_key"] = ops.register(self)

    def __deepcopy__(self, memo: dict) -> "SyncBatchNorm":
        """A deep copy (e.g. an EMA model) that shares the process group (communicators cannot
        be copied) and makes its own exchange at its first training forward."""
        if self.process_group is not None:
            memo[id(self.process_group)] = self.process_group
        cls = type(self)
        new = cls.__new__(cls)
        memo[id(self)] = new
        object.__setattr__(new, "__dict__", copy.deepcopy(self.__getstate__(), memo))
        new.__dict__["_op_key"] = ops.register(new)
        return new

    # ------------------------------------------------------------------ convert / revert
    @classmethod
    def convert_sync_batchnorm(cls, module: torch.nn.Module, process_group: Any = None) -> torch.nn.Module:
        """See `syncnorm.torch.convert_sync_batchnorm`."""
        from .convert import convert_sync_batchnorm
        return convert_sync_batchnorm(module, process_group)


class LazySyncBatchNorm(_LazyNormBase, SyncBatchNorm):
    """A SyncBatchNorm whose `num_features` is inferred from the first input's size(1).

    Until then weight, bias, running_mean and running_var are uninitialized; the first forward
    materializes them and the module becomes a `SyncBatchNorm` (torch's lazy-module protocol).
    `convert_sync_batchnorm` turns an uninitialized torch LazyBatchNorm into one of these.
    """

    cls_to_become = SyncBatchNorm

    def __init__(self, eps: float = 1e-5, momentum: float | None = 0.1, affine: bool = True,
                 track_running_stats: bool = True, process_group: Any = None, device: Any = None,
                 dtype: Any = None, *, bias: bool = True, timeout: float | None = None) -> None:
        kw = {"bias": bias} if _HAS_BIAS_KW else {}
        super().__init__(eps, momentum, affine, track_running_stats, device, dtype, **kw)
        check_process_group(process_group)
        self.process_group = process_group
        self.timeout = timeout

    def initialize_parameters(self, input: torch.Tensor) -> None:  # type: ignore[override]
        """Materialize from the first input; after a load_state_dict that materialized the tensors
        already, take num_features from them (torch leaves it 0 then)."""
        super().initialize_parameters(input)
        if self.num_features == 0:
            t = next((v for v in (self.weight, self.running_mean) if v is not None), None)
            self.num_features = int(t.shape[0]) if t is not None else int(input.shape[1])


def _param_dtype(x_dtype: torch.dtype, weight: Optional[Tensor], running_mean: Optional[Tensor]
                 ) -> torch.dtype:
    """The dtype torch's batch norm takes the parameters and buffers in for this input: theirs when
    torch accepts it (the input's, or float32 for a float16/bfloat16 input), else the input's."""
    ref = weight if weight is not None else running_mean
    if ref is None or ref.dtype == x_dtype:
        return x_dtype
    if ref.dtype == torch.float32 and (x_dtype == torch.float16 or x_dtype == torch.bfloat16):
        return torch.float32
    return x_dtype


def _as(t: Optional[Tensor], dtype: torch.dtype) -> Optional[Tensor]:
    if t is None or t.dtype == dtype:
        return t
    return t.to(dtype)
