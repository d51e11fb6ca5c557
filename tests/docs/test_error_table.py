"""docs/errors.md is true and complete.

For every row of the error table a trigger below makes syncnorm raise that error for real (or runs
the command-line tool into that exit), and the test checks the exception type (and its documented
base class) and that the message matches the documented text, `{placeholders}` matching anything.
Rows that need several ranks run on 2 MPI ranks (tests/support/mpi_workers/mpi_error_table.py) and
as a real job for the collective timeout. `test_every_message_in_the_source_has_a_row` reads every
error message in syncnorm/ (the literal text of each exception constructed with a message, and each
argparse error) and fails when no row documents it.
"""
from __future__ import annotations

import ast
import contextlib
import importlib.util
import io
import json
import os
import pickle
import re
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest

from error_doc import PLACEHOLDER, ROOT, Row, doc_regex, matches, parse_rows
from mounts import tmpfs_mount
from mpi_harness import run_mpi, run_pytest_mpi
from syncnorm import checkpoint as ck
from syncnorm import distributed, launch, nn
from syncnorm.distributed import comm, env, failsafe, group
from syncnorm.optim import SGD
from syncnorm.parallel import DistributedDataParallel, DistributedSampler

ROWS = parse_rows()
F = np.float32


@dataclass
class Exit:
    """What a command-line tool did: its exit status and what it printed."""
    code: int
    output: str


TRIGGERS: dict[str, Callable[[], Any]] = {}
#: rows that need several ranks: triggered on 2 MPI ranks (see mpi_workers/mpi_error_table.py)
MPI_ROWS = {"out-of-step", "out-of-step-mpi", "peer-input", "sbn-not-member", "ddp-not-member",
            "ddp-layout"}
#: rows triggered by a job of their own (the timed-out rank cannot go on; 3 MPI ranks of which 2
#: form a torch world)
JOB_ROWS = {"collective-timeout", "torch-world-mismatch"}


def trigger(*ids: str):
    def deco(fn):
        for i in ids:
            TRIGGERS[i] = fn
        return fn
    return deco


def x(*shape, dtype=F):
    return np.random.default_rng(0).normal(size=shape).astype(dtype)


@contextlib.contextmanager
def environ(**values: str | None):
    old = dict(os.environ)
    try:
        for k in [k for k in os.environ if k.startswith(("OMPI_", "PMI", "PMIX_", "SLURM_", "PALS_",
                                                         "FLUX_", "JSM_", "MV2_"))]:
            del os.environ[k]
        for k, v in values.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        yield
    finally:
        os.environ.clear()
        os.environ.update(old)


def cli(fn: Callable[[], int]) -> Exit:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = fn()
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else 1
    return Exit(int(code), out.getvalue() + err.getvalue())


# ============================================================================ bad input to a layer
trigger("input-not-array")(lambda: nn.LayerNorm(3)("not an array"))
trigger("input-dtype")(lambda: nn.BatchNorm1d(3)(np.zeros((2, 3), np.int64)))
trigger("input-param-dtype")(lambda: nn.Linear(3, 2)(np.zeros((2, 3), np.float64)))
trigger("norm-ndim")(lambda: nn.BatchNorm2d(3)(x(2, 3, 4)))
trigger("cnn-ndim")(lambda: nn.Conv2d(3, 2, 1)(x(3, 4)))
trigger("bn-channels")(lambda: nn.BatchNorm1d(3)(x(2, 4)))
trigger("bn-zero-channels")(lambda: nn.BatchNorm1d(0)(x(2, 0)))
trigger("bn-one-value")(lambda: nn.BatchNorm1d(3)(x(1, 3)))
trigger("bn-not-finite")(lambda: nn.BatchNorm1d(2, check_finite=True)(np.array([[np.nan, 1], [1, 2]], F)))
trigger("instancenorm-channels")(lambda: nn.InstanceNorm1d(3, affine=True)(x(2, 4, 5)))
trigger("instancenorm-running-channels")(
    lambda: nn.InstanceNorm1d(3, track_running_stats=True)(x(2, 4, 5)))
trigger("instancenorm-one-position")(lambda: nn.InstanceNorm1d(3)(x(2, 3, 1)))
trigger("groupnorm-ndim")(lambda: nn.GroupNorm(1, 3)(x(3)))
trigger("groupnorm-channels")(lambda: nn.GroupNorm(1, 3)(x(2, 4)))
trigger("groupnorm-divisible-input")(lambda: nn.GroupNorm(2, 4, affine=False)(x(2, 5, 3)))
trigger("groupnorm-one-value")(lambda: nn.GroupNorm(4, 4)(x(3, 4)))
trigger("layernorm-shape")(lambda: nn.LayerNorm([3, 4])(x(2, 3, 5)))
trigger("lrn-ndim")(lambda: nn.LocalResponseNorm(2)(x(2, 3)))
trigger("lazy-zero-channels")(lambda: nn.LazyBatchNorm1d()(x(2, 0)))
trigger("linear-shape")(lambda: nn.Linear(3, 2)(x(2, 4)))
trigger("conv-channels")(lambda: nn.Conv2d(3, 2, 1)(x(1, 2, 4, 4)))
trigger("conv-too-small")(lambda: nn.Conv2d(1, 1, 5)(x(1, 1, 3, 3)))
trigger("pool-padding")(lambda: nn.MaxPool2d(2, padding=2)(x(1, 1, 6, 6)))
trigger("pool-too-small")(lambda: nn.AvgPool2d(5)(x(1, 1, 3, 3)))
trigger("adaptive-pool-empty")(lambda: nn.AdaptiveAvgPool2d(1)(x(1, 1, 0, 3)))
trigger("flatten-dims")(lambda: nn.Flatten()(x(3)))
trigger("flatten-order")(lambda: nn.Flatten(2, 1)(x(2, 3, 4)))
trigger("ce-0d")(lambda: nn.CrossEntropyLoss()(np.array(1.0), np.array(0)))
trigger("ce-prob-target-shape")(lambda: nn.CrossEntropyLoss()(x(2, 3), x(2, 4)))
trigger("ce-index-target-shape")(lambda: nn.CrossEntropyLoss()(x(2, 3), np.array([0, 1, 2])))
trigger("ce-target-dtype")(lambda: nn.CrossEntropyLoss()(x(2, 3), np.array(["a", "b"])))
trigger("ce-weight-classes")(lambda: nn.CrossEntropyLoss(weight=np.ones(4))(x(2, 3), np.array([0, 1])))
trigger("ce-target-range")(lambda: nn.CrossEntropyLoss()(x(2, 3), np.array([0, 7])))


