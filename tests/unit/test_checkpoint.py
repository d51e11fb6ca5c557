"""Checkpoints: exact round trip, atomic writes, and refusal of damaged, foreign or pickled files."""
import os
import subprocess
import sys
import zipfile

import numpy as np
import pytest

from syncnorm import checkpoint as ck
from syncnorm.nn import CrossEntropyLoss
from syncnorm.optim import SGD
from syncnorm.training.models import digits_cnn


def trained(seed=0, steps=2):
    m = digits_cnn(width=4, generator=np.random.default_rng(seed))
    opt = SGD(m.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3)
    rng = np.random.default_rng(seed)
    crit = CrossEntropyLoss()
    for _ in range(steps):
        x = rng.standard_normal((6, 1, 8, 8)).astype(np.float32)
        opt.zero_grad()
        crit(m(x), rng.integers(0, 10, 6))
        m.backward(crit.backward())
        opt.step()
    return m, opt


def same_state(m1, o1, m2, o2):
    s1, s2 = m1.state_dict(), m2.state_dict()
    assert list(s1) == list(s2)
    for k in s1:
        assert s1[k].dtype == s2[k].dtype and np.array_equal(s1[k], s2[k]), k
    a, b = o1.state_dict(), o2.state_dict()
    assert a["param_groups"] == b["param_groups"]
    assert a["state"].keys() == b["state"].keys()
    for i in a["state"]:
        assert np.array_equal(a["state"][i]["momentum_buffer"], b["state"][i]["momentum_buffer"])


def test_round_trip_is_exact(tmp_path):
    m, opt = trained()
    path = ck.save_training_checkpoint(tmp_path / "c.npz", m, opt, {"epoch": 3, "note": "x", "f": 0.1})
    m2, opt2 = trained(seed=1, steps=1)
    meta = ck.load_training_checkpoint(path, m2, opt2)
    assert meta == {"epoch": 3, "note": "x", "f": 0.1}
    same_state(m, opt, m2, opt2)
    with np.load(path, allow_pickle=False) as z:  # the documented layout
        assert {"__meta__", "__sha256__", "model/0.weight", "model/1.num_batches_tracked",
                "optim/0/momentum_buffer"} <= set(z.files)
    assert [p.name for p in tmp_path.iterdir()] == ["c.npz"]  # no temporary file left


def test_a_failed_write_leaves_the_previous_checkpoint_intact(tmp_path, monkeypatch):
    m, opt = trained()
    path = ck.save_training_checkpoint(tmp_path / "c.npz", m, opt, {"epoch": 1})
    before = path.read_bytes()

    def crash(f, **arrays):  # write half a file, then die as a full disk or a kill would
        f.write(b"PK\x03\x04" + b"\0" * 1000)
        raise OSError("No space left on device")
    monkeypatch.setattr(ck.np, "savez_compressed", crash)
    with pytest.raises(ck.CheckpointError, match=f"could not write the checkpoint {path}: No space"):
        ck.save_training_checkpoint(path, m, opt, {"epoch": 2})
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["c.npz"]
    monkeypatch.undo()
    assert ck.load_checkpoint(path).meta == {"epoch": 1}


def test_a_process_killed_mid_write_never_leaves_a_corrupt_checkpoint(tmp_path):
    """A writer killed (os._exit) in the middle of writing the data: the destination still holds
    the previous complete checkpoint; only a stray temporary file remains, which loading ignores."""
    m, opt = trained()
    path = ck.save_training_checkpoint(tmp_path / "c.npz", m, opt, {"epoch": 1})
    script = (
        "import os, sys, numpy as np\n"
        "from syncnorm import checkpoint as ck\n"
        "real = np.savez_compressed\n"
        "def dying(f, **arrays):\n"
        "    real(f, **arrays); f.flush(); f.truncate(f.tell() // 2); os._exit(9)\n"
        "np.savez_compressed = dying\n"
        "ck.save_checkpoint(sys.argv[1], {'w': np.ones(100000)}, None, {'epoch': 2})\n")
    proc = subprocess.run([sys.executable, "-c", script, str(path)], timeout=60)
    assert proc.returncode == 9
    assert ck.load_checkpoint(path).meta == {"epoch": 1}
    stray = [p for p in tmp_path.iterdir() if p.name != "c.npz"]
    assert len(stray) == 1 and stray[0].name.startswith(".c.npz.") and stray[0].suffix == ".tmp"


