"""The documentation site: it builds with warnings as errors, and every code example on it runs.

`mkdocs build --strict` fails on a broken link, a missing page in the nav, an unknown anchor or an
API reference to a name that does not exist; it needs the `docs` extra (`python3 launch/dev.py
setup --docs`, which CI runs) and is skipped with a reason without it. The examples need no extra:
every python and shell block of docs/**/*.md is run as `tests/support/doc_blocks.py` describes (python
blocks on 1 process or, with `mpi=N`, on N ranks through the MPI harness).
"""
from __future__ import annotations

import ast
import importlib
import importlib.util
import inspect
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from doc_blocks import (DOCKER_STEPS, DOCS, PYTHON, ROOT, SHELL, Block, all_blocks, page_files,
                        runs_test_suite)
from mpi_harness import run_mpi

#: python blocks that a later shell block of their page runs are covered by that block; blocks that
#: need a Docker daemon are run by tests/cluster/test_docker.py
EXAMPLES = [b for b in all_blocks()
            if b.runs and not (b.lang in PYTHON and b.run_by_shell) and not b.docker]
HAS_TORCH = importlib.util.find_spec("torch") is not None

#: the modules whose every public name the API reference documents
API_MODULES = ["syncnorm.nn", "syncnorm.distributed", "syncnorm.functional", "syncnorm.torch",
               "syncnorm.parallel", "syncnorm.optim", "syncnorm.checkpoint", "syncnorm.launch"]


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("OMPI_", "PMI", "PMIX_", "SLURM_", "PYTEST_")) and k != "SYNCNORM_USE_MPI"}
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env["PYTHONUNBUFFERED"] = "1"
    env.setdefault("OPENBLAS_NUM_THREADS", "1")
    if hasattr(os, "geteuid") and os.geteuid() == 0:  # what syncnorm-launch sets, for plain mpirun
        env["OMPI_ALLOW_RUN_AS_ROOT"] = "1"
        env["OMPI_ALLOW_RUN_AS_ROOT_CONFIRM"] = "1"
    return env


def _run(cmd: list[str], cwd: Path, timeout: float) -> subprocess.CompletedProcess:
    proc = subprocess.Popen(cmd, cwd=cwd, env=_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        from syncnorm.launch import kill_session
        kill_session(proc)
        out, _ = proc.communicate()
        out = (out or "") + f"\n[test_docs] killed after {timeout:g} s"
        return subprocess.CompletedProcess(cmd, 124, out)
    return subprocess.CompletedProcess(cmd, proc.returncode, out)


# ------------------------------------------------------------------------------------ the site
def test_site_builds_strict(tmp_path: Path) -> None:
    if importlib.util.find_spec("mkdocs") is None or importlib.util.find_spec("mkdocstrings") is None:
        pytest.skip("mkdocs/mkdocstrings not installed: `python3 launch/dev.py setup --docs` "
                    "installs the docs extra (CI does)")
    res = _run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir",
                str(tmp_path / "site")], ROOT, 600)
    assert res.returncode == 0, f"mkdocs build --strict failed:\n{res.stdout[-8000:]}"
    pages = list((tmp_path / "site").rglob("index.html"))
    assert len(pages) >= 15, f"only {len(pages)} pages were built"
    for mod in API_MODULES:  # every public name is rendered on its module's page
        short = mod.split(".")[-1]
        html = (tmp_path / "site" / "api" / short / "index.html").read_text()
        source = (DOCS / "api" / f"{short}.md").read_text()
        ids = set(re.findall(r'id="([^"]+)"', html))
        missing = [n for n in _all_of(mod) if f"{mod}.{n}" not in ids
                   and not any(i.endswith("." + n) for i in ids) and f"::: {mod}.{n}" not in source]
        assert not missing, f"api/{short}.md does not render {mod}.{', '.join(missing)}"


def _all_of(mod: str) -> list[str]:
    """A module's __all__, read from its source (no import: syncnorm.torch needs torch)."""
    path = ROOT / (mod.replace(".", "/") + ".py")
    if not path.exists():
        path = ROOT / mod.replace(".", "/") / "__init__.py"
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", "") == "__all__" for t in node.targets):
            return list(ast.literal_eval(node.value))
    raise AssertionError(f"{mod} has no __all__")


