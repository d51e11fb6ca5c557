"""syncnorm.train under mpirun: the SyncBatchNorm equivalence at P = 1, 2, 4, bitwise resume, a short
run that learns, and the README's demo command. Every job runs with a timeout
(tests/support/mpi_harness.py)."""
import os
import re
import subprocess
import sys

import numpy as np
import pytest

from mpi_harness import ROOT, run_mpi
from syncnorm import checkpoint as ck
from syncnorm import launch

ENV = {"OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}
SMALL = ["--max-train", "256", "--batch-size", "8", "--width", "4", "--progress", "none"]


def equivalence(job):
    m = re.search(r"EQUIVALENCE ranks=(\d+) bn=(\w+) group=(\d+) loss_diff=(\S+) param_diff=(\S+) "
                  r"buffer_diff=(\S+) match=(\d)", job.output)
    assert m, job.output[-3000:]
    return {"ranks": int(m[1]), "loss": float(m[4]), "param": float(m[5]), "buffer": float(m[6]),
            "match": m[7] == "1"}


@pytest.mark.parametrize("nprocs", [1, 2, 4])
def test_syncbatchnorm_on_p_ranks_follows_the_single_process_trajectory(nprocs):
    """float64, dropout on (per-sample streams): P ranks x batch 8 == 1 process x batch 8P."""
    job = run_mpi(nprocs, ["-m", "syncnorm.train", *SMALL, "--epochs", "0", "--check-equivalence", "4",
                           "--dtype", "float64"], timeout=240, env=ENV).check()
    r = equivalence(job)
    assert r["ranks"] == nprocs and r["match"]
    assert r["loss"] < 1e-12 and r["param"] < 1e-12 and r["buffer"] < 1e-12, r


def test_float32_equivalence_within_float32_rounding():
    r = equivalence(run_mpi(4, ["-m", "syncnorm.train", *SMALL, "--epochs", "0", "--check-equivalence",
                                "4"], timeout=240, env=ENV).check())
    assert r["match"] and r["loss"] < 1e-5 and r["param"] < 1e-5, r


@pytest.mark.parametrize("nprocs,group", [(2, 0), (4, 0), (4, 2)])
def test_local_or_partial_batchnorm_does_not(nprocs, group):
    job = run_mpi(nprocs, ["-m", "syncnorm.train", *SMALL, "--epochs", "0", "--check-equivalence", "4",
                           "--dtype", "float64", "--sync-group-size", str(group)], timeout=240, env=ENV)
    job.check()  # a difference is the expected outcome here, not an error
    r = equivalence(job)
    assert not r["match"] and r["loss"] > 1e-4, r


def test_resume_on_2_ranks_gives_bitwise_the_uninterrupted_result(tmp_path):
    args = ["-m", "syncnorm.train", *SMALL, "--epochs", "2", "--sync-group-size", "2"]
    full, part = tmp_path / "full", tmp_path / "part"
    run_mpi(2, args + ["--checkpoint-dir", str(full)], timeout=240, env=ENV).check()
    job = run_mpi(2, args + ["--checkpoint-dir", str(part), "--stop-after-step", "11"], timeout=240,
                  env=ENV).check()
    assert "stopped after step 11" in job.output
    assert ck.load_checkpoint(part / "checkpoint.npz").meta["global_step"] == 11
    job = run_mpi(2, args + ["--checkpoint-dir", str(part), "--resume"], timeout=240, env=ENV).check()
    assert "resumed from" in job.output and "test accuracy" in job.output
    a, b = ck.load_checkpoint(full / "checkpoint.npz"), ck.load_checkpoint(part / "checkpoint.npz")
    assert a.meta["global_step"] == b.meta["global_step"] == 32
    assert list(a.model) == list(b.model)
    for k in a.model:
        assert np.array_equal(a.model[k], b.model[k]), k
    for i in a.optimizer["state"]:
        assert np.array_equal(a.optimizer["state"][i]["momentum_buffer"],
                              b.optimizer["state"][i]["momentum_buffer"])


def test_a_short_run_on_2_ranks_learns_the_digits():
    job = run_mpi(2, ["-m", "syncnorm.train", "--epochs", "3", "--progress", "lines",
                      "--require-accuracy", "0.9"], timeout=300, env=ENV).check()
    acc = float(re.search(r"RESULT test_accuracy=(\S+)", job.output)[1])
    assert acc >= 0.9
    assert re.search(r"collectives per step +\| +7 \(6 SyncBatchNorm \+ 1 DDP\)", job.output), job.output


def test_the_readme_demo_command_runs_4_ranks(tmp_path):
    """`python3 launch/dev.py demo` runs `python -m syncnorm.demo`; here with a shortened training."""
    env = {**os.environ, **ENV, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "syncnorm.demo", "--epochs", "1", "--max-train", "256",
                             "--check-equivalence", "2", "--timeout", "200"], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=240)
    except subprocess.TimeoutExpired:
        launch.kill_session(proc)
        out, _ = proc.communicate()
        pytest.fail("the demo did not finish in 240 s:\n" + out[-3000:])
    assert proc.returncode == 0, out[-3000:]
    assert "4 rank(s), SyncBatchNorm over all 4 rank(s)" in out
    assert "SAME TRAJECTORY" in out and "test accuracy" in out
