"""`syncnorm-launch`: start a command on N MPI ranks with the MPI that mpi4py uses (intermediate
step of the split: everything still lives in `detect`)."""
from .detect import *  # noqa: F401,F403
from .detect import __all__, parse_hosts  # noqa: F401