@trigger("dropout-keys-count")
def _():
    m = nn.Dropout(0.5)
    nn.set_dropout_keys(m, [1, 2], step=0)
    m(x(3, 2))


@trigger("ce-grad-shape")
def _():
    c = nn.CrossEntropyLoss(reduction="none")
    c(x(3, 4), np.array([0, 1, 2]))
    c.backward(np.ones(2))


# ============================================================================ backward
trigger("backward-without-forward")(lambda: nn.GroupNorm(1, 2).backward(x(2, 2, 3)))


@trigger("grad-output-shape-in")
def _():
    m = nn.LayerNorm(3)
    m(x(2, 3))
    m.backward(x(2, 4))


@trigger("grad-output-shape-out")
def _():
    m = nn.Linear(3, 2)
    m(x(4, 3))
    m.backward(x(4, 3))


# ============================================================================ building layers
trigger("param-dtype")(lambda: nn.BatchNorm1d(3, dtype=np.int32))
trigger("device")(lambda: nn.GroupNorm(1, 3, device="cuda"))
trigger("bn-num-features")(lambda: nn.BatchNorm2d(-1))
trigger("bn-momentum")(lambda: nn.BatchNorm2d(3, momentum=2.0))
trigger("eps")(lambda: nn.LayerNorm(3, eps=-1.0))
trigger("groupnorm-int")(lambda: nn.GroupNorm(2.0, 4))
trigger("groupnorm-groups")(lambda: nn.GroupNorm(0, 4))
trigger("groupnorm-divisible")(lambda: nn.GroupNorm(3, 4))
trigger("layernorm-shape-type")(lambda: nn.LayerNorm(3.5))
trigger("layernorm-shape-values")(lambda: nn.LayerNorm([2, -1]))
trigger("lrn-size-type")(lambda: nn.LocalResponseNorm(2.0))
trigger("lrn-size")(lambda: nn.LocalResponseNorm(0))
trigger("linear-features")(lambda: nn.Linear(-1, 2))
trigger("conv-groups")(lambda: nn.Conv2d(4, 4, 3, groups=0))
trigger("conv-in-groups")(lambda: nn.Conv2d(3, 4, 3, groups=2))
trigger("conv-out-groups")(lambda: nn.Conv2d(4, 3, 3, groups=2))
trigger("conv-padding-mode")(lambda: nn.Conv2d(3, 4, 3, padding_mode="reflect"))
trigger("conv-padding-string")(lambda: nn.Conv2d(3, 4, 3, padding="full"))
trigger("conv-same-strided")(lambda: nn.Conv2d(3, 4, 3, stride=2, padding="same"))
trigger("conv-same-odd")(lambda: nn.Conv2d(3, 4, 2, padding="same"))
trigger("pair-type")(lambda: nn.Conv2d(3, 4, (3, 3, 3)))
trigger("pair-min")(lambda: nn.MaxPool2d(0))
trigger("maxpool-indices")(lambda: nn.MaxPool2d(2, return_indices=True))
trigger("avgpool-divisor")(lambda: nn.AvgPool2d(2, divisor_override=0))
trigger("adaptive-pool-size")(lambda: nn.AdaptiveAvgPool2d((1, 2, 3)))
trigger("dropout-p")(lambda: nn.Dropout(1.5))
trigger("dropout-keys-ids")(lambda: nn.set_dropout_keys(nn.Dropout(), [3, -2], step=0))
trigger("dropout-keys-step")(lambda: nn.set_dropout_keys(nn.Dropout(), [0], step=-1))
trigger("ce-deprecated")(lambda: nn.CrossEntropyLoss(size_average=True))
trigger("ce-reduction")(lambda: nn.CrossEntropyLoss(reduction="avg"))
trigger("ce-smoothing")(lambda: nn.CrossEntropyLoss(label_smoothing=1.5))
trigger("ce-weight-1d")(lambda: nn.CrossEntropyLoss(weight=np.ones((2, 2))))
trigger("init-generator")(lambda: nn.Linear(2, 2, generator=42))
trigger("init-slope")(lambda: nn.init.calculate_gain("leaky_relu", "x"))
trigger("init-nonlinearity")(lambda: nn.init.calculate_gain("gelu"))
trigger("init-fan")(lambda: nn.init.calculate_fan_in_and_fan_out((3,)))
trigger("init-mode")(lambda: nn.init.kaiming_uniform_(np.zeros((2, 2)), mode="fan_avg"))


# ============================================================================ module tree
@trigger("module-init-not-called")
def _():
    class Forgot(nn.Module):
        def __init__(self):
            self.w = 1
    Forgot()


trigger("module-no-attribute")(lambda: nn.Linear(2, 2).nope)
trigger("module-no-forward")(lambda: nn.Module()(x(2)))
trigger("module-no-backward")(lambda: nn.Module().backward(x(2)))
trigger("module-train-mode")(lambda: nn.ReLU().train(1))
trigger("module-register-parameter")(lambda: nn.Module().register_parameter("w", np.zeros(2)))
trigger("module-add-module")(lambda: nn.Sequential().add_module("m", 3))
trigger("container-index")(lambda: nn.Sequential(nn.ReLU())[5])
trigger("state-dict-mapping")(lambda: nn.BatchNorm1d(2).load_state_dict([1, 2]))
trigger("lazy-state-dict")(lambda: nn.LazyBatchNorm2d().state_dict())


@trigger("module-parameter-slot")
def _():
    nn.Linear(2, 2).weight = np.zeros((2, 2))


@trigger("module-child-slot")
def _():
    setattr(nn.Sequential(nn.ReLU()), "0", 3)


def _bn_state(**changes):
    m = nn.BatchNorm1d(2)
    sd = dict(m.state_dict())
    sd.update(changes)
    m.load_state_dict({k: v for k, v in sd.items() if v is not None})


