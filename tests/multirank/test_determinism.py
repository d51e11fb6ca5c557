"""Same seed, same number of ranks: bitwise the same training run.

`syncnorm-launch -n 2 -- python -m mpi4py -m syncnorm.train` runs twice with the same arguments
(dropout on, shuffling, SyncBatchNorm, DDP); the final checkpoints agree bit for bit: every
parameter, buffer, momentum buffer and the recorded losses. The first run writes its checkpoints
into a directory whose name holds spaces and shell metacharacters: the launcher and the training
CLI pass it on as given (no shell), so the files land exactly there and nothing is executed.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from mpi_harness import ROOT
from syncnorm import checkpoint as ck
from syncnorm import launch
from syncnorm.training.trainer import ModelConfig, build_model

WEIRD = "dir with spaces;$(touch pwned)&'q\"`touch pwned2`|x>y"
ARGS = ["--max-train", "192", "--batch-size", "8", "--width", "4", "--epochs", "1",
        "--progress", "none", "--seed", "3"]


def launch_training(cwd: Path, checkpoint_dir: Path) -> str:
    cmd = [sys.executable, "-m", "syncnorm.launch", "-n", "2", "--timeout", "200", "--",
           sys.executable, "-m", "mpi4py", "-m", "syncnorm.train", *ARGS,
           "--checkpoint-dir", str(checkpoint_dir)]
    env = dict(os.environ, PYTHONPATH=str(ROOT), OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1",
               PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=240)
    except subprocess.TimeoutExpired:
        launch.kill_session(proc)
        out, _ = proc.communicate()
        pytest.fail("training did not finish in 240 s:\n" + out[-3000:])
    assert proc.returncode == 0, out[-3000:]
    return out


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    work = tmp_path_factory.mktemp("runs")
    a, b = work / WEIRD, work / "plain"
    out_a = launch_training(work, a)
    out_b = launch_training(work, b)
    return work, a, b, out_a, out_b


def test_same_seed_same_ranks_gives_bitwise_identical_runs(runs):
    _, a, b, out_a, out_b = runs
    ca, cb = ck.load_checkpoint(a / "checkpoint.npz"), ck.load_checkpoint(b / "checkpoint.npz")
    assert ca.meta == cb.meta  # epoch, steps, sampler state and every rank's loss sums, exactly
    assert list(ca.model) == list(cb.model)
    for k in ca.model:
        assert ca.model[k].dtype == cb.model[k].dtype
        assert ca.model[k].tobytes() == cb.model[k].tobytes(), k
    assert ca.optimizer["param_groups"] == cb.optimizer["param_groups"]
    for i, st in ca.optimizer["state"].items():
        for name, v in st.items():
            assert v.tobytes() == cb.optimizer["state"][i][name].tobytes(), (i, name)
    result = [line.split(" samples_per_s")[0] for line in (out_a + out_b).splitlines()
              if line.startswith("RESULT")]
    assert len(result) == 2 and result[0] == result[1], result
    # the comparison can fail: training moved the parameters away from their initial values
    init = build_model(ModelConfig(width=4, seed=3), None, convert=False).state_dict()
    moved = [k for k in init if init[k].dtype.kind == "f" and not np.array_equal(init[k], ca.model[k])]
    assert len(moved) >= 6, moved


def test_paths_with_shell_metacharacters_are_used_as_given(runs):
    work, a, _, _, _ = runs
    assert a.is_dir() and a.name == WEIRD
    assert sorted(p.name for p in a.iterdir()) == ["checkpoint.npz"]  # atomic writes left no temp
    assert not list(work.rglob("pwned*")) and not (ROOT / "pwned").exists()
    assert sorted(p.name for p in work.iterdir()) == sorted([WEIRD, "plain"])