def test_truncated_file_is_refused_and_nothing_loads(tmp_path):
    m, opt = trained()
    path = ck.save_training_checkpoint(tmp_path / "c.npz", m, opt, {})
    data = path.read_bytes()
    m2, opt2 = trained(seed=1)
    before = m2.state_dict()
    for cut in (len(data) // 2, len(data) - 10, 30):
        path.write_bytes(data[:cut])
        with pytest.raises(ck.CheckpointError, match="truncated or corrupted"):
            ck.load_training_checkpoint(path, m2, opt2)
    after = m2.state_dict()
    assert all(np.array_equal(before[k], after[k]) for k in before)


def test_corrupted_bytes_are_refused(tmp_path):
    m, opt = trained()
    path = ck.save_training_checkpoint(tmp_path / "c.npz", m, opt, {})
    data = bytearray(path.read_bytes())
    data[len(data) // 3] ^= 0xFF  # inside a compressed member: zip CRC or inflate fails
    path.write_bytes(bytes(data))
    with pytest.raises(ck.CheckpointError):
        ck.load_checkpoint(path)


def test_tampered_contents_fail_the_checksum(tmp_path):
    m, opt = trained()
    path = ck.save_training_checkpoint(tmp_path / "c.npz", m, opt, {})
    with np.load(path, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    arrays["model/0.weight"] = arrays["model/0.weight"] + np.float32(1e-3)  # a valid zip, wrong data
    np.savez_compressed(path, **arrays)
    with pytest.raises(ck.CheckpointError, match="SHA-256"):
        ck.load_checkpoint(path)


class Evil:
    def __reduce__(self):
        return (os.system, ("touch PWNED_BY_PICKLE",))


def test_a_pickle_payload_is_refused_not_executed(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "evil.npz"
    np.savez(path, __meta__=np.frombuffer(b"{}", np.uint8), payload=np.array([Evil()], dtype=object))
    with pytest.raises(ck.CheckpointError, match="object array"):
        ck.load_checkpoint(path)
    assert not (tmp_path / "PWNED_BY_PICKLE").exists()
    (tmp_path / "raw.npy").write_bytes(b"\x80\x04K\x01.")  # a bare pickle stream
    with pytest.raises(ck.CheckpointError):
        ck.load_checkpoint(tmp_path / "raw.npy")


def test_object_arrays_and_non_json_meta_cannot_be_written(tmp_path):
    with pytest.raises(ck.CheckpointError, match="only numeric and bool"):
        ck.save_checkpoint(tmp_path / "c.npz", {"w": np.array(["a"], dtype=object)})
    with pytest.raises(ck.CheckpointError, match="JSON"):
        ck.save_checkpoint(tmp_path / "c.npz", {"w": np.ones(2)}, meta={"x": object()})
    assert not list(tmp_path.iterdir())


def test_foreign_and_future_files_are_refused(tmp_path):
    plain = tmp_path / "plain.npz"
    np.savez(plain, w=np.ones(3))
    with pytest.raises(ck.CheckpointError, match="not a syncnorm checkpoint"):
        ck.load_checkpoint(plain)
    with pytest.raises(ck.CheckpointError, match="no checkpoint at"):
        ck.load_checkpoint(tmp_path / "missing.npz")
    future = tmp_path / "future.npz"
    meta = np.frombuffer(b'{"format": "syncnorm-checkpoint", "version": 99}', np.uint8)
    arrays = {"__meta__": meta}
    arrays["__sha256__"] = np.frombuffer(ck.content_digest(arrays), np.uint8)
    np.savez(future, **arrays)
    with pytest.raises(ck.CheckpointError, match="version 99"):
        ck.load_checkpoint(future)
    with zipfile.ZipFile(tmp_path / "z.npz", "w") as z:
        z.writestr("junk.txt", "hello")
    with pytest.raises(ck.CheckpointError):
        ck.load_checkpoint(tmp_path / "z.npz")


def test_a_checkpoint_of_another_model_changes_nothing(tmp_path):
    m, opt = trained()
    path = ck.save_training_checkpoint(tmp_path / "c.npz", m, opt, {})
    other = digits_cnn(width=8, generator=np.random.default_rng(0))
    other_opt = SGD(other.parameters(), lr=0.1, momentum=0.9)
    before = other.state_dict()
    with pytest.raises(ck.CheckpointError, match="does not fit this model"):
        ck.load_training_checkpoint(path, other, other_opt)
    assert all(np.array_equal(before[k], v) for k, v in other.state_dict().items())
    assert not other_opt.state


def test_optimizer_mismatch_rolls_the_model_back(tmp_path):
    m, opt = trained()
    path = ck.save_training_checkpoint(tmp_path / "c.npz", m, opt, {})
    m2, _ = trained(seed=1)
    before = m2.state_dict()
    opt2 = SGD(list(m2.parameters())[:3], lr=0.1, momentum=0.9)  # a different parameter list
    with pytest.raises(ck.CheckpointError, match="optimizer state does not fit"):
        ck.load_training_checkpoint(path, m2, opt2)
    assert all(np.array_equal(before[k], v) for k, v in m2.state_dict().items())