trigger("state-dict-refused", "state-dict-missing")(lambda: _bn_state(bias=None))
trigger("state-dict-unexpected")(lambda: _bn_state(extra=np.zeros(1)))
trigger("state-dict-size")(lambda: _bn_state(running_var=np.ones(3)))
trigger("state-dict-dtype")(lambda: _bn_state(weight=np.array(["a", "b"])))
trigger("state-dict-integer")(lambda: _bn_state(num_batches_tracked=np.array(1.5)))
trigger("state-dict-int-range")(lambda: _bn_state(num_batches_tracked=np.array(2.0 ** 63)))
trigger("state-dict-float-range")(lambda: _bn_state(weight=np.array([1.0, 1e39])))
trigger("state-dict-not-array")(lambda: _bn_state(weight=[[1.0], [1.0, 2.0]]))


# ============================================================================ checkpoints
@pytest.fixture(scope="module")
def ckdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("ckpt")


def _ckpt(d: Path, name="c.npz", optimizer=True) -> tuple[Path, nn.Module, SGD]:
    m = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2))
    opt = SGD(m.parameters(), lr=0.1, momentum=0.9)
    m.backward(np.ones((3, 2), F) * m(x(3, 2)))
    opt.step()
    return ck.save_training_checkpoint(d / name, m, opt if optimizer else None, {"epoch": 1}), m, opt


def _crafted(d: Path, name: str, arrays: dict[str, np.ndarray], header: dict | None) -> Path:
    """A .npz with a valid checksum over `arrays` and `header` (the file passes its SHA-256)."""
    arrays = dict(arrays)
    if header is not None:
        arrays["__meta__"] = np.frombuffer(json.dumps(header).encode(), np.uint8)
    arrays["__sha256__"] = np.frombuffer(ck.content_digest(arrays), np.uint8)
    np.savez(d / name, **arrays)
    return d / name


HEADER = {"format": ck.FORMAT, "version": 1, "meta": {}, "model_metadata": {}, "optimizer": None}
CKPT_TRIGGERS: dict[str, Callable[[Path], Any]] = {
    "ckpt-missing": lambda d: ck.load_checkpoint(d / "missing.npz"),
    "ckpt-unreadable": lambda d: ck.load_checkpoint(_truncated(d)),
    "ckpt-not-file": lambda d: ck.load_checkpoint(d),
    "ckpt-empty": lambda d: ck.load_checkpoint(_file(d, "empty.npz", b"")),
    "ckpt-zeros": lambda d: ck.load_checkpoint(_file(d, "zeros.npz", bytes(10000))),
    "ckpt-plain-pickle": lambda d: ck.load_checkpoint(_file(d, "p.pkl", pickle.dumps({"w": [1.0]}))),
    "ckpt-not-zip": lambda d: ck.load_checkpoint(_file(d, "r.npz", b"\x01\x02random bytes")),
    "ckpt-write": lambda d: ck.save_checkpoint((d / "taken").mkdir() or d / "taken", {"w": np.ones(2)}),
    "ckpt-pickle": lambda d: ck.load_checkpoint(_pickled(d)),
    "ckpt-single-array": lambda d: (np.save(d / "one.npy", np.ones(3)), ck.load_checkpoint(d / "one.npy")),
    "ckpt-foreign": lambda d: (np.savez(d / "plain.npz", w=np.ones(3)), ck.load_checkpoint(d / "plain.npz")),
    "ckpt-checksum": lambda d: ck.load_checkpoint(_tampered(d)),
    "ckpt-meta-unreadable": lambda d: ck.load_checkpoint(_crafted(d, "m.npz", {"__meta__": np.frombuffer(
        b"{not json", np.uint8)}, None)),
    "ckpt-format": lambda d: ck.load_checkpoint(_crafted(d, "f.npz", {}, dict(HEADER, format="other"))),
    "ckpt-version": lambda d: ck.load_checkpoint(_crafted(d, "v.npz", {}, dict(HEADER, version=99))),
    "ckpt-header": lambda d: ck.load_checkpoint(_crafted(d, "h.npz", {}, dict(HEADER, optimizer=5))),
    "ckpt-member": lambda d: ck.load_checkpoint(_crafted(d, "u.npz", {"junk": np.ones(2)}, HEADER)),
    "ckpt-optim-entry": lambda d: ck.load_checkpoint(_crafted(d, "o.npz", {"optim/x/y": np.ones(2)},
                                                              HEADER)),
    "ckpt-optim-orphan": lambda d: ck.load_checkpoint(_crafted(d, "p.npz", {"optim/0/m": np.ones(2)},
                                                               HEADER)),
    "ckpt-entry-dtype": lambda d: ck.save_checkpoint(d / "e.npz", {"w": np.array([1 + 2j])}),
    "ckpt-optim-not-array": lambda d: ck.save_checkpoint(
        d / "e.npz", {}, {"state": {0: {"momentum_buffer": [1.0]}}, "param_groups": []}),
    "ckpt-meta-json": lambda d: ck.save_checkpoint(d / "e.npz", {"w": np.ones(2)}, meta={"x": object()}),
    "ckpt-no-optimizer": lambda d: _load_into(d, optimizer_saved=False),
    "ckpt-model-mismatch": lambda d: ck.load_training_checkpoint(
        _ckpt(d, "mm.npz")[0], nn.Sequential(nn.Linear(2, 3), nn.BatchNorm1d(3))),
    "ckpt-optim-mismatch": lambda d: _load_into(d, optimizer_saved=True, other_optimizer=True),
}


def _file(d: Path, name: str, data: bytes) -> Path:
    (d / name).write_bytes(data)
    return d / name


def _truncated(d: Path) -> Path:
    p = _ckpt(d, "t.npz")[0]
    p.write_bytes(p.read_bytes()[:200])
    return p


def _pickled(d: Path) -> Path:
    np.savez(d / "evil.npz", __meta__=np.frombuffer(b"{}", np.uint8),
             payload=np.array([{"a": 1}], dtype=object))
    return d / "evil.npz"


