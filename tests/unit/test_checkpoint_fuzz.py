"""Fuzzing the checkpoint loader and load_state_dict: damaged, crafted and foreign inputs.

The checkpoint loader gets a valid training checkpoint mutated at random: truncated, bits flipped,
bytes inserted or zeroed, replaced by random bytes, or rebuilt as a crafted archive (entries
dropped, added, replaced by object / complex / string / structured arrays or other shapes, header
fields replaced by arbitrary JSON, format versions changed), with its checksum recomputed (so the
content checks are reached) or left stale. Whatever comes:

* `load_checkpoint` returns or raises `CheckpointError`, nothing else (no crash, no unpickling);
* `load_training_checkpoint` into a model and optimizer either loads everything the file holds or
  raises `CheckpointError` and leaves both exactly as they were (no partial load).

`load_state_dict` is fuzzed across several module kinds (tests/unit/test_robustness.py fuzzes
BatchNorm1d): it loads everything or raises StateDictError and changes nothing.

Every run: 60 derandomized mutations and 60 state dicts; SYNCNORM_SLOW=1: 1,000 random ones each.
"""
from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from syncnorm import checkpoint as ck
from syncnorm import nn
from syncnorm.nn.lazy import is_lazy
from syncnorm.optim import SGD

NORMAL = settings(max_examples=60, deadline=None, derandomize=True, database=None,
                  suppress_health_check=list(HealthCheck))
SLOW = settings(max_examples=1000, deadline=None, database=None, suppress_health_check=list(HealthCheck))


def model_and_optimizer(seed: int):
    rng = np.random.default_rng(seed)
    m = nn.Sequential(nn.Conv2d(1, 2, 3, generator=rng), nn.BatchNorm2d(2), nn.ReLU(), nn.Flatten(),
                      nn.Linear(8, 3, generator=rng), nn.LayerNorm(3))
    opt = SGD(m.parameters(), lr=0.1, momentum=0.9)
    x = rng.normal(size=(4, 1, 4, 4)).astype(np.float32)
    m.backward(m(x))
    opt.step()
    return m, opt


def snapshot(m, opt) -> list[bytes]:
    out = [k.encode() + v.tobytes() for k, v in m.state_dict().items()]
    sd = opt.state_dict()
    out.append(json.dumps(sd["param_groups"], sort_keys=True).encode())
    for i in sorted(sd["state"]):
        for k, v in sorted(sd["state"][i].items()):
            out.append(f"{i}/{k}".encode() + np.asarray(v).tobytes())
    return out


