"""Nothing from outside runs code: pickled payloads are refused (not unpickled) by every np.load in
the library, and paths are used as given (never through a shell).

The launcher's path handling under a real MPI launch is in tests/multirank/test_determinism.py (a
training run whose --checkpoint-dir holds shell metacharacters); here the checkpoint loader and
writer, the training CLI and the shipped-data loader, and the launcher's printed command line.
"""
from __future__ import annotations

import ast
import os
import pickle
import shlex
import sys
from pathlib import Path

import numpy as np
import pytest

from syncnorm import checkpoint as ck
from syncnorm import launch, nn
from syncnorm.data import DIGITS_PATH, load_digits
from syncnorm.training.train import main as train_main

ROOT = Path(__file__).resolve().parents[2]
WEIRD = "dir with spaces;$(touch pwned)&'q\"`touch pwned2`|x>y"
TINY = ["--max-train", "32", "--batch-size", "16", "--width", "2", "--progress", "none"]


class Payload:
    """Unpickling this creates a file named PWNED in the current directory."""

    def __reduce__(self):
        return (os.system, ("touch PWNED",))


@pytest.fixture
def here(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    yield tmp_path
    assert not (tmp_path / "PWNED").exists(), "a pickle payload was executed"
    assert not list(tmp_path.rglob("pwned*")), "a shell interpreted a path"


def _evil_checkpoint(path: Path) -> Path:
    """A checkpoint-shaped .npz (meta, checksum, model entries) whose one entry is a pickle."""
    arrays = {"model/0.weight": np.array([Payload()], dtype=object),
              "__meta__": np.frombuffer(b'{"format": "syncnorm-checkpoint", "version": 1}', np.uint8),
              "__sha256__": np.zeros(32, np.uint8)}
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, **arrays)  # numpy pickles the object array into the file
    return path


def test_a_pickled_checkpoint_entry_is_refused_by_every_loader(here):
    path = _evil_checkpoint(here / "ck" / "checkpoint.npz")
    with pytest.raises(ck.CheckpointError, match="holds an object array, which could only be read by "
                                                 "unpickling"):
        ck.load_checkpoint(path)
    m = nn.Sequential(nn.Linear(2, 2))
    before = m.state_dict()
    with pytest.raises(ck.CheckpointError, match="object array"):
        ck.load_training_checkpoint(path, m)
    assert all(np.array_equal(before[k], v) for k, v in m.state_dict().items())


def test_a_raw_pickle_stream_is_refused(here):
    raw = here / "model.npy"
    raw.write_bytes(pickle.dumps(Payload()))
    with pytest.raises(ck.CheckpointError, match="was refused: .* unpickling"):
        ck.load_checkpoint(raw)
    with pytest.raises(ValueError, match="pickled"):
        load_digits(path=raw)


def test_the_data_loader_refuses_a_pickled_member(here):
    with np.load(DIGITS_PATH, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    arrays["labels"] = np.array([Payload()], dtype=object)
    np.savez(here / "digits.npz", **arrays)
    with pytest.raises(ValueError, match="allow_pickle=False"):
        load_digits(path=here / "digits.npz")


def test_resuming_from_a_pickled_checkpoint_refuses_and_runs_nothing(here, capsys):
    d = here / WEIRD
    _evil_checkpoint(d / "checkpoint.npz")
    assert train_main(TINY + ["--epochs", "1", "--checkpoint-dir", str(d), "--resume"]) == 2
    assert "cannot resume" in capsys.readouterr().err


def test_every_np_load_in_the_library_refuses_pickles():
    calls = []
    for path in (ROOT / "syncnorm").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) \
                    and node.func.attr == "load" and ast.unparse(node.func.value) in ("np", "numpy"):
                kw = {k.arg: ast.unparse(k.value) for k in node.keywords}
                calls.append(path.name)
                assert kw.get("allow_pickle") == "False", f"{path}:{node.lineno}: {ast.unparse(node)}"
    assert sorted(calls) == ["__init__.py", "checkpoint.py"], calls  # the two loaders tested above


def test_checkpoint_paths_are_used_as_given(here):
    m = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2))
    target = here / WEIRD / "sub dir" / "c;d.npz"
    assert ck.save_training_checkpoint(target, m, None, {"x": 1}) == target
    assert sorted(p.name for p in target.parent.iterdir()) == ["c;d.npz"]
    assert ck.load_checkpoint(target).meta == {"x": 1}
    assert ck.load_checkpoint(str(target)).meta == {"x": 1}


def test_the_training_cli_writes_where_asked(here):
    d = here / WEIRD
    assert train_main(TINY + ["--epochs", "1", "--checkpoint-dir", str(d)]) == 0
    assert sorted(p.name for p in d.iterdir()) == ["checkpoint.npz"]
    assert train_main(TINY + ["--epochs", "1", "--checkpoint-dir", str(d), "--resume"]) == 0


def test_the_launcher_passes_arguments_and_values_verbatim(capsys):
    """--dry-run prints the command line as a shell would need it (quoted); reading it back gives
    exactly the arguments and --env values that were given."""
    cmd = [sys.executable, "-c", "print(1)", WEIRD, "--flag=" + WEIRD]
    assert launch.main(["--dry-run", "-n", "2", "--env", f"SYNCNORM_X={WEIRD}", "--", *cmd]) == 0
    printed = capsys.readouterr().out.strip().splitlines()[-1]
    argv = shlex.split(printed)
    argv = argv[next(i for i, a in enumerate(argv) if "=" not in a or a.startswith("-")):]  # env prefix
    assert argv[-len(cmd):] == cmd
    assert f"SYNCNORM_X={WEIRD}" in argv
    info = launch.detect_mpi()
    line = launch.build_command(2, cmd, info, env_vars=[f"SYNCNORM_X={WEIRD}"])
    assert line[-len(cmd):] == cmd and f"SYNCNORM_X={WEIRD}" in line  # an argument list, no shell
