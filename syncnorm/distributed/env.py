"""What the launcher says about this process, read from the environment without starting MPI.

A plain `python` process is a world of size 1 and never loads MPI. A process started by mpirun,
mpiexec (Open MPI, MPICH, Intel MPI), srun or another PMI launcher carries variables that say so;
then syncnorm initializes MPI through mpi4py and checks that MPI sees the world the launcher made.
"""
from __future__ import annotations

import os
import sys

__all__ = ["launcher_info", "wants_mpi", "MPIMismatchError"]

# (size variable, rank variable, launcher name), in the order they are trusted.
_LAUNCHER_VARS = (
    ("OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_RANK", "Open MPI mpirun"),
    ("PMI_SIZE", "PMI_RANK", "a PMI launcher (MPICH/Intel MPI mpiexec, hydra)"),
    ("PMIX_SIZE", "PMIX_RANK", "a PMIx launcher"),
    ("SLURM_STEP_NUM_TASKS", "SLURM_PROCID", "Slurm srun"),
    ("MV2_COMM_WORLD_SIZE", "MV2_COMM_WORLD_RANK", "MVAPICH mpirun"),
)


class MPIMismatchError(RuntimeError):
    """The launcher started several ranks but MPI sees a world of 1 (mismatched mpirun/mpi4py)."""


def launcher_info() -> tuple[int, int, str] | None:
    """(size, rank, launcher) from the environment, or None for a plain process."""
    for size_var, rank_var, name in _LAUNCHER_VARS:
        size = os.environ.get(size_var)
        if size is None:
            continue
        try:
            return int(size), int(os.environ.get(rank_var, "0")), name
        except ValueError:
            continue
    if "PMIX_RANK" in os.environ or "PMI_RANK" in os.environ:
        return 0, int(os.environ.get("PMIX_RANK", os.environ.get("PMI_RANK", "0"))), "a PMI launcher"
    return None


def wants_mpi() -> bool:
    """True when this process should use MPI for its world: started by a launcher, MPI already
    initialized by the user, or SYNCNORM_USE_MPI=1."""
    flag = os.environ.get("SYNCNORM_USE_MPI", "").strip().lower()
    if flag in ("0", "false", "no"):
        return False
    if flag in ("1", "true", "yes"):
        return True
    if launcher_info() is not None:
        return True
    mod = sys.modules.get("mpi4py.MPI")
    return bool(mod is not None and mod.Is_initialized())


def check_world(mpi_size: int) -> None:
    """Raise MPIMismatchError when the launcher made N > 1 ranks and MPI sees 1."""
    info = launcher_info()
    if info is None:
        return
    size, rank, name = info
    if size > 1 and mpi_size == 1:
        raise MPIMismatchError(
            f"this process was started by {name} as rank {rank} of {size}, but MPI sees a world of "
            "size 1. The mpirun/mpiexec that launched it belongs to a different MPI than the one "
            "mpi4py loaded. Use the launcher of mpi4py's MPI (`syncnorm-launch` finds it; "
            "`python -c 'import mpi4py; print(mpi4py.get_config())'` shows which MPI it is), or "
            "`srun --mpi=pmix` under Slurm.")