def test_api_pages_name_every_module() -> None:
    text = "\n".join(p.read_text() for p in (DOCS / "api").glob("*.md"))
    for mod in API_MODULES:
        assert f"::: {mod}\n" in text, f"no API reference page renders {mod}"


# ------------------------------------------------------------------------------------ docstrings
def _public(mod_name: str) -> list[tuple[str, object]]:
    mod = importlib.import_module(mod_name)
    return [(n, getattr(mod, n)) for n in mod.__all__]


@pytest.mark.parametrize("mod_name", API_MODULES)
def test_public_names_have_docstrings(mod_name: str) -> None:
    """Every public class and function, and every public method those classes define, says what it
    does (the API reference is generated from these)."""
    if mod_name == "syncnorm.torch" and not HAS_TORCH:
        pytest.skip("syncnorm.torch needs torch, which is not installed")
    missing = []
    for name, obj in _public(mod_name):
        if not (inspect.isclass(obj) or inspect.isfunction(obj)):
            continue
        if not (obj.__doc__ or "").strip():
            missing.append(name)
        if not inspect.isclass(obj) or not obj.__module__.startswith("syncnorm"):
            continue
        for attr, v in vars(obj).items():
            if attr.startswith("_") or attr == "extra_repr":  # extra_repr: documented on Module
                continue
            f = v.fget if isinstance(v, property) else getattr(v, "__func__", v)
            if inspect.isfunction(f) and not (f.__doc__ or "").strip():
                missing.append(f"{name}.{attr}")
    assert not missing, f"{mod_name}: public names without a docstring: {', '.join(missing)}"


# ------------------------------------------------------------------------------------ examples
def test_examples_exist() -> None:
    assert len(EXAMPLES) >= 20, f"only {len(EXAMPLES)} runnable examples found under docs/"
    assert any(b.attrs.get("mpi") for b in EXAMPLES), "no multi-rank example"


def test_docker_blocks_are_the_docker_pages_steps() -> None:
    """Blocks marked docker= are left to tests/cluster/test_docker.py, which runs each step of
    docs/launching/docker.md once: any other use of the mark would run nowhere."""
    marked = [b for b in all_blocks() if b.docker]
    for b in marked:
        assert b.page == "launching/docker.md" and b.lang in SHELL, f"{b.id}: docker= outside its page"
        assert b.docker in DOCKER_STEPS, f"{b.id}: docker={b.docker} is not one of {DOCKER_STEPS}"
    assert [b.docker for b in marked] == list(DOCKER_STEPS), [b.docker for b in marked]


def test_skips_only_for_the_test_suite() -> None:
    for b in EXAMPLES:
        if "skip" in b.attrs:
            assert b.lang in SHELL and runs_test_suite(b.code), (
                f"{b.id}: skip= is allowed only on a shell block that runs the test suite itself")


@pytest.mark.parametrize("block", EXAMPLES, ids=[b.id for b in EXAMPLES])
def test_example_runs(block: Block, tmp_path: Path) -> None:
    if "skip" in block.attrs:
        assert block.lang in SHELL and runs_test_suite(block.code)
        pytest.skip(f"{block.id}: {block.attrs['skip']}")
    files = page_files(block)
    code = block.code + "".join(c for n, c in files.items() if n in block.code)  # and what it runs
    if ("import torch" in code or "from torch" in code or "syncnorm.torch" in code) and not HAS_TORCH:
        pytest.skip("the example needs torch, which is not installed")
    if "import lightning" in code and importlib.util.find_spec("lightning") is None:
        pytest.skip("the example needs Lightning, which is not installed")
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    if block.lang in PYTHON:
        script = tmp_path / (block.title or "example.py")
        script.write_text(block.code)
        ranks = int(block.attrs.get("mpi", "1"))
        if ranks > 1:
            job = run_mpi(ranks, [str(script)], timeout=240, cwd=tmp_path,
                          env={"OPENBLAS_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)})
            assert job.returncode == 0 and not job.timed_out, (
                f"{block.id} failed on {ranks} ranks (rc={job.returncode}):\n{job.output[-6000:]}")
            return
        res = _run([sys.executable, str(script)], tmp_path, 300)
    else:
        cwd = ROOT if block.attrs.get("cwd") == "repo" else tmp_path
        res = _run(["bash", "-euo", "pipefail", "-c", block.code], cwd, 900)
    assert res.returncode == 0, f"{block.id} failed (rc={res.returncode}):\n{res.stdout[-6000:]}"
