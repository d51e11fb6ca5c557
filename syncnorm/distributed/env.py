"""What the launcher says about this process, read from the environment without starting MPI.

A plain `python` process is a world of size 1 and never loads MPI. A process started by mpirun,
mpiexec (Open MPI, MPICH, Intel MPI, MVAPICH), srun (any --mpi plugin, also none), or another PMI
launcher (Cray PALS, Flux, IBM jsrun) carries variables that say so; then syncnorm initializes MPI
through mpi4py and `check_world` verifies that MPI sees the world the launcher made.

A Slurm *batch* script (sbatch) carries SLURM_* variables too, but only a job step started by
`srun` sets SLURM_STEP_NUM_TASKS; a plain `python` line in the batch script stays a world of 1.
"""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass

__all__ = ["LauncherInfo", "launcher_info", "wants_mpi", "check_launcher_family", "check_world",
           "MPIMismatchError"]

# (size variable, rank variable, launcher name), in the order they are trusted: the launcher that
# started the process directly comes before a workload manager whose variables it inherited.
_LAUNCHER_VARS = (
    ("OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_RANK", "Open MPI mpirun"),
    ("MV2_COMM_WORLD_SIZE", "MV2_COMM_WORLD_RANK", "MVAPICH mpirun"),
    ("PMI_SIZE", "PMI_RANK", "a PMI launcher (MPICH/Intel MPI mpiexec, hydra, srun --mpi=pmi2, Cray)"),
    ("PMIX_SIZE", "PMIX_RANK", "a PMIx launcher"),
    ("PALS_SIZE", "PALS_RANKID", "Cray PALS mpiexec"),
    ("FLUX_JOB_SIZE", "FLUX_TASK_RANK", "Flux"),
    ("JSM_NAMESPACE_SIZE", "JSM_NAMESPACE_RANK", "IBM jsrun"),
    ("SLURM_STEP_NUM_TASKS", "SLURM_PROCID", "Slurm srun"),
)


@dataclass(frozen=True)
class LauncherInfo:
    """World size and rank as the launcher announced them, and who the launcher is."""
    size: int
    rank: int
    launcher: str
    variable: str  # the environment variable the size came from

    def __iter__(self):  # (size, rank, launcher) unpacking, as the earlier tuple API
        return iter((self.size, self.rank, self.launcher))


class MPIMismatchError(RuntimeError):
    """The launcher started several ranks but MPI sees a world of 1 (mismatched mpirun/mpi4py), or
    MPI sees another world size than the launcher announced."""


def launcher_info() -> LauncherInfo | None:
    """What the launcher announced for this process, or None for a plain process.

    A process started under PMIx without a size variable (srun --mpi=pmix sets PMIX_RANK only)
    reports the size from SLURM_STEP_NUM_TASKS when present, else 0 (unknown)."""
    for size_var, rank_var, name in _LAUNCHER_VARS:
        size = os.environ.get(size_var)
        if size is None:
            continue
        try:
            return LauncherInfo(int(size), int(os.environ.get(rank_var, "0")), name, size_var)
        except ValueError:
            continue
    for rank_var, name in (("PMIX_RANK", "a PMIx launcher"), ("PMI_RANK", "a PMI launcher")):
        if rank_var in os.environ:
            try:
                return LauncherInfo(0, int(os.environ[rank_var]), name, rank_var)
            except ValueError:
                continue
    return None


def wants_mpi() -> bool:
    """True when this process should use MPI for its world: started by a launcher, MPI already
    initialized by the user, or SYNCNORM_USE_MPI=1 (SYNCNORM_USE_MPI=0 forces a world of 1)."""
    flag = os.environ.get("SYNCNORM_USE_MPI", "").strip().lower()
    if flag in ("0", "false", "no"):
        return False
    if flag in ("1", "true", "yes"):
        return True
    if launcher_info() is not None:
        return True
    mod = sys.modules.get("mpi4py.MPI")
    return bool(mod is not None and mod.Is_initialized())


def _library() -> str:
    mod = sys.modules.get("mpi4py.MPI")
    if mod is None:
        return "the MPI library mpi4py loaded"
    try:
        return mod.Get_library_version().strip().splitlines()[0].split(", package")[0].strip()
    except Exception:  # noqa: BLE001 - only for a message
        return "the MPI library mpi4py loaded"


def _library_family() -> str | None:
    """'openmpi' or 'mpich' for the library mpi4py will load, found without initializing MPI
    (mpi4py's own ABI probe); None when unknown."""
    try:
        from mpi4py import _mpiabi  # mpi4py >= 4: dlopens libmpi, no MPI_Init
        abi = _mpiabi._get_mpiabi()
    except Exception:  # noqa: BLE001 - older mpi4py, source builds: no pre-check
        return None
    return abi if abi in ("openmpi", "mpich") else None


def check_launcher_family() -> None:
    """Before MPI_Init: raise MPIMismatchError when Open MPI's mpirun started this process but
    mpi4py is about to load an MPICH-family library (MPICH's MPI_Init then dies with an opaque
    'Internal MPI error'). The other mismatches are caught after MPI_Init by `check_world`."""
    if "mpi4py.MPI" in sys.modules:
        return
    info = launcher_info()
    if info is None or info.variable != "OMPI_COMM_WORLD_SIZE" or info.size <= 1:
        return
    if _library_family() == "mpich":
        raise MPIMismatchError(
            f"this process was started by Open MPI mpirun as rank {info.rank} of {info.size} "
            f"(OMPI_COMM_WORLD_SIZE={info.size}), but mpi4py loads an MPICH-family MPI library "
            "(MPICH, Intel MPI, MVAPICH), whose MPI_Init cannot join an Open MPI job. Start it with "
            "the launcher of that MPI (`syncnorm-launch` finds it), or make mpi4py load Open MPI "
            "(unset MPI4PY_LIBMPI, or point it at Open MPI's libmpi.so).")


def check_world(mpi_size: int) -> None:
    """Raise MPIMismatchError when the launcher made N > 1 ranks and MPI sees 1 (the classic
    mismatched mpirun / mpi4py MPI), or when MPI's world size differs from the launcher's."""
    info = launcher_info()
    if info is None or info.size <= 0 or info.size == mpi_size:
        return
    fix = ("Start it with the launcher of mpi4py's MPI: `syncnorm-launch -n N -- python ...` finds "
           "it, `python -m syncnorm.launch --dry-run -n N -- x` shows which one that is; under Slurm "
           "use `srun --mpi=pmix` (Open MPI) or `srun --mpi=pmi2` (MPICH), not `srun --mpi=none`. "
           "Or make mpi4py load the MPI of that launcher (MPI4PY_LIBMPI=/path/to/libmpi.so). If this "
           "process is a helper started by a rank (it inherited the rank's environment), set "
           "SYNCNORM_USE_MPI=0 for it.")
    if mpi_size == 1:
        raise MPIMismatchError(
            f"this process was started by {info.launcher} as rank {info.rank} of {info.size} "
            f"({info.variable}={info.size}), but MPI ({_library()}) sees a world of size 1: the "
            f"launcher did not connect this process to the MPI that mpi4py loaded (a launcher of "
            f"another MPI, or srun without the right --mpi plugin), so every rank runs alone. {fix}")
    raise MPIMismatchError(
        f"this process was started by {info.launcher} as rank {info.rank} of {info.size} "
        f"({info.variable}={info.size}), but MPI ({_library()}) sees a world of size {mpi_size}. "
        f"The launcher's environment is stale or belongs to another job. {fix}")
