"""The numerical environment a run's bits depend on, recorded in its checkpoints.

Resuming reproduces an uninterrupted run bit for bit only when the arithmetic is the same: the
statistics kernel engine, numpy (its version and its BLAS build, which picks kernels by CPU type),
and the number of threads BLAS splits each matrix product over (threads change the summation
order), on every rank; dtype and world size are part of the run's identity. `environment` gathers
every rank's record (collective), `differences` compares a saved record with now.
"""
from __future__ import annotations

import ctypes
import json
import os
from typing import Any

import numpy as np

from ..distributed import all_gather
from ..distributed.group import ProcessGroup
from ..functional import engine

__all__ = ["kernel_engine", "blas_threads", "blas_build", "local_environment", "environment",
           "differences"]

#: what `environment` records and `differences` compares
FIELDS = ("kernels", "numpy", "blas", "blas_threads")
_THREAD_VARS = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")
_RECORD_BYTES = 1024  # one rank's record as JSON, zero-padded for the Allgather


def kernel_engine() -> str:
    """The kernel engine this process's layers run ("numpy" or "numba"): SYNCNORM_KERNELS as
    `functional.engine` resolved it (auto: numba when installed)."""
    return engine.name()


def _openblas() -> Any | None:
    """numpy's OpenBLAS, as loaded in this process (found in /proc/self/maps), or None."""
    try:
        with open("/proc/self/maps") as f:
            paths = sorted({line.split()[-1] for line in f if "openblas" in line.lower() and "/" in line})
    except OSError:
        return None
    for path in paths:
        try:
            return ctypes.CDLL(path)  # the already loaded library: dlopen returns its handle
        except OSError:
            continue
    return None


def _call(lib: Any, names: tuple[str, ...], restype: Any) -> Any:
    # numpy's wheels carry scipy-openblas, whose symbols have a prefix and a 64-bit-integer suffix
    for name in names:
        for full in (f"scipy_openblas_{name}64_", f"scipy_openblas_{name}", f"openblas_{name}64_",
                     f"openblas_{name}"):
            fn = getattr(lib, full, None)
            if fn is not None:
                fn.restype = restype
                return fn()
    return None


def blas_threads() -> int | str:
    """Threads numpy's BLAS runs a matrix product on: asked from OpenBLAS when numpy uses it (the
    wheels do); otherwise the first of OPENBLAS_NUM_THREADS, OMP_NUM_THREADS, MKL_NUM_THREADS that
    is set; otherwise "default" (the library's choice, usually one per core)."""
    lib = _openblas()
    if lib is not None:
        n = _call(lib, ("get_num_threads",), ctypes.c_int)
        if isinstance(n, int) and n > 0:
            return n
    for var in _THREAD_VARS:
        raw = os.environ.get(var, "").strip()
        if raw.isdigit() and int(raw) > 0:
            return int(raw)
    return "default"


def blas_build() -> str:
    """OpenBLAS's build and the CPU kernels it picked (e.g. "OpenBLAS 0.3.31 ... SkylakeX ..."), or
    numpy's description of its BLAS when that is not OpenBLAS."""
    lib = _openblas()
    if lib is not None:
        cfg = _call(lib, ("get_config",), ctypes.c_char_p)
        if cfg:
            return " ".join(cfg.decode(errors="replace").split())
    try:
        blas = np.show_config(mode="dicts")["Build Dependencies"]["blas"]
        return f"{blas.get('name', '?')} {blas.get('version', '?')}"
    except Exception:  # noqa: BLE001 - only a description
        return "unknown"


def local_environment() -> dict[str, Any]:
    """This process's record: {"kernels", "numpy", "blas", "blas_threads"}."""
    return {"kernels": kernel_engine(), "numpy": np.__version__, "blas": blas_build(),
            "blas_threads": blas_threads()}


def environment(world: ProcessGroup) -> list[dict[str, Any]]:
    """Every rank's `local_environment()`, in rank order (collective over `world`: ranks on other
    machines may have other CPUs, hence other BLAS kernels)."""
    raw = json.dumps(local_environment(), sort_keys=True).encode()[:_RECORD_BYTES]
    buf = np.zeros(_RECORD_BYTES, np.uint8)
    buf[:len(raw)] = np.frombuffer(raw, np.uint8)
    rows = all_gather(buf, world, label="numerical environment Allgather")
    return [json.loads(bytes(r).rstrip(b"\0").decode()) for r in rows]


def differences(saved: Any, now: list[dict[str, Any]], rank: int) -> dict[str, tuple[Any, Any]]:
    """{field: (saved, now)} for what differs between rank `rank`'s saved record and its record
    now; {"record": (None, ...)} when `saved` holds no record for this rank."""
    mine = now[rank]
    if not (isinstance(saved, list) and rank < len(saved) and isinstance(saved[rank], dict)):
        return {"record": (None, mine)}
    return {k: (saved[rank].get(k), mine.get(k)) for k in FIELDS if saved[rank].get(k) != mine.get(k)}
