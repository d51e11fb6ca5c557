"""`DistributedDataParallel`: gradients averaged across ranks, ONE Allreduce per bucket.

At construction the wrapper checks that every rank holds the same parameter and buffer layout (one
small Allreduce with a fingerprint) and copies rank 0's parameters and buffers to every rank (ONE
Bcast of all of them packed into one byte buffer), so all ranks start equal. After each
`backward` it packs the parameter gradients into preallocated contiguous buckets (parameters in
reverse registration order, the order backward produces them, as torch does; buckets are split by
dtype and capped at `bucket_cap_mb`), runs one Allreduce (sum) per bucket through
`syncnorm.distributed.all_reduce`, divides by the group size and writes the averages back
into every `.grad`. With the default 25 MB cap a small model needs one collective per step.

Differences from torch: the reduction runs after the module's backward returns (torch overlaps it
with backward through autograd hooks; with numpy layers there is nothing to overlap with), and a
parameter that received no gradient on a rank contributes zeros instead of raising (its averaged
gradient is set on every rank).
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any, Iterator

import numpy as np

from ..distributed.collectives import all_reduce, broadcast
from ..distributed.exchange import fingerprint
from ..distributed.group import ProcessGroup, as_group
from ..nn.module import Module, Parameter

__all__ = ["DistributedDataParallel", "GradBucket"]


@dataclass
class GradBucket:
    """Parameters whose gradients travel together: `buffer[lo:hi]` holds each one's gradient."""

    params: list[Parameter]
    slices: list[tuple[int, int]]
    buffer: np.ndarray
    names: list[str] = field(default_factory=list)

    @property
    def nbytes(self) -> int:
        """Bytes of the bucket's buffer (what one Allreduce sends)."""
        return self.buffer.nbytes


def _layout_buckets(named: list[tuple[str, Parameter]], cap_bytes: int,
                    reduce_dtype: np.dtype | None) -> list[GradBucket]:
    buckets: list[GradBucket] = []
    cur: list[tuple[str, Parameter]] = []
    cur_dt: np.dtype | None = None
    cur_bytes = 0

    def close() -> None:
        if not cur:
            return
        dt = cur_dt
        slices, off = [], 0
        for _, p in cur:
            slices.append((off, off + p.data.size))
            off += p.data.size
        buckets.append(GradBucket([p for _, p in cur], slices, np.zeros(off, dt), [n for n, _ in cur]))

    for name, p in named:
        dt = np.dtype(reduce_dtype) if reduce_dtype is not None else p.data.dtype
        nb = p.data.size * dt.itemsize
        if cur and (dt != cur_dt or cur_bytes + nb > cap_bytes):
            close()
            cur, cur_bytes = [], 0
        cur.append((name, p))
        cur_dt = dt
        cur_bytes += nb
    close()
    return buckets


