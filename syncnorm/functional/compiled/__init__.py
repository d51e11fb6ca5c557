"""The compiled kernel engine (numba): loops that fuse the numpy kernels' passes while the data
is in cache. Imported by `functional.engine.kernels()` when a kernel is first used with the numba
engine, never at `import syncnorm`.

One module per family: `batch_norm` (BatchNorm and the per-channel affine passes; loops in
`bn_kernels`), `norms` (GroupNorm, InstanceNorm and LayerNorm steps; loops in `norm_kernels`),
`lrn` (LocalResponseNorm for the betas with a short power form; loops in `lrn_kernels`). `_jit`
holds the compile options and the 16-bit loads and stores.
"""
from __future__ import annotations

from . import batch_norm, lrn, norms
from ._jit import threads

__all__ = ["batch_norm", "lrn", "norms", "threads"]