def _tampered(d: Path) -> Path:
    p = _ckpt(d, "s.npz")[0]
    with np.load(p, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    arrays["model/0.weight"] = arrays["model/0.weight"] + 1
    np.savez(p, **arrays)
    return p


def _load_into(d: Path, optimizer_saved: bool, other_optimizer: bool = False):
    p, m, opt = _ckpt(d, f"l{int(optimizer_saved)}.npz", optimizer=optimizer_saved)
    target = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2))
    params = list(target.parameters())
    return ck.load_training_checkpoint(p, target, SGD(params[:1] if other_optimizer else params, lr=0.1))


# ============================================================================ optimizer, sampler, data
def _params(n=2):
    return [nn.Parameter(np.zeros(2, F)) for _ in range(n)]


trigger("optim-empty")(lambda: SGD([], lr=0.1))
trigger("optim-group-type")(lambda: SGD([{"params": _params()}, 3], lr=0.1))
trigger("optim-not-parameter")(lambda: SGD([np.zeros(2)], lr=0.1))
trigger("sgd-torch-kernels")(lambda: SGD(_params(), lr=0.1, foreach=True))
trigger("sgd-lr")(lambda: SGD(_params(), lr=-1.0))
trigger("sgd-momentum")(lambda: SGD(_params(), lr=0.1, momentum=-1.0))
trigger("sgd-weight-decay")(lambda: SGD(_params(), lr=0.1, weight_decay=-1.0))
trigger("sgd-nesterov")(lambda: SGD(_params(), lr=0.1, nesterov=True))
trigger("sampler-size")(lambda: DistributedSampler(-1, 1, 0))
trigger("sampler-replicas")(lambda: DistributedSampler(4, 0, 0))
trigger("sampler-rank")(lambda: DistributedSampler(4, 2, 2))


@trigger("sampler-empty")
def _():
    """A defensive check: the constructor never asks for padding of an empty data set (its
    total_size is 0 then), so the state a corrupted or hand-edited sampler could be in is made
    here directly."""
    s = DistributedSampler(0, 2, 0)
    s.total_size = 2
    s.indices()

trigger("sampler-state")(lambda: DistributedSampler(4, 2, 0).load_state_dict({"epoch": 1, "seed": 5}))


@trigger("optim-duplicate")
def _():
    p = _params(1)
    SGD(p + p, lr=0.1)


def _opt_and_state():
    p = _params()
    opt = SGD(p, lr=0.1, momentum=0.9)
    for q in p:
        q.grad = np.ones(2, F)
    opt.step()
    return opt, opt.state_dict()


trigger("optim-state-groups")(lambda: (lambda o, s: o.load_state_dict(dict(s, param_groups=[])))(
    *_opt_and_state()))
trigger("optim-state-group-size")(lambda: (lambda o, s: o.load_state_dict(dict(s, param_groups=[
    dict(s["param_groups"][0], params=[0])])))(*_opt_and_state()))
trigger("optim-state-index")(lambda: (lambda o, s: o.load_state_dict(dict(s, state={7: {}})))(
    *_opt_and_state()))
trigger("optim-state-shape")(lambda: (lambda o, s: o.load_state_dict(dict(s, state={
    0: {"momentum_buffer": np.ones(5)}})))(*_opt_and_state()))
trigger("optim-state-dtype")(lambda: (lambda o, s: o.load_state_dict(dict(s, state={
    0: {"momentum_buffer": np.array(["a", "b"])}})))(*_opt_and_state()))
trigger("optim-state-range")(lambda: (lambda o, s: o.load_state_dict(dict(s, state={
    0: {"momentum_buffer": np.full(2, 1e39)}})))(*_opt_and_state()))