class DistributedDataParallel(Module):
    """Wrap `module` for data-parallel training over `process_group` (default: the world).

    Use it like the module: `y = ddp(x)`, then `ddp.backward(dy)` runs the module's backward and
    averages the gradients across ranks. `state_dict()` keys start with "module." as in torch.

    Args:
        module: the model (syncnorm Module).
        process_group: a ProcessGroup, an mpi4py communicator (or any object with Get_size,
            Get_rank, Allreduce, Bcast and Get_group), or None for the world.
        bucket_cap_mb: bucket size cap in MiB (default 25, torch's). A parameter larger than the cap
            gets a bucket of its own.
        broadcast_buffers: copy rank 0's buffers (running statistics, ...) to every rank before each
            forward in training mode (one Bcast), as torch does. Buffers that are equal anyway (those
            of SyncBatchNorm over the whole group) make this unnecessary; pass False then.
        reduce_dtype (keyword): dtype of the buckets (default: each parameter's own dtype;
            np.float64 sums float32 gradients in double precision at twice the bytes).
        timeout (keyword): seconds per collective (default SYNCNORM_COLLECTIVE_TIMEOUT, else none).
    """

    def __init__(self, module: Module, process_group: Any = None, bucket_cap_mb: float = 25.0,
                 broadcast_buffers: bool = True, *, reduce_dtype: Any = None,
                 timeout: float | None = None) -> None:
        super().__init__()
        if not isinstance(module, Module):
            raise TypeError(f"DistributedDataParallel wraps a syncnorm Module, got {type(module).__name__}")
        if not bucket_cap_mb > 0:
            raise ValueError(f"bucket_cap_mb must be > 0, got {bucket_cap_mb}")
        self.module = module
        group = as_group(process_group)
        if not group.is_member:
            raise ValueError(f"DistributedDataParallel: this rank is not a member of {group}")
        object.__setattr__(self, "process_group", group)
        self.broadcast_buffers = bool(broadcast_buffers)
        self.bucket_cap_mb = float(bucket_cap_mb)
        self.timeout = timeout
        self.require_backward_grad_sync = True
        rd = None if reduce_dtype is None else np.dtype(reduce_dtype)
        if rd is not None and rd.kind != "f":
            raise TypeError(f"reduce_dtype must be a floating dtype, got {rd}")
        named = [(n, p) for n, p in module.named_parameters() if p.requires_grad]
        self.buckets = _layout_buckets(list(reversed(named)), int(self.bucket_cap_mb * 2 ** 20), rd)
        self.collectives = 0  # collectives this wrapper has issued (all kinds)
        self._state_buf: np.ndarray | None = None
        self._buffer_buf: np.ndarray | None = None
        self._check_layout()
        self._broadcast_state(include_params=True)

    # ------------------------------------------------------------------ helpers
    @property
    def group(self) -> ProcessGroup:
        """The ProcessGroup the gradients are averaged over."""
        return self.process_group

    def _check_layout(self) -> None:
        """Fail together (not hang) when ranks wrap different models."""
        if self.group.size == 1:
            return
        desc = [(n, p.data.shape, str(p.data.dtype)) for n, p in self.module.named_parameters()]
        desc += [(n, b.shape, str(b.dtype)) for n, b in self.module.named_buffers()]
        v = fingerprint(desc)
        buf = np.array([v, v * v], dtype=np.float64)
        all_reduce(buf, self.group, timeout=self.timeout, label="DistributedDataParallel layout check",
                   inplace=True)
        self.collectives += 1
        if self.group.size * int(buf[1]) != int(buf[0]) ** 2:
            raise ValueError("DistributedDataParallel: the ranks wrap models with different parameters "
                             "or buffers (names, shapes or dtypes differ); every rank must build the "
                             "same model")

    def _state_arrays(self, include_params: bool) -> list[np.ndarray]:
        arrays = [p.data for _, p in self.module.named_parameters()] if include_params else []
        return arrays + [b for _, b in self.module.named_buffers()]

    def _broadcast_state(self, include_params: bool) -> None:
        """One Bcast from rank 0 of the parameters (optional) and buffers, packed as bytes."""
        if self.group.size == 1:
            return
        arrays = self._state_arrays(include_params)
        total = sum(a.nbytes for a in arrays)
        if total == 0:
            return
        attr = "_state_buf" if include_params else "_buffer_buf"
        buf = getattr(self, attr)
        if buf is None or buf.size != total:
            buf = np.empty(total, np.uint8)
            object.__setattr__(self, attr, buf)
        off = 0
        if self.group.rank == 0:
            for a in arrays:
                buf[off:off + a.nbytes] = np.ascontiguousarray(a).reshape(-1).view(np.uint8)
                off += a.nbytes
        what = "parameters and buffers" if include_params else "buffers"
        broadcast(buf, self.group, 0, timeout=self.timeout,
                  label=f"DistributedDataParallel broadcast of {what}", inplace=True)
        self.collectives += 1
        if self.group.rank != 0:
            off = 0
            for a in arrays:
                a[...] = buf[off:off + a.nbytes].view(a.dtype).reshape(a.shape)
                off += a.nbytes

    def sync_buffers(self) -> None:
        """Copy rank 0's buffers to every rank now (one Bcast), e.g. before evaluating a model with
        local BatchNorm, whose running statistics differ between ranks."""
        self._broadcast_state(include_params=False)

    # ------------------------------------------------------------------ running
    def forward(self, *args: Any, **kwargs: Any) -> Any:
        """The wrapped module's forward; in training mode with `broadcast_buffers`, rank 0's buffers
        are first copied to every rank (one Bcast).
        """
        if self.broadcast_buffers and self.training:
            self._broadcast_state(include_params=False)
        return self.module(*args, **kwargs)

    def backward(self, grad_output: np.ndarray) -> np.ndarray:
        """The module's backward, then (unless inside `no_sync()`) the gradient average."""
        grad_input = self.module.backward(grad_output)
        if self.require_backward_grad_sync:
            self.reduce_gradients()
        return grad_input

    def reduce_gradients(self) -> None:
        """Average every parameter's `.grad` over the group: one Allreduce per bucket."""
        P = self.group.size
        if P == 1:
            return
        for i, b in enumerate(self.buckets):
            buf = b.buffer
            for p, (lo, hi) in zip(b.params, b.slices):
                if p.grad is None:
                    buf[lo:hi] = 0
                else:
                    buf[lo:hi] = p.grad.reshape(-1)
            all_reduce(buf, self.group, timeout=self.timeout, inplace=True,
                       label=f"DistributedDataParallel gradient bucket {i} ({b.nbytes} bytes)")
            self.collectives += 1
            np.divide(buf, P, out=buf)
            for p, (lo, hi) in zip(b.params, b.slices):
                avg = buf[lo:hi].reshape(p.data.shape)
                if p.grad is None:
                    p.grad = avg.astype(p.data.dtype, copy=True)
                else:
                    p.grad[...] = avg

    @contextlib.contextmanager
    def no_sync(self) -> Iterator[None]:
        """Within this context backward accumulates local gradients without communicating; the
        first backward outside it averages everything accumulated (gradient accumulation)."""
        old = self.require_backward_grad_sync
        self.require_backward_grad_sync = False
        try:
            yield
        finally:
            self.require_backward_grad_sync = old

    def extra_repr(self) -> str:
        sizes = ", ".join(f"{b.nbytes} B" for b in self.buckets)
        return f"group={self.group}, buckets=[{sizes}]"

