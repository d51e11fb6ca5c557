"""SyncBatchNorm: BatchNorm whose training statistics span every rank of a process group.

SyncBatchNorm is BatchNorm plus a group: its forward hands the group's
`distributed.exchange.StatsExchange` (one Allreduce forward, one backward, with a fingerprint that
makes out-of-step ranks fail together) to `_BatchNorm._step` as a value.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from ..distributed.exchange import RanksOutOfStepError, StatsExchange, creation_order, exchange_for
from ..distributed.group import check_process_group
from .batchnorm import _BatchNorm

__all__ = ["SyncBatchNorm", "RanksOutOfStepError"]


class SyncBatchNorm(_BatchNorm):
    """BatchNorm over (N, C, *) inputs (any rank >= 2) with statistics summed over `process_group`.

    Args as torch.nn.SyncBatchNorm; `process_group` is a syncnorm ProcessGroup, an mpi4py
    communicator, a torch.distributed group, or None (the launcher's world: see
    `distributed.group.layer_group`). `timeout` (seconds, keyword-only) bounds each collective;
    None takes SYNCNORM_COLLECTIVE_TIMEOUT from the environment, or waits for ever when it is unset.
    num_features, eps, momentum, affine, track_running_stats, device, dtype and check_finite are
    `BatchNorm2d`'s. Every rank of the group must run the same synchronized layers in the same
    order (layers built on some ranks only are free while they do not train in the group);
    otherwise every rank raises RanksOutOfStepError, and a rank
    whose input is refused raises its own error while its peers raise PeerInputError.

    Exact for uneven batches and for ranks with 0 samples (they still take part in both
    collectives). A step where the whole group has 0 samples leaves the running statistics alone.
    running_var is unbiased with the group's count. Eval mode and a group of size 1 never
    communicate. Weight and bias gradients stay local, as in torch.
    """

    _SYNC_ATTRS = ("process_group", "timeout", "_original_class", "_layer_index", "_exchange")

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float | None = 0.1,
                 affine: bool = True, track_running_stats: bool = True, process_group: Any = None,
                 device: Any = None, dtype: Any = None, *, bias: bool = True,
                 timeout: float | None = None, check_finite: bool | None = None) -> None:
        super().__init__(num_features, eps, momentum, affine, track_running_stats, device, dtype,
                         bias=bias, check_finite=check_finite)
        self._sync_init(process_group, None, timeout)

    def _sync_init(self, process_group: Any, original: type | None, timeout: float | None) -> None:
        check_process_group(process_group)  # now, not at the first forward
        self.process_group = process_group
        self.timeout = timeout
        self._original_class = original
        self._layer_index = creation_order()  # identity: first training use (distributed.identity)
        self._exchange: StatsExchange | None = None

    # ------------------------------------------------------------------ checks
    def _check_input_dim(self, x: np.ndarray) -> None:
        if self._original_class is not None:
            self._original_class._check_input_dim(self, x)
        elif x.ndim < 2:
            raise ValueError(f"expected at least 2D input (got {x.ndim}D input)")

    def _get_exchange(self) -> StatsExchange:
        self._exchange = exchange_for(self._exchange, self.process_group, self._layer_index,
                                      self.num_features, "SyncBatchNorm", self.timeout)
        return self._exchange

    @property
    def collective_calls(self) -> int:
        """Allreduces this layer has made in a group of more than one rank (forward + backward);
        0 in a group of one rank, which never communicates. Read-only."""
        return 0 if self._exchange is None else self._exchange.collective_calls

    def forward(self, x: np.ndarray) -> np.ndarray:
        """x: (N, C, *) -> y; in training, one Allreduce within the group."""
        return self._step(x, self._get_exchange() if self.training else None)

    # ------------------------------------------------------------------ convert / revert
    @staticmethod
    def convert_sync_batchnorm(module: Any, process_group: Any = None) -> Any:
        """See `syncnorm.nn.convert_sync_batchnorm`."""
        from .convert import convert_sync_batchnorm
        return convert_sync_batchnorm(module, process_group)
