"""Robustness of the core: strided inputs, load_state_dict fuzzing, no pickle anywhere."""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from syncnorm import nn

SRC = Path(__file__).resolve().parents[2] / "syncnorm"


@pytest.mark.parametrize("make", [
    lambda x: x[:, :, ::2],                      # strided
    lambda x: np.asfortranarray(x),              # Fortran order
    lambda x: x.transpose(0, 1, 3, 2),           # a transposed view
    lambda x: x[::-1],                           # negative strides
])
def test_non_contiguous_inputs_are_accepted_and_correct(make):
    rng = np.random.default_rng(0)
    base = rng.normal(3, 2, (6, 3, 8, 5)).astype(np.float32)
    x = make(base)
    dy = make(rng.normal(size=base.shape).astype(np.float32))
    a, b = nn.BatchNorm2d(3), nn.BatchNorm2d(3)
    y, y_ref = a(x), b(np.ascontiguousarray(x))
    np.testing.assert_array_equal(y, y_ref)
    np.testing.assert_array_equal(a.backward(dy), b.backward(np.ascontiguousarray(dy)))
    np.testing.assert_array_equal(a.weight.grad, b.weight.grad)


def test_input_is_never_modified():
    x = np.random.default_rng(0).normal(size=(4, 3, 5)).astype(np.float32)
    keep = x.copy()
    m = nn.BatchNorm1d(3)
    m.backward(m(x) * 0 + 1)
    np.testing.assert_array_equal(x, keep)


# ----------------------------------------------------------------------- load_state_dict fuzz
KEYS = ["weight", "bias", "running_mean", "running_var", "num_batches_tracked", "extra", "0.weight"]
values = st.one_of(
    hnp.arrays(st.sampled_from([np.float32, np.float64, np.int64, np.int8, np.bool_, np.complex64]),
               hnp.array_shapes(min_dims=0, max_dims=2, max_side=4)),
    st.just(np.array(["a", "b"])), st.just(np.array([object()], dtype=object)),
    st.integers(-3, 3), st.floats(allow_nan=True), st.text(max_size=3), st.none(),
    st.lists(st.floats(-2, 2), max_size=4))


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.sampled_from(KEYS), values, max_size=7), st.booleans())
def test_load_state_dict_fuzz_all_or_nothing(sd, strict):
    m = nn.BatchNorm1d(3)
    m.running_mean[...] = [1, 2, 3]
    before = {k: v.copy() for k, v in m.state_dict().items()}
    try:
        m.load_state_dict(sd, strict=strict)
    except nn.StateDictError:
        after = m.state_dict()
        for k, v in before.items():
            np.testing.assert_array_equal(after[k], v)
        return
    # it loaded: every known key given was taken over (cast to the module's dtype)
    for k, v in sd.items():
        if k in before:
            np.testing.assert_array_equal(m.state_dict()[k],
                                          np.asarray(v).astype(before[k].dtype))


def test_load_state_dict_rejects_non_mappings():
    with pytest.raises(TypeError, match="expected a mapping for state_dict, got list"):
        nn.BatchNorm1d(2).load_state_dict([1, 2])


# ----------------------------------------------------------------------- no pickle anywhere
def test_no_pickle_in_the_library():
    for path in SRC.rglob("*.py"):
        text = path.read_text()
        assert not re.search(r"^\s*(import|from)\s+(c?pickle|dill|shelve|marshal)\b", text, re.M), path
        assert "allow_pickle=True" not in text, path


def test_communication_uses_buffer_methods_only():
    """mpi4py's lower-case methods pickle Python objects; syncnorm uses only the buffer ones."""
    lower = r"(\w+)\.(allreduce|bcast|gather|allgather|scatter|alltoall|send|recv|isend|irecv|reduce|sendrecv)\("
    for path in SRC.rglob("*.py"):
        for m in re.finditer(lower, path.read_text()):
            if m.group(1) in ("C", "np", "comm_mod"):  # syncnorm.distributed.comm's buffer functions
                continue
            line = path.read_text()[:m.start()].count("\n") + 1
            raise AssertionError(f"{path}:{line}: pickle-based mpi4py call {m.group(0)}")


def test_every_collective_lives_in_comm_py():
    pattern = re.compile(r"\.(Allreduce|Iallreduce|Bcast|Ibcast|Allgather|Reduce|Gather|Scatter|"
                         r"Alltoall|Barrier|Split|Create_group|Split_type|Abort)\(")
    for path in SRC.rglob("*.py"):
        if path.name == "comm.py" and path.parent.name == "distributed":
            continue
        for m in pattern.finditer(path.read_text()):
            line = path.read_text()[:m.start()].count("\n") + 1
            raise AssertionError(f"{path.relative_to(SRC.parent)}:{line}: MPI call {m.group(0)} "
                                 "outside syncnorm/distributed/comm.py")
