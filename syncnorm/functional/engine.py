"""Which kernel engine runs: the numpy kernels (the reference, always there) or the compiled ones.

`SYNCNORM_KERNELS` = numpy | numba | auto (default auto: numba when it is installed, the
`syncnorm[fast]` extra). The choice is made here once, without importing numba: the compiled
kernels (`functional.compiled`) are imported, and numba with them, when a kernel is first used.
`SYNCNORM_NUM_THREADS` (default 1) is how many cores one process's compiled kernels may use.
`use()` switches the engine for a block of code (tests, benchmarks).
"""
from __future__ import annotations

import importlib.util
import os
from contextlib import contextmanager
from types import ModuleType
from typing import Iterator

from .threads import num_threads

__all__ = ["ENGINES", "requested", "name", "kernels", "use", "num_threads", "describe"]

ENV = "SYNCNORM_KERNELS"
ENGINES = ("numpy", "numba", "auto")

_active: str | None = None  # "numpy" or "numba" once resolved
_module: ModuleType | None = None


def requested() -> str:
    """The engine SYNCNORM_KERNELS asks for ("auto" when unset); ValueError for anything else."""
    value = os.environ.get(ENV, "auto").strip().lower() or "auto"
    if value not in ENGINES:
        raise ValueError(f"{ENV} must be one of numpy, numba, auto; got {value!r}")
    return value


def _numba_installed() -> bool:
    return importlib.util.find_spec("numba") is not None


def _resolve(value: str) -> str:
    if value == "numpy":
        return "numpy"
    if value == "numba" and not _numba_installed():
        raise ImportError(f"{ENV}=numba but numba is not installed: pip install 'syncnorm[fast]', "
                          f"or set {ENV}=numpy (or auto)")
    return "numba" if _numba_installed() else "numpy"


def name() -> str:
    """"numpy" or "numba": the engine the kernels dispatch to."""
    global _active
    if _active is None:
        _active = _resolve(requested())
    return _active


def kernels() -> ModuleType | None:
    """The compiled kernels (`syncnorm.functional.compiled`, numba imported on first call), or None
    when the numpy engine runs."""
    global _module
    if name() != "numba":
        return None
    if _module is None:
        from . import compiled
        _module = compiled
    return _module


@contextmanager
def use(engine: str) -> Iterator[None]:
    """Run the block with `engine` ("numpy", "numba" or "auto"), then restore the previous one."""
    global _active
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {', '.join(ENGINES)}; got {engine!r}")
    before = _active
    _active = _resolve(engine)
    try:
        yield
    finally:
        _active = before


def describe() -> str:
    """One line for logs and reports, e.g. "numba 0.68.1 (compiled kernels, 1 thread)"."""
    if name() == "numpy":
        why = "selected" if _numba_installed() else "numba not installed"
        return f"numpy (reference kernels; {why})"
    from importlib.metadata import version
    n = num_threads()
    return f"numba {version('numba')} (compiled kernels, {n} thread{'s' if n > 1 else ''})"
