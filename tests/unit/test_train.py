"""syncnorm.train in one process (a world of 1): the loop, the table, checkpoints and resume."""
import numpy as np
import pytest

from syncnorm import checkpoint as ck
from syncnorm.training.train import main

QUICK = ["--max-train", "192", "--batch-size", "16", "--width", "4", "--progress", "lines"]


def states(path):
    c = ck.load_checkpoint(path)
    return c.model, c.optimizer, c.meta


def test_trains_and_prints_the_table(capsys):
    assert main(QUICK + ["--epochs", "2", "--check-equivalence", "2"]) == 0
    out = capsys.readouterr().out
    assert "SAME TRAJECTORY" in out and "EQUIVALENCE ranks=1" in out and "match=1" in out
    assert "epoch 2/2 [########################] step 24/24" in out
    for row in ("test accuracy", "test loss", "samples/s (training)", "collectives per step"):
        assert row in out
    assert "RESULT test_accuracy=" in out


def test_resume_after_an_interruption_is_bitwise_identical(tmp_path, capsys):
    full, part = tmp_path / "full", tmp_path / "part"
    args = QUICK + ["--epochs", "2", "--progress", "none", "--dtype", "float32"]
    assert main(args + ["--checkpoint-dir", str(full)]) == 0
    assert main(args + ["--checkpoint-dir", str(part), "--stop-after-step", "7"]) == 0
    m, _, meta = states(part / "checkpoint.npz")
    assert (meta["epoch"], meta["step_in_epoch"], meta["global_step"]) == (0, 7, 7)
    assert main(args + ["--checkpoint-dir", str(part), "--resume", "--checkpoint-every", "5"]) == 0
    assert "resumed from" in capsys.readouterr().out
    ma, oa, meta_a = states(full / "checkpoint.npz")
    mb, ob, meta_b = states(part / "checkpoint.npz")
    assert meta_a["global_step"] == meta_b["global_step"] == 24
    for k in ma:
        assert np.array_equal(ma[k], mb[k]), k
    for i in oa["state"]:
        assert np.array_equal(oa["state"][i]["momentum_buffer"], ob["state"][i]["momentum_buffer"])


def test_resume_refuses_a_checkpoint_of_another_run(tmp_path, capsys):
    d = tmp_path / "c"
    assert main(QUICK + ["--epochs", "1", "--progress", "none", "--checkpoint-dir", str(d)]) == 0
    rc = main(QUICK[:-4] + ["--batch-size", "8", "--width", "4", "--epochs", "1", "--progress", "none",
                            "--checkpoint-dir", str(d), "--resume"])
    assert rc == 2
    assert "written by a different run" in capsys.readouterr().err
    (d / "checkpoint.npz").write_bytes((d / "checkpoint.npz").read_bytes()[:500])
    assert main(QUICK + ["--epochs", "1", "--progress", "none", "--checkpoint-dir", str(d), "--resume"]) == 2
    assert "truncated or corrupted" in capsys.readouterr().err


def test_argument_errors():
    with pytest.raises(SystemExit):
        main(["--resume"])  # needs --checkpoint-dir
