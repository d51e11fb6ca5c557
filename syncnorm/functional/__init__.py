"""Pure numpy kernels of the normalizations: no state, no MPI."""
from .moments import choose_shift, mean_var, moments, poorly_shifted

__all__ = ["moments", "mean_var", "poorly_shifted", "choose_shift"]
