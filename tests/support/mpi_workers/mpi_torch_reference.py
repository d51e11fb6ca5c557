"""syncnorm.torch.SyncBatchNorm across the ranks of an MPI job, against torch's own nn.BatchNorm*d on
the group's concatenated batch (run by tests/torch_adapter/test_torch_mpi.py at P = 1..4).

Every rank draws the whole group's data from the same seed, runs the SyncBatchNorm on its own slice
and torch's single-process BatchNorm on the concatenation, and compares outputs, input gradients,
parameter gradients (summed over the group's ranks), running statistics and num_batches_tracked.
"""
from __future__ import annotations

import copy
import zlib
from collections import Counter

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from mpi4py import MPI  # noqa: E402

from syncnorm import distributed as dist  # noqa: E402
from syncnorm.distributed import comm as C  # noqa: E402
from syncnorm.torch import RanksOutOfStepError, SyncBatchNorm, convert_sync_batchnorm  # noqa: E402

torch.set_num_threads(1)
WORLD = MPI.COMM_WORLD
P, RANK = WORLD.Get_size(), WORLD.Get_rank()
TORCH_BN = {2: torch.nn.BatchNorm1d, 3: torch.nn.BatchNorm1d, 4: torch.nn.BatchNorm2d,
            5: torch.nn.BatchNorm3d}


class CountingComm:
    """Wraps an mpi4py communicator and counts the collectives called on it (a nonblocking call,
    used when a collective timeout is set, counts as its blocking form)."""

    COLLECTIVES = {"Allreduce", "Iallreduce", "Allgather", "Iallgather", "Bcast", "Ibcast",
                   "Reduce", "Gather", "Barrier", "allreduce", "allgather", "bcast"}

    def __init__(self, comm):
        self._comm = comm
        self.calls: Counter = Counter()

    def __getattr__(self, name):
        attr = getattr(self._comm, name)
        if name not in self.COLLECTIVES:
            return attr

        def counted(*args, **kw):
            blocking = name[1].upper() + name[2:] if name in ("Iallreduce", "Iallgather", "Ibcast") else name
            self.calls[blocking] += 1
            return attr(*args, **kw)
        return counted


def sizes_for(kind: str, step: int) -> list[int]:
    """Per-rank batch sizes of one step."""
    if kind == "even":
        return [3] * P
    if kind == "uneven":
        return [[1, 4, 2, 5], [3, 1, 0, 2], [2, 2, 6, 1]][step % 3][:P] if P <= 4 else [2] * P
    if kind == "empty":  # one rank empty, then the whole world empty, then rank 0 alone
        return [[0] + [3] * (P - 1) if P > 1 else [3], [0] * P, [4] + [0] * (P - 1)][step % 3]
    raise ValueError(kind)


# name: (ndim, C, spatial, constructor kw, dtype, data mean, batch kind, steps, layout, groups)
SCENARIOS = {
    "bn2d_f64_uneven": (4, 3, (3, 4), {}, torch.float64, 0.0, "uneven", 3, "nc", "world"),
    "bn2d_f32_uneven_mean300": (4, 4, (2, 5), {}, torch.float32, 300.0, "uneven", 3, "nc", "world"),
    "bn1d_2d_input_empty_ranks": (2, 5, (), {}, torch.float64, 1.0, "empty", 3, "nc", "world"),
    "bn1d_3d_input_momentum_none": (3, 3, (7,), {"momentum": None}, torch.float64, -2.0, "uneven", 4,
                                    "nc", "world"),
    "bn3d_f32_even": (5, 2, (2, 3, 2), {}, torch.float32, 0.5, "even", 2, "nc", "world"),
    "bn2d_channels_last": (4, 3, (4, 3), {}, torch.float64, 0.0, "uneven", 2, "nlc", "world"),
    "bn1d_seq_channels_last": (3, 4, (6,), {}, torch.float32, 0.0, "uneven", 2, "nlc", "world"),
    "no_affine": (4, 3, (2, 2), {"affine": False}, torch.float64, 0.0, "uneven", 2, "nc", "world"),
    "no_bias": (4, 3, (2, 2), {"bias": False}, torch.float64, 0.0, "uneven", 2, "nc", "world"),
    "no_running_stats": (4, 3, (3, 2), {"track_running_stats": False}, torch.float64, 4.0,
                         "uneven", 3, "nc", "world"),
    "subgroups_uneven": (4, 3, (2, 3), {}, torch.float64, 0.0, "uneven", 3, "nc", "parity"),
    "subgroups_empty": (2, 4, (), {"momentum": None}, torch.float64, 0.0, "empty", 3, "nc", "parity"),
}

TOL = {torch.float64: 1e-10, torch.float32: 3e-5}


def make_groups(kind: str):
    if kind == "world":
        return dist.get_world_group()
    lists = [list(range(0, P, 2)), list(range(1, P, 2))] if P > 1 else [[0]]
    mine, _ = dist.new_subgroups_by_enumeration(lists)
    return mine


