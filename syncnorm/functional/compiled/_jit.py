"""The compile options every kernel shares, and loads/stores of the 16-bit storage formats.

`kernel(fn)` compiles `fn` on first call with numba: cached on disk (`cache=True`), the GIL
released, and fast-math only as reassociation and contraction of arithmetic (`fastmath={"reassoc",
"contract"}`): sums may be vectorized and multiply-adds fused, but NaN and Inf are never assumed
away, so they propagate exactly as in the numpy kernels. With SYNCNORM_NUM_THREADS > 1 a second
copy of `fn` is compiled with `parallel=True` (its own cache entry), whose `prange` loops (over
channels or column tiles, each done by one thread alone, so the result does not depend on the
thread count) run on that many threads.

Storage formats: numba has no float16 or bfloat16, so such arrays are passed as their bits:
uint16 for float16, int16 for bfloat16 (the top 16 bits of a float32). `load(v)` gives the value in
the working dtype (float32 for the 16-bit formats), `store(v, out)` the value to write into an
array `out` of any of these formats (round to nearest even; NaN stays NaN, Inf stays Inf).
"""
from __future__ import annotations

import types as pytypes
from typing import Any, Callable

import numba
import numpy as np
from numba import njit, types
from numba.extending import overload

from ..threads import num_threads

__all__ = ["kernel", "load", "store", "to_work", "OPTIONS", "threads"]

#: numba options of every kernel (see the module docstring)
OPTIONS: dict[str, Any] = dict(cache=True, nogil=True, fastmath={"reassoc", "contract"},
                               error_model="numpy", boundscheck=False)

_threads = num_threads()
if _threads > 1:
    numba.set_num_threads(min(_threads, numba.config.NUMBA_NUM_THREADS))


def threads() -> int:
    """Threads the parallel kernels use (SYNCNORM_NUM_THREADS, at most numba's pool size)."""
    return 1 if _threads == 1 else numba.get_num_threads()


class _Kernel:
    """A kernel compiled on first call: serial, or `parallel=True` when threads() > 1."""

    def __init__(self, fn: Callable) -> None:
        self.fn = fn
        self.__doc__ = fn.__doc__
        self._compiled: Callable | None = None

    def dispatcher(self) -> Callable:
        if self._compiled is None:
            if threads() == 1:
                self._compiled = njit(**OPTIONS)(self.fn)
            else:  # a copy under another name: its own cache file (the cache key has no options)
                fn = pytypes.FunctionType(self.fn.__code__, self.fn.__globals__,
                                          self.fn.__name__ + "_parallel", self.fn.__defaults__,
                                          self.fn.__closure__)
                fn.__qualname__ = self.fn.__qualname__ + "_parallel"
                fn.__module__ = self.fn.__module__
                self._compiled = njit(parallel=True, **OPTIONS)(fn)
        return self._compiled

    def __call__(self, *args: Any) -> Any:
        return self.dispatcher()(*args)


def kernel(fn: Callable) -> _Kernel:
    """Decorator: `fn` becomes a lazily compiled kernel (see the module docstring)."""
    return _Kernel(fn)


def helper(fn: Callable) -> Callable:
    """An inner function of kernels, compiled with the same options (inlined by LLVM)."""
    return njit(**OPTIONS)(fn)


def strict(fn: Callable) -> Callable:
    """A function compiled without fast-math: every operation rounded as written (IEEE), wherever
    it is inlined. Per-channel constants and elementwise passes use it, so fused and separate
    passes agree bit for bit (only reductions need reassociation to vectorize)."""
    return njit(cache=True, nogil=True, error_model="numpy")(fn)


# ------------------------------------------------------------------ 16-bit storage formats
def load(v):  # pragma: no cover - replaced by the overload inside kernels
    """The stored value `v` in the working dtype (float32 for float16/bfloat16 bits)."""
    raise NotImplementedError


def to_work(v, arr):  # pragma: no cover
    """`v` in the working dtype of array `arr` (float64 for float64 storage, else float32)."""
    raise NotImplementedError


def store(v, out):  # pragma: no cover
    """`v` (working dtype) as a value of `out`'s storage format."""
    raise NotImplementedError


@njit(cache=True)
def _half_to_f32(h: int) -> float:
    o = np.uint32((np.uint32(h) & np.uint32(0x7FFF)) << np.uint32(13))
    e = np.uint32(o & np.uint32(0x0F800000))
    o = np.uint32(o + np.uint32(112 << 23))
    if e == np.uint32(0x0F800000):  # Inf / NaN
        o = np.uint32(o + np.uint32(112 << 23))
    elif e == 0:  # zero / subnormal: renormalize through a float subtraction
        o = np.uint32(o + np.uint32(1 << 23))
        f = np.float32(o.view(np.float32) - np.uint32(113 << 23).view(np.float32))
        o = f.view(np.uint32)
    o = np.uint32(o | np.uint32((np.uint32(h) & np.uint32(0x8000)) << np.uint32(16)))
    return o.view(np.float32)


@njit(cache=True)
def _f32_to_half(f: float) -> int:
    u = np.float32(f).view(np.uint32)
    sign = np.uint32(u & np.uint32(0x80000000))
    u = np.uint32(u ^ sign)
    if u >= np.uint32((127 + 16) << 23):  # overflow to Inf, or Inf / NaN
        o = np.uint32(0x7E00) if u > np.uint32(0x7F800000) else np.uint32(0x7C00)
    elif u < np.uint32(113 << 23):  # subnormal half: the float addition rounds to nearest even
        magic = np.uint32(((127 - 15) + (23 - 10) + 1) << 23)
        g = np.float32(u.view(np.float32) + magic.view(np.float32))
        o = np.uint32(g.view(np.uint32) - magic)
    else:
        odd = np.uint32((u >> np.uint32(13)) & np.uint32(1))
        u = np.uint32(u + np.uint32(((15 - 127) << 23) & 0xFFFFFFFF) + np.uint32(0xFFF) + odd)
        o = np.uint32(u >> np.uint32(13))
    return np.uint16(o | (sign >> np.uint32(16)))


@njit(cache=True)
def _bf16_to_f32(b: int) -> float:
    return np.uint32(np.uint32(np.uint16(b)) << np.uint32(16)).view(np.float32)


@njit(cache=True)
def _f32_to_bf16(f: float) -> int:
    u = np.float32(f).view(np.uint32)
    if f != f:  # NaN: keep it, quiet
        return np.int16(np.uint16((u >> np.uint32(16)) | np.uint32(0x40)))
    r = np.uint32(u + np.uint32(0x7FFF) + ((u >> np.uint32(16)) & np.uint32(1)))
    return np.int16(np.uint16(r >> np.uint32(16)))


@overload(load, jit_options={"cache": True})
def _load(v):
    if isinstance(v, types.Float):
        return lambda v: v
    if v == types.uint16:
        return lambda v: _half_to_f32(v)
    if v == types.int16:
        return lambda v: _bf16_to_f32(v)
    return None


@overload(store, jit_options={"cache": True})
def _store(v, out):
    dt = out.dtype
    if isinstance(dt, types.Float):
        return lambda v, out: v
    if dt == types.uint16:
        return lambda v, out: _f32_to_half(v)
    if dt == types.int16:
        return lambda v, out: _f32_to_bf16(v)
    return None


@overload(to_work, jit_options={"cache": True})
def _to_work(v, arr):
    if arr.dtype == types.float64:
        return lambda v, arr: np.float64(v)
    return lambda v, arr: np.float32(v)