def _digits(d: Path, **change) -> Path:
    from syncnorm.data import DIGITS_PATH
    with np.load(DIGITS_PATH, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    arrays.update(change)
    p = d / f"digits_{'_'.join(change)}.npz"
    np.savez(p, **arrays)
    return p


DATA_TRIGGERS: dict[str, Callable[[Path], Any]] = {
    "digits-shape": lambda d: _load_digits(_digits(d, labels=np.zeros(5, np.uint8))),
    "digits-digest": lambda d: _load_digits(_digits(d, sha256_source=np.zeros(32, np.uint8))),
    "digits-split": lambda d: _load_digits(_digits(d, test_index=np.arange(3))),
}


def _load_digits(path: Path):
    from syncnorm.data import load_digits
    return load_digits(path=path)


@trigger("trainer-group-size")
def _():
    from syncnorm.training.trainer import sync_group
    sync_group(3, group.get_world_group())


@trigger("trainer-schedule")
def _():
    from syncnorm.training.trainer import lr_at
    lr_at(1, 10, 0.1, "linear")


TINY = ["--max-train", "48", "--batch-size", "16", "--width", "2", "--progress", "none"]


@trigger("equivalence-samples")
def _():
    from syncnorm.data import load_digits
    from syncnorm.training.equivalence import check_equivalence
    from syncnorm.training.trainer import ModelConfig
    d = load_digits()
    check_equivalence(ModelConfig(width=2), d.train_x[:48], d.train_y[:48], 5, 16,
                      group.get_world_group(), None)


# ============================================================================ groups, MPI, launchers
trigger("group-type")(lambda: nn.SyncBatchNorm(2, process_group="world"))


@trigger("torchrun-not-initialized")
def _():
    """What torchrun sets for a worker, without the init_process_group call (a world of 1 else)."""
    with environ(RANK="1", LOCAL_RANK="1", WORLD_SIZE="2", SYNCNORM_USE_MPI=None):
        nn.SyncBatchNorm(2)(x(4, 2))


trigger("group-rank-type")(lambda: group.new_group([0.5]))
trigger("group-rank-range")(lambda: group.new_group([3]))
trigger("group-rank-twice")(lambda: group.new_subgroups_by_enumeration([[0, 0]]))
trigger("group-empty")(lambda: group.new_group([]))
trigger("subgroups-disjoint")(lambda: group.new_subgroups_by_enumeration([[0], [0]]))
trigger("subgroups-size")(lambda: group.new_subgroups(0))
trigger("subgroups-divisible")(lambda: group.new_subgroups(2))
trigger("ddp-module")(lambda: DistributedDataParallel(object()))
trigger("ddp-bucket")(lambda: DistributedDataParallel(nn.Linear(2, 2), bucket_cap_mb=0))
trigger("ddp-reduce-dtype")(lambda: DistributedDataParallel(nn.Linear(2, 2), reduce_dtype=np.int32))

trigger("coll-not-member")(lambda: distributed.all_reduce(np.zeros(1), group.ProcessGroup(None, [3], 0, "others")))
trigger("coll-op")(lambda: distributed.all_reduce(np.zeros(1), op="mean"))
trigger("coll-dtype")(lambda: distributed.all_reduce(np.zeros(1, bool)))
trigger("coll-inplace")(lambda: distributed.broadcast([1.0], inplace=True))
trigger("coll-root")(lambda: distributed.broadcast(np.zeros(1), root=2))
trigger("coll-timeout")(lambda: distributed.all_gather(np.zeros(1), timeout=-1))

@trigger("timeout-env")
def _():
    with environ(SYNCNORM_COLLECTIVE_TIMEOUT="soon"):
        comm.default_timeout()


@trigger("abort-grace-env")
def _():
    with environ(SYNCNORM_ABORT_GRACE="later"):
        failsafe.abort_grace()


@trigger("abort-grace-positive")
def _():
    with environ(SYNCNORM_ABORT_GRACE="-3"):
        failsafe.abort_grace()


@trigger("mpi-world-of-one")
def _():
    with environ(OMPI_COMM_WORLD_SIZE="4", OMPI_COMM_WORLD_RANK="1"):
        env.check_world(1)


@trigger("mpi-world-size")
def _():
    with environ(OMPI_COMM_WORLD_SIZE="4", OMPI_COMM_WORLD_RANK="1"):
        env.check_world(2)


@trigger("mpi-family")
def _():
    """For real: a process that Open MPI's mpirun would have started (its variables) whose mpi4py
    is pointed at MPICH's library (the mpich wheel, see tests/support/mpich_runtime.py)."""
    from mpich_runtime import mpich_env, mpich_prefix
    prefix, why = mpich_prefix()
    if prefix is None:
        pytest.skip(f"no MPICH runtime: {why}")
    e = mpich_env(prefix)
    e.update(OMPI_COMM_WORLD_SIZE="2", OMPI_COMM_WORLD_RANK="0", PYTHONPATH=str(ROOT))
    code = ("from syncnorm.distributed import env\n"
            "try:\n    env.check_launcher_family()\nexcept env.MPIMismatchError as e:\n"
            "    print('RAISED', type(e).__name__, e)\n")
    out = subprocess.run([sys.executable, "-c", code], env=e, capture_output=True, text=True,
                         timeout=60).stdout
    m = re.search(r"^RAISED (\w+) (.*)$", out, re.M)
    assert m, out
    raise env.MPIMismatchError(m.group(2))  # re-raised here with the child's exact message


trigger("launch-probe")(lambda: launch.detect_mpi(python="/nonexistent/python3"))
trigger("launch-host-entry")(lambda: launch.parse_hosts("h1:x"))
trigger("launch-no-host")(lambda: launch.parse_hosts(" , "))
OMPI = launch.MPIInfo("openmpi", "Open MPI v5", "/usr/bin/mpirun")
HYDRA = launch.MPIInfo("mpich", "MPICH Version: 4", "/usr/bin/mpiexec")
trigger("launch-nprocs")(lambda: launch.build_command(0, ["x"], OMPI))
trigger("launch-no-command")(lambda: launch.build_command(2, [], OMPI))
trigger("launch-hosts-and-hostfile")(lambda: launch.build_command(2, ["x"], OMPI, hosts="a", hostfile="f"))
trigger("launch-slots")(lambda: launch.build_command(4, ["x"], OMPI, hosts="a:1,b:1"))
trigger("launch-tcp-cidr")(lambda: launch.build_command(2, ["x"], HYDRA, tcp="10.0.0.0/24"))
trigger("launch-env")(lambda: launch.build_command(2, ["x"], OMPI, env_vars=["1BAD=x"]))


@trigger("launch-no-mpi")
def _():
    with environ(MPI4PY_LIBMPI="/nonexistent/libmpi.so.40"):
        launch.detect_mpi()


def _launch_no_launcher(d: Path):
    """A launcher that says it is MPICH's hydra, for mpi4py's Open MPI."""
    fake = d / "mpiexec"
    fake.write_text("#!/bin/sh\necho 'HYDRA build details:'\necho '    Version: 4.2.0'\n")
    fake.chmod(0o755)
    launch.detect_mpi(launcher=str(fake))


# ============================================================================ the torch adapter
def _torch():
    return pytest.importorskip("torch")


@trigger("torch-missing")
def _():
    code = ("import sys\nsys.modules['torch'] = None\n"
            "try:\n    import syncnorm.torch\nexcept ImportError as e:\n    print('RAISED', e)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                         env=dict(os.environ, PYTHONPATH=str(ROOT))).stdout
    m = re.search(r"^RAISED (.*)$", out, re.M)
    assert m, out
    raise ImportError(m.group(1))  # re-raised here with the child's exact message


@trigger("lightning-missing")
def _():
    _torch()
    code = ("import sys\nsys.modules['lightning'] = sys.modules['pytorch_lightning'] = None\n"
            "try:\n    import syncnorm.torch.lightning\nexcept ImportError as e:\n    print('RAISED', e)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         env=dict(os.environ, PYTHONPATH=str(ROOT))).stdout
    m = re.search(r"^RAISED (.*)$", out, re.M)
    assert m, out
    raise ImportError(m.group(1))  # re-raised here with the child's exact message


@trigger("torch-init-twice")
def _():
    _torch()
    import syncnorm.torch as st
    with environ():  # a plain process: a world of 1
        st.init_process_group()
        try:
            st.init_process_group()
        finally:
            st.destroy_process_group(pause=0)


@trigger("torch-init-timeout")
def _():
    _torch()
    import syncnorm.torch as st
    st.init_process_group(timeout="10")


@trigger("torch-not-tensor")
def _():
    _torch()
    from syncnorm.torch import SyncBatchNorm
    SyncBatchNorm(2)(x(3, 2))


@trigger("torch-layout")
def _():
    torch = _torch()
    from syncnorm.torch import SyncBatchNorm
    SyncBatchNorm(2)(torch.eye(2).to_sparse())


@trigger("torch-dtype")
def _():
    torch = _torch()
    from syncnorm.torch import SyncBatchNorm
    SyncBatchNorm(2)(torch.ones(3, 2, dtype=torch.int64))


@trigger("torch-device")
def _():
    torch = _torch()
    from syncnorm.torch import SyncBatchNorm
    SyncBatchNorm(2)(torch.empty(3, 2, device="meta"))


@trigger("torch-running-pair")
def _():
    torch = _torch()
    from syncnorm.torch import SyncBatchNorm
    m = SyncBatchNorm(2)
    m.running_var = None
    m.eval()(torch.randn(3, 2))


@trigger("torch-num-batches")
def _():
    torch = _torch()
    from syncnorm.torch import SyncBatchNorm
    m = SyncBatchNorm(2)
    m.num_batches_tracked = None
    m(torch.randn(3, 2))


@trigger("torch-convert-lazy-subclass")
def _():
    torch = _torch()
    from syncnorm.torch import convert_sync_batchnorm

    class MyLazy(torch.nn.LazyBatchNorm2d):
        pass
    convert_sync_batchnorm(torch.nn.Sequential(MyLazy()))


@trigger("torch-convert-syncbn-subclass")
def _():
    torch = _torch()
    from syncnorm.torch import convert_sync_batchnorm

    class MySync(torch.nn.SyncBatchNorm):
        def forward(self, x):
            return super().forward(x) * 2
    convert_sync_batchnorm(MySync(2))


@trigger("torch-subclass-no-stats")
def _():
    torch = _torch()
    from syncnorm.torch import convert_sync_batchnorm

    class ByHand(torch.nn.BatchNorm1d):  # statistics through torch.batch_norm: cannot be synchronized
        def forward(self, x):
            return torch.batch_norm(x, self.weight, self.bias, self.running_mean, self.running_var,
                                    True, 0.1, self.eps, False)
    convert_sync_batchnorm(ByHand(2))(torch.randn(4, 2))


@trigger("torch-op-layer-gone")
def _():
    torch = _torch()
    torch.ops.syncnorm.batch_norm_train(torch.randn(4, 2), None, None, None, 2 ** 40)


@trigger("bench-fit-pairs")
def _():
    from syncnorm.bench.commmodel import fit_alpha_beta
    fit_alpha_beta([8.0], [1e-6])


@trigger("bench-fit-ranks")
def _():
    from syncnorm.bench.commmodel import fit_alpha_beta
    fit_alpha_beta([8.0, 64.0], [1e-6, 2e-6], P=1)


# ============================================================================ kernel engine
@trigger("kernels-env")
def _():
    from syncnorm.functional import engine
    with environ(SYNCNORM_KERNELS="fortran"):
        engine.requested()


@trigger("kernels-numba-missing")
def _():
    from syncnorm.functional import engine
    saved = sys.modules.get("numba")
    sys.modules["numba"] = None  # how Python marks a module as not importable: find_spec -> None
    try:
        with engine.use("numba"):
            pass
    finally:
        if saved is None:
            del sys.modules["numba"]
        else:
            sys.modules["numba"] = saved


@trigger("kernels-engine-arg")
def _():
    from syncnorm.functional import engine
    with engine.use("cuda"):
        pass


@trigger("kernels-threads")
def _():
    from syncnorm.functional import engine
    with environ(SYNCNORM_NUM_THREADS="two"):
        engine.num_threads()


# ============================================================================ command-line tools
def _sleeper(extra: str = "") -> list[str]:
    return [sys.executable, "-c", f"import signal, sys, time\n{extra}\ntime.sleep(30)"]


@trigger("cli-launch-error")
def _():
    return cli(lambda: launch.main(["-n", "0", "--", "true"]))


@trigger("cli-launch-timeout")
def _():
    return cli(lambda: launch.run(_sleeper(), dict(os.environ), timeout=0.5, kill_grace=0.5,
                                  stderr=io.BytesIO()))


@trigger("cli-launch-fatal")
def _():
    line = _sleeper("sys.stderr.write('[syncnorm fatal] world rank 0: test\\n'); sys.stderr.flush()")
    return cli(lambda: launch.run(line, dict(os.environ), abort_grace=0.5, stderr=io.BytesIO()))


@trigger("cli-launch-mpi-hung")
def _():
    """The job prints Open MPI's give-up message and goes on running, as Open MPI's launcher has
    been seen to do after a rank was killed."""
    line = _sleeper("sys.stderr.write('*** MPI_ERRORS_ARE_FATAL (processes in this communicator "
                    "will now abort)\\n'); sys.stderr.flush()")
    return cli(lambda: launch.run(line, dict(os.environ), mpi_grace=0.5, stderr=io.BytesIO()))


@trigger("cli-launch-fatal-status")
def _():
    """A rank prints the fatal line and dies of SIGALRM, as its watchdog makes a rank hung in
    MPI_Finalize do (the job's status 142 used to be the launcher's)."""
    line = _sleeper("sys.stderr.write('[syncnorm fatal] world rank 0: test\\n'); sys.stderr.flush()\n"
                    "import os\nos.kill(os.getpid(), signal.SIGALRM)")
    return cli(lambda: launch.run(line, dict(os.environ), stderr=io.BytesIO()))


def _launch_signal(d: Path, sig: signal.Signals, job_ignores_it: bool) -> Exit:
    """`sig` to the launcher (this process, while launch.run forwards signals) reaches the job; a
    job that ignores it is killed after kill_grace. The signal is sent only once launch.run's
    handler is installed and the job is running (never to a pytest process that would die of
    it)."""
    ready = d / f"job-ready-{sig.name}"
    ready.unlink(missing_ok=True)
    ignore = f"signal.signal(signal.{sig.name}, signal.SIG_IGN)\n" if job_ignores_it else ""
    line = _sleeper(f"{ignore}open({str(ready)!r}, 'w').close()")
    original = signal.getsignal(sig)
    stop = threading.Event()

    def send() -> None:
        while not stop.is_set():
            if signal.getsignal(sig) is not original and ready.exists():
                os.kill(os.getpid(), sig)
                return
            time.sleep(0.01)

    sender = threading.Thread(target=send, daemon=True)
    sender.start()
    try:
        return cli(lambda: launch.run(line, dict(os.environ), kill_grace=0.5, stderr=io.BytesIO()))
    finally:
        stop.set()
        sender.join()


def _train(*args: str) -> Exit:
    from syncnorm.training.train import main
    return cli(lambda: main(list(args)))


trigger("cli-train-args")(lambda: _train("--max-train", "-5"))
trigger("cli-train-needs-dir")(lambda: _train("--stop-after-step", "3"))
trigger("cli-train-nesterov")(lambda: _train("--nesterov", "--momentum", "0"))
trigger("cli-train-resume-both")(lambda: _train("--resume", "--resume-if-exists", "--checkpoint-dir", "x"))
trigger("cli-train-group-size")(lambda: _train(*TINY, "--epochs", "0", "--sync-group-size", "3"))
trigger("cli-train-equivalence-samples")(lambda: _train(*TINY, "--epochs", "0", "--check-equivalence", "5"))
trigger("cli-train-accuracy")(lambda: _train(*TINY, "--epochs", "0", "--require-accuracy", "1.0"))


def _dir_create(d: Path) -> Exit:
    (d / "a-file").write_text("")
    return _train(*TINY, "--epochs", "1", "--checkpoint-dir", str(d / "a-file" / "ckpt"))


def _dir_full(d: Path) -> Exit:
    with tmpfs_mount(d / "small", "size=64k"):
        return _train(*TINY[:4], "--progress", "none", "--epochs", "1", "--checkpoint-dir",
                      str(d / "small"))


def _save_failed(d: Path) -> Exit:
    (d / "taken" / "checkpoint.npz" / "x").mkdir(parents=True)  # a directory where the file goes
    return _train(*TINY, "--epochs", "1", "--checkpoint-dir", str(d / "taken"))


def _resume_missing(d: Path) -> Exit:
    out = _train(*TINY, "--epochs", "1", "--checkpoint-dir", str(d / "typo"), "--resume")
    assert not (d / "typo").exists(), "a refused --resume created the directory"
    return out


def _rewrite_numerics(path: Path, numerics: Any) -> None:
    """Rewrite a checkpoint as if written in another environment (valid format and checksum)."""
    c = ck.load_checkpoint(path)
    meta = dict(c.meta)
    if numerics is None:
        meta.pop("numerics")
    else:
        meta["numerics"] = numerics
    ck.save_checkpoint(path, c.model, c.optimizer, meta)


def _resume_env(d: Path, numerics: Callable[[dict], Any]) -> Exit:
    ckdir = d / f"env{id(numerics)}"
    assert _train(*TINY, "--epochs", "1", "--checkpoint-dir", str(ckdir)).code == 0
    _rewrite_numerics(ckdir / "checkpoint.npz", numerics(ck.load_checkpoint(ckdir / "checkpoint.npz").meta))
    return _train(*TINY, "--epochs", "1", "--checkpoint-dir", str(ckdir), "--resume")


def _other_threads(meta: dict) -> dict:
    ranks = [dict(r, blas_threads=r["blas_threads"] + 7 if isinstance(r["blas_threads"], int) else 7)
             for r in meta["numerics"]["ranks"]]
    return dict(meta["numerics"], ranks=ranks)


def _resume_refused(d: Path) -> Exit:
    (d / "refused").mkdir(exist_ok=True)
    (d / "refused" / "checkpoint.npz").write_bytes(b"PK\x03\x04 not a zip")
    return _train(*TINY, "--epochs", "1", "--checkpoint-dir", str(d / "refused"), "--resume")


def _resume_other_run(d: Path) -> Exit:
    assert _train(*TINY, "--epochs", "1", "--checkpoint-dir", str(d / "other")).code == 0
    return _train(*TINY[:2], "--batch-size", "8", *TINY[4:], "--epochs", "1", "--checkpoint-dir",
                  str(d / "other"), "--resume")


def _resume_foreign(d: Path) -> Exit:
    """A valid checkpoint of the right model that another program wrote (no training metadata)."""
    from syncnorm.training.trainer import ModelConfig, build_model, make_optimizer
    cfg = ModelConfig(width=2)
    model = build_model(cfg, None, convert=False)
    (d / "foreign").mkdir(exist_ok=True)
    ck.save_training_checkpoint(d / "foreign" / "checkpoint.npz", model, make_optimizer(model, cfg),
                                {"note": "written by hand"})
    return _train(*TINY, "--epochs", "1", "--checkpoint-dir", str(d / "foreign"), "--resume")


@trigger("cli-check-mismatch")
def _():
    from syncnorm.training.check import main
    return cli(lambda: main(["--tol", "-1", "--steps", "1", "--batch", "4", "--channels", "2"]))


PATH_TRIGGERS: dict[str, Callable[[Path], Any]] = {
    **CKPT_TRIGGERS, **DATA_TRIGGERS, "launch-no-launcher": _launch_no_launcher,
    "cli-train-resume-refused": _resume_refused, "cli-train-resume-other-run": _resume_other_run,
    "cli-train-resume-foreign": _resume_foreign,
    "cli-launch-signal": lambda d: _launch_signal(d, signal.SIGTERM, job_ignores_it=True),
    "cli-launch-interrupted": lambda d: _launch_signal(d, signal.SIGINT, job_ignores_it=False),
    "cli-train-dir-create": _dir_create, "cli-train-dir-space": _dir_full,
    "cli-train-dir-write": lambda d: _train(*TINY, "--epochs", "1", "--checkpoint-dir", "/proc"),
    "cli-train-save-failed": _save_failed, "cli-train-resume-missing": _resume_missing,
    "cli-train-resume-env": lambda d: _resume_env(d, _other_threads),
    "cli-train-resume-no-record": lambda d: _resume_env(d, lambda meta: None),
}


# ============================================================================ the tests
def check_raised(row: Row, result: Any) -> None:
    """`result`: the exception the trigger raised, or the Exit of a command-line tool."""
    if row.exit_code is not None:
        assert isinstance(result, Exit), f"{row.id}: expected an exit, got {result!r}"
        assert result.code == row.exit_code, f"{row.id}: exit {result.code}\n{result.output}"
        assert matches(row, result.output), f"{row.id}: no output line matches {row.message!r}:\n" \
                                            f"{result.output}"
        return
    assert isinstance(result, BaseException), f"{row.id}: nothing was raised (got {result!r})"
    assert type(result).__name__ == row.type_name, \
        f"{row.id}: raised {type(result).__name__} ({result}), documented {row.exception}"
    if row.base_name:
        assert row.base_name in {c.__name__ for c in type(result).__mro__}, row.exception
    assert matches(row, str(result)), f"{row.id}: message\n  {result}\ndoes not match\n  {row.message}"


def run_trigger(row: Row, tmp: Path) -> Any:
    fn = PATH_TRIGGERS.get(row.id)
    try:
        out = fn(tmp) if fn is not None else TRIGGERS[row.id]()
    except pytest.skip.Exception:
        raise
    except BaseException as e:  # noqa: BLE001 - what the row documents
        return e
    return out


LOCAL = [r for r in ROWS if r.id not in MPI_ROWS | JOB_ROWS]


@pytest.mark.parametrize("row", LOCAL, ids=[r.id for r in LOCAL])
def test_row(row, ckdir):
    assert row.id in TRIGGERS or row.id in PATH_TRIGGERS, f"no trigger for row {row.id}"
    check_raised(row, run_trigger(row, ckdir))


def test_every_row_has_one_trigger_and_ids_are_unique():
    ids = [r.id for r in ROWS]
    assert len(ids) == len(set(ids)), [i for i in ids if ids.count(i) > 1]
    known = set(TRIGGERS) | set(PATH_TRIGGERS) | MPI_ROWS | JOB_ROWS
    assert set(ids) == known, (set(ids) - known, known - set(ids))


def test_multi_rank_rows_on_2_ranks():
    """tests/support/mpi_workers/mpi_error_table.py triggers each multi-rank row on both ranks and
    checks it there against this table; each rank reports the rows it checked."""
    job = run_pytest_mpi(2, "tests/support/mpi_workers/mpi_error_table.py", timeout=180, extra=("-s",),
                         env={"OMP_NUM_THREADS": "1"}).check()
    for rid in sorted(MPI_ROWS):
        if rid.startswith("torch-") and importlib.util.find_spec("torch") is None:
            continue  # the rank skipped it too
        ok = re.findall(rf"^ERROR-ROW-OK {re.escape(rid)} rank (\d)$", job.output, re.M)
        assert set(ok) == {"0", "1"}, f"{rid} was not checked on both ranks:\n{job.output[-4000:]}"


@pytest.mark.child_kernels("numpy")  # subject: the timeout's message (conftest.py _child_kernels)
def test_collective_timeout_row_as_a_job():
    """A rank that calls SyncBatchNorm once more than its peer (which has finished): its collective
    times out, the documented error ends the job."""
    row = next(r for r in ROWS if r.id == "collective-timeout")
    job = run_mpi(2, ["tests/support/jobs/extra_step.py", "exit"], timeout=90)
    assert not job.timed_out and job.returncode != 0, job.output[-3000:]
    m = re.search(r"^\S*CollectiveTimeoutError: (.*)$", job.output, re.M)
    assert m, job.output[-3000:]
    assert matches(row, m.group(1)), m.group(1)
    assert "RanksOutOfStep" not in job.output


@pytest.mark.child_kernels("numpy")  # subject: the world mismatch (conftest.py _child_kernels)
def test_torch_world_mismatch_row_as_a_job():
    """An MPI world of 3 whose ranks 0 and 1 also form a torch.distributed world of 2: on those two,
    process_group=None is ambiguous and the documented error says so."""
    pytest.importorskip("torch")
    row = next(r for r in ROWS if r.id == "torch-world-mismatch")
    job = run_mpi(3, ["tests/support/mpi_workers/torch_ambiguous.py"], timeout=120,
                  env={"OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": "lo"}).check()
    found = dict(re.findall(r"^AMBIGUOUS rank (\d): (.*)$", job.output, re.M))
    assert set(found) == {"0", "1"}, job.output[-3000:]
    for message in found.values():
        assert matches(row, message), message


# ============================================================================ completeness
def _literal(node: ast.AST) -> str | None:
    """The message template of a string expression: literal text, with {…} for what varies."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.JoinedStr):
        return "".join(v.value if isinstance(v, ast.Constant) else "{…}" for v in node.values)
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
        a, b = _literal(node.left), _literal(node.right)
        if a is None and b is None:
            return None
        return (a if a is not None else "{…}") + (b if b is not None else "{…}")
    return None


def source_messages() -> list[tuple[str, str]]:
    """(where, template) of every exception constructed with a message in syncnorm/, and of every
    argparse `parser.error(...)`."""
    out = []
    for path in sorted((ROOT / "syncnorm").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if not (isinstance(node, ast.Call) and node.args):
                continue
            f = node.func
            name = f.id if isinstance(f, ast.Name) else f.attr if isinstance(f, ast.Attribute) else ""
            if not (name.endswith(("Error", "Exception")) or name == "error"):
                continue
            text = _literal(node.args[0])
            if text is not None:
                out.append((f"{path.relative_to(ROOT)}:{node.lineno}", text))
    return out


def documented(template: str, rows: list[Row]) -> bool:
    """A source template is documented when a row's text matches it (the row's placeholders
    standing for the template's variable parts), or the template (its {…} as wildcards) is found
    in a row's text (the row adds a prefix, as the command-line rows do)."""
    parts = template.split("{…}")
    src = re.compile("(.*?)".join(re.escape(p) for p in parts), re.S)
    return any(r.regex.fullmatch(template) or src.search(r.message) for r in rows)


def test_every_message_in_the_source_has_a_row():
    missing = [f"{where}: {text!r}" for where, text in source_messages() if not documented(text, ROWS)]
    assert not missing, "messages without a row in docs/errors.md:\n" + "\n".join(missing)


def test_the_completeness_check_can_fail():
    assert len(source_messages()) > 150
    assert not documented("a message that nobody wrote {…}", ROWS)
    assert documented("expected 4D input (got {…}D input)", ROWS)
    assert not documented("expected 4D input (got {…}D input) and more", ROWS)
    assert PLACEHOLDER.findall("`{a}` {b_c} {'x'}") == ["{a}", "{b_c}"]
    assert doc_regex("x {a} y").fullmatch("x anything\nat all y")
