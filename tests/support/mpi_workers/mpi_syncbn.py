"""SyncBatchNorm across the ranks of an MPI job (run by tests/multirank/test_syncbn_mpi.py at P = 1..4).

Every comparison is against something syncnorm did not compute across ranks: PyTorch's own
nn.SyncBatchNorm results (golden files), or a single-process BatchNorm on the group's concatenated
batch.
"""
from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis import strategies as st
from mpi4py import MPI

from syncnorm import distributed as dist
from syncnorm import nn

WORLD = MPI.COMM_WORLD
P, RANK = WORLD.Get_size(), WORLD.Get_rank()
GOLDEN = Path(__file__).resolve().parents[2] / "data" / "golden"


class CountingComm:
    """Wraps an mpi4py communicator and counts the collectives called on it and their bytes."""

    COLLECTIVES = {"Allreduce", "Iallreduce", "Allgather", "Iallgather", "Bcast", "Ibcast",
                   "Reduce", "Gather", "Scatter", "Alltoall", "Barrier", "allreduce", "allgather",
                   "bcast", "gather", "Reduce_scatter"}

    def __init__(self, comm):
        self._comm = comm
        self.calls: Counter = Counter()
        self.bytes = 0

    def __getattr__(self, name):
        attr = getattr(self._comm, name)
        if name not in self.COLLECTIVES:
            return attr

        def counted(*args, **kw):
            self.calls[name] += 1
            for a in args:
                if isinstance(a, np.ndarray):
                    self.bytes += a.nbytes
            return attr(*args, **kw)
        return counted


def layer_cls(ndim):
    return {2: nn.BatchNorm1d, 3: nn.BatchNorm1d, 4: nn.BatchNorm2d, 5: nn.BatchNorm3d}[ndim]


# ------------------------------------------------------------------------------ golden files
CASES = json.loads((GOLDEN / "cases.json").read_text())["cases"] if GOLDEN.exists() else []


@pytest.mark.mpi(min_size=4)
@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_against_pytorch_syncbatchnorm(case):
    if P != 4:
        pytest.skip("the golden files were recorded with 4 ranks")
    d = np.load(GOLDEN / f"{case['name']}.npz", allow_pickle=False)
    if case["groups"]:
        group, _ = dist.new_subgroups_by_enumeration(case["groups"])
    else:
        group = None
    local = getattr(nn, case["layer"])(case["C"], **case["kw"])
    m = nn.convert_sync_batchnorm(nn.Sequential(local), group)[0]
    assert isinstance(m, nn.SyncBatchNorm)
    if m.affine:
        m.weight.data[...] = d["init/weight"]
        m.bias.data[...] = d["init/bias"]
    r = RANK
    for s in range(case["steps"]):
        k = f"r{r}/s{s}"
        m.zero_grad()
        y = m(d[k + "/x"])
        np.testing.assert_allclose(y, d[k + "/y"], atol=2e-5, rtol=1e-5, err_msg=f"{k} y")
        dx = m.backward(d[k + "/dy"])
        np.testing.assert_allclose(dx, d[k + "/dx"], atol=2e-5, rtol=1e-4, err_msg=f"{k} dx")
        if m.affine:
            for name in ("dweight", "dbias"):
                ref = d[f"{k}/{name}"]
                got = m.weight.grad if name == "dweight" else m.bias.grad
                scale = 1 + np.abs(ref).max()
                assert np.abs(got - ref).max() <= 1e-5 * scale, f"{k} {name}"
    np.testing.assert_allclose(m.running_mean, d[f"r{r}/running_mean"], atol=1e-6, rtol=1e-5)
    np.testing.assert_allclose(m.running_var, d[f"r{r}/running_var"], atol=1e-6, rtol=1e-5)
    assert int(m.num_batches_tracked) == int(d[f"r{r}/num_batches_tracked"])
    m.eval()
    np.testing.assert_allclose(m(d[f"r{r}/eval_x"]), d[f"r{r}/eval_y"], atol=2e-5, rtol=1e-5)


# ------------------------------------------------------------------------------ property test
def partition(draw_order, sizes):
    out, i = [], 0
    for s in sizes:
        out.append([int(r) for r in draw_order[i:i + s]])
        i += s
    return out


@st.composite
def scenarios(draw):
    perm = draw(st.permutations(list(range(P))))
    sizes = []
    left = P
    while left:
        s = draw(st.integers(1, left))
        sizes.append(s)
        left -= s
    groups = partition(perm, sizes)
    ndim = draw(st.integers(2, 5))
    C = draw(st.integers(1, 5))
    spatial = [draw(st.integers(1, 3)) for _ in range(ndim - 2)]
    steps = draw(st.integers(1, 3))
    batches = [[draw(st.integers(0, 4)) for _ in range(P)] for _ in range(steps)]
    kw = {"momentum": draw(st.sampled_from([0.1, None, 0.7])), "affine": draw(st.booleans()),
          "track_running_stats": draw(st.booleans())}
    dtype = draw(st.sampled_from(["float32", "float64"]))
    mean = draw(st.sampled_from([0.0, 5.0, -300.0]))
    seed = draw(st.integers(0, 2**31 - 1))
    return groups, ndim, C, spatial, batches, kw, dtype, mean, seed


