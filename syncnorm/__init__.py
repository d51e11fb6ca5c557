"""syncnorm: exact SyncBatchNorm over MPI for numpy, and the torch.nn normalization family.

Importing syncnorm never starts MPI: a plain `python` process is a world of size 1.
"""
from . import distributed, functional, nn, optim, parallel

__version__ = "0.1.0"
__all__ = ["nn", "functional", "distributed", "optim", "parallel", "__version__"]
