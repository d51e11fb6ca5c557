"""The container image, the multi-container job (docker/) and docs/launching/docker.md's commands as
they are written, on every test run (CI included).

A Docker daemon of the test's own (tests/support/docker_engine.py: dockerd in a network namespace
of its own) runs the page's blocks marked `docker=` in page order, at the repository root: the
offline base image and wheelhouse (`base`), the build with `--network host` (`build`, run inside
the daemon's network namespace, where the 127.0.0.1 that the build's steps see is), the 4-rank job
in one container as the user `mpi` (`run`) and the compose recipe by hand (`compose`: up, exec,
down). Then: the image holds no key or password; docker/run-compose-test.sh runs a job across 3
containers; nothing of either compose run is left. The daemon's teardown removes everything it made
and fails the test when it cannot (conftest.py's session-end check lists the machine's state too).

Skipped, with the reason, only where no Docker daemon can run at all (not root, no overlay file
system, no cgroups); a missing Debian package (docker.io, debootstrap, docker-compose) is an error
that names it.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest

from doc_blocks import DOCKER_STEPS, DOCS, Block, page_blocks
from docker_engine import Engine, run

ROOT = Path(__file__).resolve().parents[2]
PAGE = DOCS / "launching" / "docker.md"
STEPS = {b.docker: b for b in page_blocks(PAGE) if b.docker}
TIMEOUT = {"base": 1200, "build": 1200, "run": 300, "compose": 600}


@pytest.fixture(scope="module")
def engine():
    why = Engine.unavailable()
    if why:
        pytest.skip(why)
    missing = Engine.missing_packages()
    if missing:
        pytest.fail(f"the Docker tests need the Debian package(s) {', '.join(missing)}: "
                    f"apt-get install -y {' '.join(missing)} (.ci/run installs them)", pytrace=False)
    eng = Engine().start()
    try:
        yield eng
    finally:
        eng.stop()  # raises, failing the last test's teardown, when something is left


def run_step(engine: Engine, step: str) -> subprocess.CompletedProcess:
    """Run the page's block for `step` with bash -euo pipefail, as written, against the engine."""
    block: Block = STEPS[step]
    env = dict(engine.env, PYTHONUNBUFFERED="1", DEBIAN_MIRROR=debian_mirror())
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    cmd = ["bash", "-euo", "pipefail", "-c", block.code]
    if step == "build":  # the daemon's own loopback is the one `--network host` builds see
        cmd = ["nsenter", f"--net=/run/netns/{engine.netns}", *cmd]
    cwd = ROOT if block.attrs.get("cwd") == "repo" else None
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=TIMEOUT[step])
    except subprocess.TimeoutExpired:
        from syncnorm.launch import kill_session
        kill_session(proc)
        out, _ = proc.communicate()
        out = (out or "") + f"\n[test_docker] killed after {TIMEOUT[step]} s"
    print(f"\n[docker] {block.id} ({step}): exit {proc.returncode}, {time.monotonic() - t0:.1f} s")
    res = subprocess.CompletedProcess(cmd, proc.returncode, out)
    assert res.returncode == 0, f"{block.id} ({step}) failed (rc={res.returncode}):\n{out[-6000:]}"
    return res


@pytest.fixture(scope="module")
def image(engine):
    """The image `syncnorm`, built by the page's offline recipe (in build/offline, removed)."""
    build_existed = (ROOT / "build").exists()
    try:
        run_step(engine, "base")
        run_step(engine, "build")
    finally:
        shutil.rmtree(ROOT / "build" / "offline", ignore_errors=True)  # when a step failed
        if not build_existed and (ROOT / "build").is_dir() and not any((ROOT / "build").iterdir()):
            (ROOT / "build").rmdir()
    return "syncnorm"