# every rank draws the same examples: one fixed seed, no database, no shrinking (which would
# depend on a failure that only one rank saw). SYNCNORM_FUZZ_EXAMPLES raises the count for the slow
# run (tests/multirank/test_sbn_fuzz_mpi.py); SYNCNORM_FUZZ_SEED picks another sequence (the same on
# all ranks).
@pytest.mark.mpi(min_size=1)
@settings(derandomize=False, database=None, deadline=None,
          max_examples=int(os.environ.get("SYNCNORM_FUZZ_EXAMPLES", "25")),
          phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))
@seed(int(os.environ.get("SYNCNORM_FUZZ_SEED", "0")))
@given(scenarios())
def test_equals_single_process_batchnorm_on_the_group_batch(sc):
    groups, ndim, C, spatial, batches, kw, dtype, mean, seed = sc
    mine, all_groups = dist.new_subgroups_by_enumeration(groups)
    members = list(mine.ranks)
    rng = np.random.default_rng(seed)
    cls = layer_cls(ndim)
    ref = cls(C, dtype=dtype, **kw)
    sync = nn.convert_sync_batchnorm(cls(C, dtype=dtype, **kw), mine)
    if kw["affine"]:
        w = rng.uniform(0.5, 1.5, C)
        b = rng.normal(size=C)
        for m in (ref, sync):
            m.weight.data[...] = w
            m.bias.data[...] = b
    for ns in batches:
        # the whole world's data for this step; this rank keeps its slice
        xs = [(mean + rng.normal(0, 2, (n, C, *spatial))).astype(dtype) for n in ns]
        dys = [rng.normal(0, 1, (n, C, *spatial)).astype(dtype) for n in ns]
        total = sum(ns[r] for r in members)
        x_group = np.concatenate([xs[r] for r in members])
        dy_group = np.concatenate([dys[r] for r in members])
        pos = sum(ns[r] for r in members[:members.index(RANK)])
        here = slice(pos, pos + ns[RANK])
        if total * int(np.prod(spatial)) == 1:
            with pytest.raises(ValueError, match="Expected more than 1 value per channel"):
                sync(xs[RANK])
            with pytest.raises(ValueError, match="Expected more than 1 value per channel"):
                ref(x_group)
            continue
        for m in (ref, sync):
            m.zero_grad()
        y_ref = ref(x_group)
        y = sync(xs[RANK])
        # float64: the statistics of a step whose shift is far from the mean lose up to ~1e-8 of the
        # variance (docs/numerics.md); with 2 values per channel dx cancels down to ~1e-4 of dy
        tol = 1e-9 if dtype == "float64" else 3e-5
        assert y.shape == xs[RANK].shape and y.dtype == np.dtype(dtype)
        np.testing.assert_allclose(y, y_ref[here], atol=tol, rtol=tol)
        dx_ref = ref.backward(dy_group)
        dx = sync.backward(dys[RANK])
        assert not np.any(np.isnan(dx))
        # dx is dy * invstd minus terms that cancel it: its rounding scales with dy * invstd, which
        # is large for a channel whose few values lie close together
        dx_scale = 1.0
        if x_group.size:
            axes = (0,) + tuple(range(2, x_group.ndim))
            invstd = 1 / np.sqrt(x_group.astype(np.float64).var(axis=axes).min() + 1e-5)
            dx_scale += np.abs(dy_group).max() * invstd
        np.testing.assert_allclose(dx, dx_ref[here], atol=tol * dx_scale, rtol=tol)
        if kw["affine"]:
            g = np.concatenate([sync.weight.grad, sync.bias.grad]).astype(np.float64)
            if mine.size > 1:
                mine.comm.Allreduce(MPI.IN_PLACE, g)
            g_ref = np.concatenate([ref.weight.grad, ref.bias.grad])
            np.testing.assert_allclose(g, g_ref, atol=tol * (1 + np.abs(g_ref).max()), rtol=tol)
        if kw["track_running_stats"]:
            np.testing.assert_allclose(sync.running_mean, ref.running_mean, atol=tol, rtol=tol)
            np.testing.assert_allclose(sync.running_var, ref.running_var, atol=tol, rtol=tol)
            assert int(sync.num_batches_tracked) == int(ref.num_batches_tracked)
    # eval: local, with the running statistics (or local batch statistics without them)
    sync.eval()
    ref.eval()
    x = (mean + rng.normal(0, 2, (3, C, *spatial))).astype(dtype)
    np.testing.assert_allclose(sync(x), ref(x), atol=1e-10 if dtype == "float64" else 3e-5)