def group_sum(arr: np.ndarray, group) -> np.ndarray:
    buf = np.ascontiguousarray(arr, dtype=np.float64).copy()
    if group.size > 1:
        C.allreduce_sum(buf, group.comm)
    return buf


def to_layout(t, layout):
    """A fresh copy of t in the memory layout "nc" (contiguous) or "nlc" (channels last)."""
    if layout == "nc":
        return t.clone(memory_format=torch.contiguous_format)
    return t.movedim(1, -1).contiguous().movedim(-1, 1)


@pytest.mark.mpi(min_size=1)
@pytest.mark.parametrize("name", list(SCENARIOS))
def test_equals_torch_batchnorm_on_the_group_batch(name):
    ndim, Ch, spatial, kw, dtype, mean, kind, steps, layout, gkind = SCENARIOS[name]
    group = make_groups(gkind)
    members = list(group.ranks)
    rng = np.random.default_rng(zlib.crc32(name.encode()))  # the same stream on every rank
    ref = TORCH_BN[ndim](Ch, dtype=dtype, **kw)
    if ref.weight is not None:
        with torch.no_grad():
            ref.weight.copy_(torch.from_numpy(rng.uniform(0.5, 1.5, Ch)))
            if ref.bias is not None:
                ref.bias.copy_(torch.from_numpy(rng.normal(size=Ch)))
    sync = convert_sync_batchnorm(copy.deepcopy(ref), group)
    assert isinstance(sync, SyncBatchNorm)
    tol = TOL[dtype]
    for step in range(steps):
        ns = sizes_for(kind, step)
        xs = [torch.from_numpy(rng.normal(mean, 2, (n, Ch, *spatial))).to(dtype) for n in ns]
        dys = [torch.from_numpy(rng.normal(0, 1, (n, Ch, *spatial))).to(dtype) for n in ns]
        pos = sum(ns[r] for r in members[:members.index(RANK)])
        here = slice(pos, pos + ns[RANK])
        total = sum(ns[r] for r in members)
        x = to_layout(xs[RANK], layout).requires_grad_()
        sync.zero_grad(set_to_none=True)
        before = {k: v.clone() for k, v in sync.state_dict().items()}
        y = sync(x)
        assert y.shape == x.shape and y.dtype == dtype
        assert x.numel() == 0 or y.stride() == x.stride()  # same memory layout
        y.backward(to_layout(dys[RANK], layout))
        if total == 0:  # the whole group had no samples: nothing changes, gradients are zero
            for k, v in sync.state_dict().items():
                assert torch.equal(v, before[k]), k
            for p in sync.parameters():
                assert torch.count_nonzero(p.grad) == 0
            continue
        ref.zero_grad(set_to_none=True)
        xg = torch.cat([xs[r] for r in members]).requires_grad_()
        yg = ref(to_layout(xg, layout))
        yg.backward(to_layout(torch.cat([dys[r] for r in members]), layout))
        torch.testing.assert_close(y, yg[here], atol=tol, rtol=tol, msg=f"{name} step {step}: y")
        torch.testing.assert_close(x.grad, xg.grad[here], atol=tol, rtol=tol,
                                   msg=f"{name} step {step}: dx")
        for pname, p in sync.named_parameters():
            got = group_sum(p.grad.numpy(), group)
            want = getattr(ref, pname).grad.double().numpy()
            scale = 1 + np.abs(want).max()
            np.testing.assert_allclose(got, want, atol=tol * scale, rtol=tol,
                                       err_msg=f"{name} step {step}: d{pname} summed over the group")
        for bname, b in sync.named_buffers():
            torch.testing.assert_close(b, getattr(ref, bname), atol=tol, rtol=tol,
                                       msg=f"{name} step {step}: {bname}")
    # eval: local, with the running statistics (or this rank's batch statistics without them)
    sync.eval()
    ref.eval()
    x = to_layout(torch.from_numpy(rng.normal(mean, 2, (2 + RANK, Ch, *spatial))).to(dtype), layout)
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    ya, yb = sync(xa), ref(xb)
    torch.testing.assert_close(ya, yb, atol=tol, rtol=tol)
    dy = torch.from_numpy(rng.normal(size=tuple(x.shape))).to(dtype)
    ya.backward(dy)
    yb.backward(dy)
    torch.testing.assert_close(xa.grad, xb.grad, atol=tol, rtol=tol)


@pytest.mark.mpi(min_size=1)
@pytest.mark.parametrize("input_grad,param_grad", [(True, True), (False, True), (True, False)])
def test_requires_grad_false_inputs_and_params(input_grad, param_grad):
    rng = np.random.default_rng(5)
    xs = [torch.from_numpy(rng.normal(size=(2 + r, 3, 4))) for r in range(P)]
    ref = torch.nn.BatchNorm1d(3, dtype=torch.float64)
    sync = SyncBatchNorm(3, dtype=torch.float64)
    for m in (ref, sync):
        m.weight.requires_grad_(param_grad)
        m.bias.requires_grad_(param_grad)
    x = xs[RANK].clone().requires_grad_(input_grad)
    xg = torch.cat(xs).requires_grad_(input_grad)
    y, yg = sync(x), ref(xg)
    pos = sum(len(v) for v in xs[:RANK])
    (y * 2).sum().backward()
    (yg * 2).sum().backward()
    if input_grad:
        torch.testing.assert_close(x.grad, xg.grad[pos:pos + len(x)], atol=1e-10, rtol=1e-10)
    else:
        assert x.grad is None
    if param_grad:
        got = group_sum(sync.weight.grad.numpy(), dist.get_world_group())
        np.testing.assert_allclose(got, ref.weight.grad.numpy(), atol=1e-9)
    else:
        assert sync.weight.grad is None and sync.bias.grad is None


