"""CPU tensors as the (A, C, M) numpy views the `syncnorm.functional` kernels take, and back.

A BatchNorm input (N, C, *) is reduced per channel C. Two memory layouts map onto an (A, C, M)
array without a copy:

- "nc": row-major (N, C, *) (`tensor.is_contiguous()`): (A, C, M) = (N, C, prod(*));
- "nlc": channels last ((N, *, C) in memory: `torch.channels_last`, `channels_last_3d`, or a
  (N, L, C) sequence transposed to (N, C, L)): (A, C, M) = (N * prod(*), C, 1).

Any other strides get one `.contiguous()` copy (as torch's own SyncBatchNorm does). float16 and
bfloat16 tensors go to the compiled kernels as they are (bfloat16 as its int16 bits: numpy has no
such dtype), which convert each value as they read and write it. With the numpy kernels they are
computed through a float32 copy made by torch (numpy's float16 arithmetic is software-emulated;
see docs/performance.md).
"""
from __future__ import annotations

import math

import numpy as np
import torch

from ..functional import engine

__all__ = ["FLOAT_DTYPES", "check_tensor", "dense", "layout_of", "kernel_view", "empty", "from_kernel_view",
           "work_tensor"]

#: tensor dtypes the layer accepts (bfloat16 through a float32 copy)
FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def check_tensor(x: object, who: str) -> torch.Tensor:
    """Raise a clear error unless `x` is a dense floating-point CPU tensor."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{who}: expected a torch.Tensor, got {type(x).__name__}")
    if x.layout != torch.strided:
        raise TypeError(f"{who}: expected a dense (strided) tensor, got layout {x.layout}")
    if x.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{who}: expected a floating-point tensor (float16, bfloat16, float32 or "
                        f"float64), got dtype {x.dtype}")
    if x.device.type != "cpu":
        raise ValueError(f"{who}: syncnorm.torch works on CPU tensors, got a tensor on {x.device} "
                         "(for CUDA tensors use torch.nn.SyncBatchNorm)")
    return x


def layout_of(t: torch.Tensor) -> str | None:
    """"nc", "nlc" (channels last) or None (needs a copy)."""
    if t.is_contiguous():
        return "nc"
    if t.dim() >= 3 and t.movedim(1, -1).is_contiguous():
        return "nlc"
    return None


def dense(t: torch.Tensor, layout: str | None = None) -> tuple[torch.Tensor, str]:
    """`t` in a layout with an (A, C, M) view: as it is when possible, else copied.

    With `layout` given, the result has exactly that layout (for a gradient that must match its
    input's layout)."""
    have = layout_of(t)
    if layout is None:
        if have is not None:
            return t, have
        return t.contiguous(), "nc"
    if have == layout:
        return t, layout
    out = empty(t.shape, t.dtype, layout)
    out.copy_(t)
    return out, layout


def _acm_shape(shape: torch.Size | tuple, layout: str) -> tuple[int, int, int]:
    n, c = int(shape[0]), int(shape[1])
    m = math.prod(int(s) for s in shape[2:])
    return (n, c, m) if layout == "nc" else (n * m, c, 1)


def kernel_view(t: torch.Tensor, layout: str) -> np.ndarray:
    """The (A, C, M) numpy view of a tensor in `layout` (shares memory; float32/64, and float16)."""
    a = t.detach()
    if layout == "nlc":
        a = a.movedim(1, -1)
    if a.dtype == torch.bfloat16:  # no numpy dtype: its bits, as the compiled kernels take them
        a = a.resolve_neg().view(torch.int16)
    return a.resolve_neg().numpy().reshape(_acm_shape(t.shape, layout))


_NUMPY_STORAGE = {torch.float32: np.float32, torch.float64: np.float64, torch.float16: np.float16,
                  torch.bfloat16: np.int16}


def _alloc(shape: tuple, dtype: torch.dtype) -> torch.Tensor:
    """torch.empty, through numpy's allocator: it asks the kernel for huge pages on large arrays
    (madvise), so the first write of a new output costs far fewer page faults than torch's
    4 KiB pages (the larger part of a step's time at ImageNet sizes; docs/performance.md)."""
    t = torch.from_numpy(np.empty(shape, _NUMPY_STORAGE[dtype]))
    return t.view(torch.bfloat16) if dtype == torch.bfloat16 else t


def empty(shape: torch.Size | tuple, dtype: torch.dtype, layout: str) -> torch.Tensor:
    """An uninitialized (N, C, *) tensor whose memory is in `layout`."""
    shape = tuple(int(s) for s in shape)
    if layout == "nc":
        return _alloc(shape, dtype)
    return _alloc((shape[0], *shape[2:], shape[1]), dtype).movedim(-1, 1)


def from_kernel_view(arr: np.ndarray, shape: torch.Size | tuple, layout: str) -> torch.Tensor:
    """A C-contiguous (A, C, M) array as an (N, C, *) tensor in `layout`, sharing its memory."""
    shape = tuple(int(s) for s in shape)
    t = torch.from_numpy(np.ascontiguousarray(arr))
    if arr.dtype == np.int16:  # bfloat16 bits (see `kernel_view`)
        t = t.view(torch.bfloat16)
    if layout == "nc":
        return t.reshape(shape)
    return t.reshape((shape[0], *shape[2:], shape[1])).movedim(-1, 1)


def work_tensor(t: torch.Tensor) -> torch.Tensor:
    """`t` itself, or a float32 copy for float16 and bfloat16 with the numpy kernels (the compiled
    kernels convert 16-bit values as they read and write them); keeps the layout."""
    if t.dtype in (torch.bfloat16, torch.float16) and engine.kernels() is None:
        return t.float()
    return t