# ------------------------------------------------------------------------------ protocol
@pytest.mark.mpi(min_size=1)
def test_exactly_one_collective_each_way_and_none_in_eval():
    cc = CountingComm(WORLD)
    C = 7
    m = nn.SyncBatchNorm(C, process_group=cc)
    x = np.random.default_rng(RANK).normal(size=(3 + RANK, C, 4, 4)).astype(np.float32)
    y = m(x)
    fwd = dict(cc.calls)
    m.backward(np.ones_like(y))
    if P == 1:
        assert sum(cc.calls.values()) == 0, "a group of size 1 must not communicate"
        return
    assert fwd == {"Allreduce": 1}, fwd
    assert dict(cc.calls) == {"Allreduce": 2}, cc.calls
    # bytes per rank per step do not depend on the group size: 2 x (2C+6) float64 values (the
    # backward buffer is padded to the forward's size, see distributed/exchange.py)
    assert cc.bytes == 8 * ((2 * C + 6) + (2 * C + 6))
    cc.calls.clear()
    m.eval()
    m.backward(np.ones_like(m(x)))
    assert sum(cc.calls.values()) == 0, "eval must not communicate"


@pytest.mark.mpi(min_size=2)
def test_empty_ranks_and_globally_empty_step():
    m = nn.SyncBatchNorm(3)
    before = m.state_dict()
    # the whole group has 0 samples: no update, no NaN, both collectives still made
    y = m(np.zeros((0, 3, 2), np.float32))
    dx = m.backward(np.zeros((0, 3, 2), np.float32))
    assert y.shape == dx.shape == (0, 3, 2)
    for k, v in m.state_dict().items():
        np.testing.assert_array_equal(v, before[k])
    # only rank 0 has samples
    n = 4 if RANK == 0 else 0
    x = np.arange(n * 6, dtype=np.float32).reshape(n, 3, 2)
    y = m(x)
    assert y.shape == x.shape and not np.any(np.isnan(y))
    assert int(m.num_batches_tracked) == 1
    # one value in the whole group: every rank raises together
    x = np.ones((1 if RANK == P - 1 else 0, 3), np.float32)
    with pytest.raises(ValueError, match="1 value in the whole process group"):
        m(x)


@pytest.mark.mpi(min_size=2)
def test_rank_skipping_a_layer_raises_on_every_rank():
    a, b = nn.SyncBatchNorm(4), nn.SyncBatchNorm(4)
    x = np.random.default_rng(0).normal(size=(3, 4)).astype(np.float32)
    a(x), b(x)  # in step
    with pytest.raises(nn.RanksOutOfStepError, match="do not match"):
        if RANK == 1:
            b(x)  # rank 1 skips `a`
        else:
            a(x)


@pytest.mark.mpi(min_size=2)
def test_layers_in_another_order_raise_on_every_rank():
    """Rank 0 runs the model's two layers in the other order from the first step on: the layers
    are numbered by first use, and the second call finds that rank 0's #1 was built before its #0
    while the others' was not."""
    a, b = nn.SyncBatchNorm(2), nn.SyncBatchNorm(2)
    x = np.random.default_rng(0).normal(size=(3, 2)).astype(np.float32)
    with pytest.raises(nn.RanksOutOfStepError):
        for m in ((b, a) if RANK == 0 else (a, b)):
            m(x)


@pytest.mark.mpi(min_size=2)
def test_a_rank_one_step_ahead_raises():
    a = nn.SyncBatchNorm(2)
    x = np.random.default_rng(0).normal(size=(3, 2)).astype(np.float32)
    a(x)
    if RANK == 0:
        a._exchange.forward_calls += 1  # rank 0 believes it ran one more step
    with pytest.raises(nn.RanksOutOfStepError, match="layer/step fingerprints differ"):
        a(x)


@pytest.mark.mpi(min_size=2)
def test_different_running_stats_are_caught():
    a = nn.SyncBatchNorm(2)
    if RANK == 1:
        a.running_mean[...] = 0.5  # e.g. a rank that loaded another checkpoint
    with pytest.raises(nn.RanksOutOfStepError, match="dtype/shift fingerprints differ"):
        a(np.ones((3, 2), np.float32) * np.arange(3)[:, None])


