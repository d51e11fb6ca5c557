"""The container image and the multi-container job (docker/). Opt-in: heavy, not run in CI.

    SYNCNORM_DOCKER_TEST=1 python -m pytest -s tests/cluster/test_docker.py
    SYNCNORM_DOCKER_TEST=1 SYNCNORM_DOCKER_OFFLINE=1 ...   # no registry: offline base + wheelhouse

It uses a running Docker daemon, or starts a private one in its own network namespace (root,
Debian's docker.io; see tests/support/docker_engine.py), builds docker/Dockerfile, checks that the
image holds no key or password, runs a 4-rank job inside one container as the user `mpi`, and runs
docker/run-compose-test.sh (3 rank containers, ssh with a key made for the run, a network only
they share, torn down afterwards). Needs docker-compose v1 or the `docker compose` plugin.
"""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from docker_engine import Engine, run

ROOT = Path(__file__).resolve().parents[2]
TAG = os.environ.get("SYNCNORM_IMAGE", "syncnorm:test")

pytestmark = pytest.mark.skipif(os.environ.get("SYNCNORM_DOCKER_TEST") != "1",
                                reason="opt-in: set SYNCNORM_DOCKER_TEST=1 (builds an image, "
                                       "starts containers)")


@pytest.fixture(scope="module")
def engine():
    why = Engine.unavailable()
    if why:
        pytest.skip(why)
    eng = Engine().start()
    try:
        if os.environ.get("SYNCNORM_DOCKER_OFFLINE") == "1":
            eng.offline_build(TAG)
        else:
            eng.online_build(TAG)
        yield eng
    finally:
        eng.stop()


def test_image_holds_no_key_and_no_password(engine):
    r = run(["docker", "run", "--rm", "--entrypoint", "sh", TAG, "-c",
             "ls /etc/ssh/ssh_host_* 2>/dev/null | wc -l; ls -a /home/mpi/.ssh 2>/dev/null | wc -l; "
             "getent shadow mpi | cut -d: -f2; getent shadow root | cut -d: -f2"],
            env=engine.env)
    host_keys, ssh_dir, mpi_pw, root_pw = r.stdout.split()
    assert host_keys == "0" and ssh_dir == "0", r.stdout
    assert mpi_pw == "*" and root_pw in ("*", "!", "!*"), r.stdout


def test_four_ranks_in_one_container_as_user_mpi(engine):
    r = run(["docker", "run", "--rm", "-u", "mpi", TAG, "syncnorm-launch", "-n", "4",
             "--timeout", "240", "--", "python", "-m", "mpi4py", "-m", "syncnorm.check"],
            env=engine.env, timeout=300)
    assert "SyncBatchNorm on 4 rank(s)" in r.stdout and "MATCH" in r.stdout, r.stdout + r.stderr


def test_compose_job_across_three_containers(engine):
    if shutil.which("docker-compose") is None and run(
            ["docker", "compose", "version"], env=engine.env, check=False).returncode != 0:
        pytest.skip("neither docker-compose nor `docker compose` is installed")
    env = dict(engine.env, SYNCNORM_IMAGE=TAG)
    r = subprocess.run(["bash", "docker/run-compose-test.sh", "3"], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=900)
    out = r.stdout + r.stderr
    print(out)
    assert r.returncode == 0, out
    assert "MATCH" in out and "RESULT test_accuracy=" in out
    assert "ranks ran as: mpi" in out and "compose integration test passed" in out
    # torn down: no container or network of the run is left
    left = run(["docker", "ps", "-aq", "--filter", "name=syncnorm-it-"], env=engine.env).stdout
    nets = run(["docker", "network", "ls", "-q", "--filter", "name=syncnorm-it-"],
               env=engine.env).stdout
    assert left.strip() == "" and nets.strip() == "", (left, nets)