def debian_mirror() -> str:
    """The Debian mirror of this machine's apt sources (the page's default otherwise)."""
    for f in [Path("/etc/apt/sources.list"), *Path("/etc/apt/sources.list.d").glob("*")]:
        try:
            text = f.read_text()
        except OSError:
            continue
        m = re.search(r"^URIs:\s*(\S+/debian)\s*$", text, re.M) or re.search(
            r"^deb\s+(?:\[[^\]]*\]\s+)?(\S+/debian)\s+bookworm", text, re.M)
        if m:
            return m[1]
    return "http://deb.debian.org/debian"


def left_of_compose(engine: Engine) -> tuple[str, str]:
    containers = run(["docker", "ps", "-aq"], env=engine.env).stdout.strip()
    nets = run(["docker", "network", "ls", "-q", "--filter", "label=com.docker.compose.project"],
               env=engine.env).stdout.strip()
    return containers, nets


def test_the_page_names_every_step():
    assert list(STEPS) == list(DOCKER_STEPS), list(STEPS)


def test_documented_offline_build_makes_the_image(engine, image):
    r = run(["docker", "run", "--rm", image, "python", "-c",
             "import syncnorm, mpi4py, numpy; from mpi4py import MPI; "
             "print(MPI.Get_library_version().splitlines()[0])"], env=engine.env, timeout=120)
    assert "Open MPI" in r.stdout, r.stdout + r.stderr


def test_image_holds_no_key_and_no_password(engine, image):
    r = run(["docker", "run", "--rm", "--entrypoint", "sh", image, "-c",
             "ls /etc/ssh/ssh_host_* 2>/dev/null | wc -l; ls -a /home/mpi/.ssh 2>/dev/null | wc -l; "
             "getent shadow mpi | cut -d: -f2; getent shadow root | cut -d: -f2"],
            env=engine.env)
    host_keys, ssh_dir, mpi_pw, root_pw = r.stdout.split()
    assert host_keys == "0" and ssh_dir == "0", r.stdout
    assert mpi_pw == "*" and root_pw in ("*", "!", "!*"), r.stdout
    # nor in a lower layer, hidden by a later deletion: the base is imported without host keys
    assert layer_files(engine, image, r"(^|/)etc/ssh/ssh_host_[^/]*$") == []


def layer_files(engine: Engine, image: str, pattern: str) -> list[str]:
    """Files matching `pattern` in any layer of `image` (`docker save`), deletion markers aside."""
    found = []
    proc = subprocess.Popen(["docker", "save", image], env=engine.env, stdout=subprocess.PIPE)
    assert proc.stdout is not None
    with tarfile.open(fileobj=proc.stdout, mode="r|") as saved:
        for member in saved:
            if not member.isfile() or not (member.name.endswith("layer.tar")
                                           or member.name.startswith("blobs/")):
                continue
            try:
                with tarfile.open(fileobj=saved.extractfile(member), mode="r|*") as layer:
                    found += [f"{member.name}: {m.name}" for m in layer
                              if re.search(pattern, m.name)
                              and not os.path.basename(m.name).startswith(".wh.")]
            except tarfile.ReadError:  # a blob that is not a layer (the image's JSON)
                pass
    assert proc.wait(timeout=300) == 0
    return found


def test_documented_four_rank_job_in_one_container(engine, image):
    out = run_step(engine, "run").stdout
    assert "SyncBatchNorm on 4 rank(s)" in out and re.search(r"^MATCH$", out, re.M), out[-3000:]


def test_documented_compose_steps_by_hand(engine, image):
    out = run_step(engine, "compose").stdout
    assert "SyncBatchNorm on 3 rank(s)" in out and re.search(r"^MATCH$", out, re.M), out[-3000:]
    assert left_of_compose(engine) == ("", ""), left_of_compose(engine)


def test_compose_job_across_three_containers(engine, image):
    env = dict(engine.env, SYNCNORM_IMAGE=image)
    r = subprocess.run(["bash", "docker/run-compose-test.sh", "3"], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=900)
    out = r.stdout + r.stderr
    print(out)
    assert r.returncode == 0, out
    assert "MATCH" in out and "RESULT test_accuracy=" in out
    assert "ranks ran as: mpi" in out and "compose integration test passed" in out
    assert left_of_compose(engine) == ("", ""), left_of_compose(engine)