@pytest.mark.mpi(min_size=2)
def test_running_stats_bitwise_identical_after_1000_uneven_steps():
    rng = np.random.default_rng(RANK)
    m = nn.SyncBatchNorm(5, momentum=None)
    k = nn.SyncBatchNorm(5)
    for _ in range(1000):
        x = rng.normal(3, 2, (int(rng.integers(0, 6)), 5, 3)).astype(np.float32)
        k.backward(np.ones_like(k(m(x))))
        m.backward(np.ones_like(x))
    for mod in (m, k):
        for name, buf in mod.named_buffers():
            mine = np.ascontiguousarray(buf).view(np.uint8)
            allb = np.empty((P, mine.size), np.uint8)
            WORLD.Allgather(mine, allb)
            assert (allb == allb[0]).all(), f"{name} differs across ranks"


@pytest.mark.mpi(min_size=1)
def test_group_api():
    assert dist.get_world_size() == P and dist.get_rank() == RANK
    g = dist.new_group(list(range(P)))
    assert g.size == P and g.rank == RANK
    gs = 2 if P % 2 == 0 else 1
    cur, groups = dist.new_subgroups(gs)
    assert cur.ranks == tuple(range(RANK // gs * gs, RANK // gs * gs + gs))
    assert [x.ranks for x in groups] == [tuple(range(s, s + gs)) for s in range(0, P, gs)]
    node, nodes = dist.split_by_node()
    assert RANK in node.ranks and sorted(sum((list(n.ranks) for n in nodes), [])) == list(range(P))
    # a rank not in a new_group gets a non-member group; SyncBatchNorm says so
    if P > 1:
        only0 = dist.new_group([0])
        assert only0.is_member == (RANK == 0)
        layer = nn.SyncBatchNorm(2, process_group=only0)  # made on every rank: layer ids stay equal
        if RANK != 0:
            with pytest.raises(ValueError, match="does not contain this rank"):
                layer(np.ones((2, 2), np.float32))
    # an mpi4py communicator is accepted wherever a group is
    sub = WORLD.Split(RANK % 2, RANK)
    gr = dist.as_group(sub)
    assert gr.size == sub.Get_size() and gr.ranks[gr.rank] == RANK
    with pytest.raises(TypeError, match="process_group must be a syncnorm ProcessGroup"):
        nn.SyncBatchNorm(2, process_group="world")


# ------------------------------------------------------------------------------ bad input on one rank
@pytest.mark.mpi(min_size=2)
@pytest.mark.parametrize("bad,exc,msg", [
    (np.zeros((3, 5), np.float32), ValueError, "expected input with 4 channels"),
    (np.zeros((3, 4), np.int64), TypeError, "expected a floating-point input"),
    (np.zeros((3, 4, 2, 2, 2), np.float32), ValueError, "expected 2D or 3D input"),
])
def test_bad_input_on_one_rank_raises_on_every_rank(bad, exc, msg):
    m = nn.convert_sync_batchnorm(nn.Sequential(nn.BatchNorm1d(4)))[0]
    good = np.random.default_rng(RANK).normal(size=(3, 4)).astype(np.float32)
    if RANK == P - 1:
        with pytest.raises(exc, match=msg):
            m(bad)
    else:
        with pytest.raises(dist.PeerInputError, match="1 rank\\(s\\) of the group had bad input"):
            m(good)
    # the layer stays usable and in step afterwards
    y = m(good)
    if RANK == P - 1:
        with pytest.raises(ValueError, match="expected grad_output of shape"):
            m.backward(np.ones((2, 4), np.float32))
    else:
        with pytest.raises(dist.PeerInputError, match="backward call"):
            m.backward(np.ones_like(y))
    m.backward(np.ones_like(m(good)))


@pytest.mark.mpi(min_size=2)
def test_nan_on_one_rank_is_caught_on_every_rank_when_asked():
    x = np.random.default_rng(RANK).normal(size=(3, 2)).astype(np.float32)
    if RANK == 0:
        x[1, 1] = np.nan
    y = nn.SyncBatchNorm(2)(x)  # default: propagate like torch
    assert np.isnan(y[:, 1]).all() and np.isfinite(y[:, 0]).all()
    with pytest.raises(FloatingPointError, match=("this rank's" if RANK == 0 else "another rank's")):
        nn.SyncBatchNorm(2, check_finite=True)(x)


@pytest.mark.mpi(min_size=2)
def test_layers_of_different_sizes_out_of_step_are_caught_in_debug_mode(monkeypatch):
    monkeypatch.setenv("SYNCNORM_CHECK_ORDER", "1")
    a, b = nn.SyncBatchNorm(3), nn.SyncBatchNorm(200)
    xa = np.ones((2, 3), np.float32) * np.arange(2)[:, None]
    xb = np.ones((2, 200), np.float32) * np.arange(2)[:, None]
    with pytest.raises(nn.RanksOutOfStepError, match="fingerprints differ"):
        a(xa) if RANK == 0 else b(xb)