@pytest.fixture(scope="module")
def valid(tmp_path_factory) -> tuple[Path, bytes, dict[str, np.ndarray]]:
    d = tmp_path_factory.mktemp("fuzz")
    m, opt = model_and_optimizer(0)
    path = ck.save_training_checkpoint(d / "valid.npz", m, opt, {"epoch": 1, "note": "x"})
    with np.load(path, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    return d, path.read_bytes(), arrays


# ------------------------------------------------------------------------------ mutations
json_values = st.recursive(st.none() | st.booleans() | st.integers(-2, 10**20) | st.floats(allow_nan=False)
                           | st.text(max_size=5),
                           lambda kids: st.lists(kids, max_size=3) | st.dictionaries(st.text(max_size=4), kids,
                                                                                     max_size=3),
                           max_leaves=8)
odd_arrays = st.one_of(
    st.just(np.array([{"a": 1}], dtype=object)),
    st.just(np.array([1 + 2j, 3j])),
    st.just(np.array(["ab", "c"])),
    st.just(np.zeros(2, dtype=[("a", "<f4"), ("b", "<i2")])),
    st.just(np.array(["2020-01-01"], dtype="datetime64[D]")),
    hnp.arrays(st.sampled_from([np.float32, np.float64, np.int64, np.uint8, np.bool_, np.float16]),
               hnp.array_shapes(min_dims=0, max_dims=3, max_side=4)),
)
MEMBER_NAMES = ["junk", "model/extra", "model/0.weight", "model/1.running_var", "optim/0/momentum_buffer",
                "optim/99/momentum_buffer", "optim/x/y", "optim/٣/m", "__meta__", "__sha256__", "a/b/c/d"]


@st.composite
def crafted(draw):
    """('crafted', changes, header changes, recompute checksum?)"""
    changes = draw(st.lists(st.tuples(st.sampled_from(["drop", "set"]), st.sampled_from(MEMBER_NAMES),
                                      odd_arrays), max_size=3))
    header = draw(st.dictionaries(st.sampled_from(["format", "version", "meta", "model_metadata",
                                                   "optimizer", "extra"]),
                                  json_values | st.sampled_from([1, 2, 0, -1, 1.0, True, "1"]),
                                  max_size=3))
    return ("crafted", changes, header, draw(st.booleans()))


mutations = st.one_of(
    st.tuples(st.just("truncate"), st.floats(0, 1, exclude_max=True)),
    st.tuples(st.just("flip"), st.lists(st.tuples(st.floats(0, 1, exclude_max=True), st.integers(0, 7)),
                                        min_size=1, max_size=8)),
    st.tuples(st.just("insert"), st.floats(0, 1), st.binary(min_size=1, max_size=64)),
    st.tuples(st.just("zero"), st.floats(0, 1, exclude_max=True), st.integers(1, 256)),
    st.tuples(st.just("random"), st.binary(max_size=3000)),
    crafted(),
)


def apply(mutation, raw: bytes, arrays: dict[str, np.ndarray]) -> bytes:
    kind = mutation[0]
    if kind == "truncate":
        return raw[:int(mutation[1] * len(raw))]
    if kind == "flip":
        b = bytearray(raw)
        for where, bit in mutation[1]:
            b[int(where * len(b))] ^= 1 << bit
        return bytes(b)
    if kind == "insert":
        i = int(mutation[1] * len(raw))
        return raw[:i] + mutation[2] + raw[i:]
    if kind == "zero":
        i = int(mutation[1] * len(raw))
        return raw[:i] + b"\0" * mutation[2] + raw[i + mutation[2]:]
    if kind == "random":
        return mutation[1]
    _, changes, header_changes, rehash = mutation
    a = dict(arrays)
    for op, name, value in changes:
        if op == "drop":
            a.pop(name, None)
        else:
            a[name] = value
    if header_changes and isinstance(a.get("__meta__"), np.ndarray) and a["__meta__"].dtype == np.uint8:
        try:
            header = json.loads(a["__meta__"].tobytes().decode())
        except ValueError:
            header = {}
        if isinstance(header, dict):
            header.update(header_changes)
            a["__meta__"] = np.frombuffer(json.dumps(header).encode(), np.uint8)
    if rehash:
        body = {k: v for k, v in a.items() if k != "__sha256__"}
        if not any(v.dtype.hasobject for v in body.values()):
            a["__sha256__"] = np.frombuffer(ck.content_digest(body), np.uint8)
    buf = io.BytesIO()
    np.savez(buf, **a)  # object arrays are pickled into the file: the loader must refuse them
    return buf.getvalue()


def check_mutation(valid, mutation) -> None:
    d, raw, arrays = valid
    path = d / "mutated.npz"
    path.write_bytes(apply(mutation, raw, arrays))
    try:
        c = ck.load_checkpoint(path)
    except ck.CheckpointError:
        c = None
    m, opt = model_and_optimizer(1)
    before = snapshot(m, opt)
    try:
        ck.load_training_checkpoint(path, m, opt)
    except ck.CheckpointError:
        assert snapshot(m, opt) == before, f"a refused checkpoint changed the model: {mutation!r}"
        return
    assert c is not None, "load_training_checkpoint accepted what load_checkpoint refused"
    sd = m.state_dict()
    assert list(sd) == list(c.model)  # everything loaded, nothing left over
    for k, v in sd.items():
        np.testing.assert_array_equal(v, c.model[k].astype(v.dtype), err_msg=k)


@NORMAL
@given(mutations)
def test_mutated_checkpoints_load_fully_or_not_at_all(valid, mutation):
    check_mutation(valid, mutation)


@pytest.mark.slow
@SLOW
@given(mutations)
def test_mutated_checkpoints_load_fully_or_not_at_all_slow(valid, mutation):
    check_mutation(valid, mutation)


def test_the_unmutated_file_loads_and_the_fuzzer_reaches_the_content_checks(valid):
    d, raw, arrays = valid
    check_mutation(valid, ("truncate", 0.9999999))  # refused
    path = d / "same.npz"
    path.write_bytes(apply(("crafted", [], {}, True), raw, arrays))
    m, opt = model_and_optimizer(1)
    assert ck.load_training_checkpoint(path, m, opt) == {"epoch": 1, "note": "x"}
    reached = set()
    for mutation in [("crafted", [("set", "junk", np.ones(2))], {}, True),
                     ("crafted", [], {"version": 2}, True),
                     ("crafted", [], {"optimizer": 5}, True),
                     ("crafted", [("set", "model/0.weight", np.array([{"a": 1}], dtype=object))], {}, True),
                     ("crafted", [("drop", "model/1.running_var", None)], {}, True),
                     ("crafted", [("set", "optim/٣/m", np.ones(2))], {}, True)]:
        path.write_bytes(apply(mutation, raw, arrays))
        try:
            ck.load_training_checkpoint(path, m, opt)
        except ck.CheckpointError as e:
            reached.add(str(e).split(": ", 1)[-1][:30])
    assert len(reached) == 6, reached


# ------------------------------------------------------------------------------ load_state_dict
MODULES = {
    "GroupNorm": lambda: nn.GroupNorm(2, 4),
    "LayerNorm": lambda: nn.LayerNorm([2, 3], bias=False),
    "InstanceNorm2d": lambda: nn.InstanceNorm2d(3, affine=True, track_running_stats=True),
    "LazyBatchNorm1d": lambda: nn.LazyBatchNorm1d(),
    "Sequential": lambda: nn.Sequential(nn.Linear(3, 2, generator=np.random.default_rng(0)),
                                        nn.BatchNorm1d(2)),
}
KEYS = ["weight", "bias", "running_mean", "running_var", "num_batches_tracked", "0.weight", "0.bias",
        "1.weight", "1.running_var", "1.num_batches_tracked", "extra"]
values = st.one_of(
    hnp.arrays(st.sampled_from([np.float32, np.float64, np.int64, np.int8, np.bool_, np.complex64,
                                np.float16]), hnp.array_shapes(min_dims=0, max_dims=2, max_side=4)),
    st.just(np.array(["a", "b"])), st.just(np.array([object()], dtype=object)),
    st.just([[1.0], [1.0, 2.0]]), st.integers(-3, 3), st.floats(allow_nan=True), st.none(),
    st.lists(st.floats(-2, 2), max_size=4))


def uninitialized(m: nn.Module) -> bool:
    return any(is_lazy(v) for v in list(m._parameters.values()) + list(m._buffers.values()))


def check_state_dict(kind: str, sd: dict, strict: bool) -> None:
    m = MODULES[kind]()
    lazy = kind.startswith("Lazy")
    before = None if lazy else {k: v.copy() for k, v in m.state_dict().items()}
    try:
        m.load_state_dict(sd, strict=strict)
    except nn.StateDictError:
        if lazy:
            assert uninitialized(m), "a refused load materialized the lazy module"
        else:
            after = m.state_dict()
            assert all(np.array_equal(after[k], v) for k, v in before.items())
        return
    if lazy and uninitialized(m):  # a non-strict load without its entries
        return
    after = m.state_dict()
    for k, v in sd.items():
        if k in after:
            np.testing.assert_array_equal(after[k], np.asarray(v).astype(after[k].dtype))


@NORMAL
@given(st.sampled_from(list(MODULES)), st.dictionaries(st.sampled_from(KEYS), values, max_size=7),
       st.booleans())
def test_load_state_dict_fuzz_across_modules(kind, sd, strict):
    check_state_dict(kind, sd, strict)


@pytest.mark.slow
@SLOW
@given(st.sampled_from(list(MODULES)), st.dictionaries(st.sampled_from(KEYS), values, max_size=7),
       st.booleans())
def test_load_state_dict_fuzz_across_modules_slow(kind, sd, strict):
    check_state_dict(kind, sd, strict)