@pytest.mark.mpi(min_size=1)
def test_one_allreduce_each_way_none_in_eval_none_without_input_grad():
    cc = CountingComm(WORLD)
    m = SyncBatchNorm(5, process_group=cc)
    x = torch.randn(3 + RANK, 5, 4, 4, requires_grad=True)
    y = m(x)
    fwd = dict(cc.calls)
    y.sum().backward()
    if P == 1:
        assert sum(cc.calls.values()) == 0, "a group of size 1 must not communicate"
        return
    assert fwd == {"Allreduce": 1}, fwd
    assert dict(cc.calls) == {"Allreduce": 2}, cc.calls
    cc.calls.clear()
    m(x.detach()).sum().backward()  # only the parameters need gradients: no backward collective
    assert dict(cc.calls) == {"Allreduce": 1}, cc.calls
    cc.calls.clear()
    m.eval()
    m(x).sum().backward()
    assert sum(cc.calls.values()) == 0, "eval must not communicate"


@pytest.mark.mpi(min_size=2)
def test_one_value_in_the_whole_group_raises_on_every_rank():
    m = SyncBatchNorm(3)
    x = torch.ones(1 if RANK == P - 1 else 0, 3)
    with pytest.raises(ValueError, match="Expected more than 1 value per channel when training.*"
                                         "1 value in the whole process group"):
        m(x)
    # and the layer carries on in step afterwards
    y = m(torch.randn(2, 3))
    assert y.shape == (2, 3)


@pytest.mark.mpi(min_size=2)
def test_a_rank_skipping_a_layer_raises_on_every_rank():
    a, b = SyncBatchNorm(4), SyncBatchNorm(4)
    x = torch.randn(3, 4)
    a(x), b(x)
    with pytest.raises(RanksOutOfStepError, match="do not match"):
        (b if RANK == 1 else a)(x)


@pytest.mark.mpi(min_size=2)
def test_running_stats_stay_bitwise_identical_across_ranks():
    rng = np.random.default_rng(100 + RANK)
    m = torch.nn.Sequential(SyncBatchNorm(5, momentum=None), torch.nn.ReLU(), SyncBatchNorm(5))
    for _ in range(60):
        x = torch.from_numpy(rng.normal(3, 2, (int(rng.integers(0, 5)), 5, 3)).astype(np.float32))
        m(x.requires_grad_()).sum().backward()
    for name, buf in m.named_buffers():
        mine = np.ascontiguousarray(buf.numpy()).view(np.uint8).reshape(-1)
        allb = C.allgather(mine, WORLD)
        assert (allb == allb[0]).all(), f"{name} differs across ranks"



@pytest.mark.mpi(min_size=1)
def test_two_forwards_before_one_backward():
    """A layer applied twice in one step (siamese branches): two Allreduces forward, two backward,
    in the same order on every rank; equal to torch's BatchNorm applied twice to the group batch."""
    rng = np.random.default_rng(11)
    ns = [2 + (r % 3) for r in range(P)]
    a = [torch.from_numpy(rng.normal(1, 2, (n, 3, 4))) for n in ns]
    b = [torch.from_numpy(rng.normal(-1, 1, (n, 3, 4))) for n in ns]
    ref = torch.nn.BatchNorm1d(3, dtype=torch.float64)
    sync = convert_sync_batchnorm(copy.deepcopy(ref))
    xa, xb = a[RANK].clone().requires_grad_(), b[RANK].clone().requires_grad_()
    ga, gb = torch.cat(a).requires_grad_(), torch.cat(b).requires_grad_()
    (sync(xa) * sync(xb)).sum().backward()
    (ref(ga) * ref(gb)).sum().backward()
    here = slice(sum(ns[:RANK]), sum(ns[:RANK + 1]))
    torch.testing.assert_close(xa.grad, ga.grad[here], atol=1e-10, rtol=1e-10)
    torch.testing.assert_close(xb.grad, gb.grad[here], atol=1e-10, rtol=1e-10)
    torch.testing.assert_close(sync.running_var, ref.running_var, atol=1e-12, rtol=1e-12)
    assert int(sync.num_batches_tracked) == 2


@pytest.mark.mpi(min_size=2)
def test_a_group_without_this_rank_is_refused():
    only0 = dist.new_group([0])
    if RANK != 0:
        with pytest.raises(ValueError, match="does not contain this rank"):
            SyncBatchNorm(2, process_group=only0)(torch.randn(3, 2))
