"""Pure numpy kernels of the normalizations: no state, no MPI."""
from .moments import mean_var, moments

__all__ = ["moments", "mean_var"]
