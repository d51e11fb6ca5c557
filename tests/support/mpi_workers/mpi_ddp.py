"""DistributedDataParallel across the ranks of an MPI job (run by tests/multirank/test_parallel_mpi.py).

Collectives are counted by a proxy communicator passed as the process group; gradients are compared
with the average of the local gradients, computed without DDP and gathered with plain mpi4py.
"""
from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
from mpi4py import MPI

from syncnorm import nn
from syncnorm.optim import SGD
from syncnorm.parallel import DistributedDataParallel
from syncnorm.training.models import digits_cnn

WORLD = MPI.COMM_WORLD
P, RANK = WORLD.Get_size(), WORLD.Get_rank()


class CountingComm:
    """Wraps an mpi4py communicator; counts Allreduce/Iallreduce/Bcast/Ibcast calls and bytes."""

    COUNTED = {"Allreduce", "Iallreduce", "Bcast", "Ibcast", "Allgather", "Barrier", "Reduce"}

    def __init__(self, comm):
        self._comm = comm
        self.calls: Counter = Counter()
        self.bytes: Counter = Counter()

    def __getattr__(self, name):
        attr = getattr(self._comm, name)
        if name not in self.COUNTED:
            return attr

        def counted(*args, **kw):
            self.calls[name] += 1
            self.bytes[name] += sum(a.nbytes for a in args if isinstance(a, np.ndarray))
            return attr(*args, **kw)
        return counted

    def reset(self):
        self.calls.clear()
        self.bytes.clear()


def gather(a):
    """(P, *a.shape) of every rank's array, with plain mpi4py (the test's own channel)."""
    a = np.ascontiguousarray(a)
    out = np.empty((P,) + a.shape, a.dtype)
    WORLD.Allgather(a, out)
    return out


def batch(seed, n=6):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, 1, 8, 8)).astype(np.float32), rng.integers(0, 10, n)


def local_grads(model, x, y):
    crit = nn.CrossEntropyLoss()
    model.zero_grad()
    crit(model(x), y)
    model.backward(crit.backward())
    return [p.grad.copy() for p in model.parameters()]


@pytest.mark.mpi(min_size=1)
def test_ranks_start_equal_after_one_broadcast():
    counting = CountingComm(WORLD)
    model = digits_cnn(width=4, generator=np.random.default_rng(100 + RANK))  # different on each rank
    model[1].running_mean[...] = RANK  # buffers too
    model[1].num_batches_tracked[...] = 7 * RANK
    rank0 = digits_cnn(width=4, generator=np.random.default_rng(100)).state_dict()
    DistributedDataParallel(model, counting)
    for k, v in model.state_dict().items():
        g = gather(v)
        assert all(np.array_equal(g[r], g[0]) for r in range(P)), k
        if k not in ("1.running_mean", "1.num_batches_tracked"):
            assert np.array_equal(v, rank0[k]), k
    assert model[1].num_batches_tracked == 0 and np.all(model[1].running_mean == 0)
    want = Counter() if P == 1 else Counter({"Allreduce": 1, "Bcast": 1})  # layout check + state
    assert counting.calls == want


@pytest.mark.mpi(min_size=1)
@pytest.mark.parametrize("cap_mb,reduce_dtype", [(25.0, None), (0.001, None), (0.0005, np.float64)])
def test_one_allreduce_per_bucket_and_gradients_are_the_average(cap_mb, reduce_dtype):
    counting = CountingComm(WORLD)
    model = digits_cnn(width=4, dropout=0.0, generator=np.random.default_rng(0))
    ref = digits_cnn(width=4, dropout=0.0, generator=np.random.default_rng(0))
    ddp = DistributedDataParallel(model, counting, bucket_cap_mb=cap_mb, broadcast_buffers=False,
                                  reduce_dtype=reduce_dtype)
    nparams = sum(p.data.size for p in model.parameters())
    itemsize = 8 if reduce_dtype is not None else 4
    assert sum(b.buffer.size for b in ddp.buckets) == nparams
    assert all(b.buffer.dtype.itemsize == itemsize for b in ddp.buckets)
    if cap_mb < 1:
        assert len(ddp.buckets) > 2  # the small caps split the model
        assert all(b.nbytes <= cap_mb * 2 ** 20 or len(b.params) == 1 for b in ddp.buckets)
    # buckets run in reverse parameter order (the order backward produces gradients)
    order = [id(p) for b in ddp.buckets for p in b.params]
    assert order == [id(p) for p in reversed(list(model.parameters()))]
    x, y = batch(RANK)
    want = [gather(g).astype(np.float64).mean(axis=0) for g in local_grads(ref, x, y)]
    for step in range(2):
        counting.reset()
        crit = nn.CrossEntropyLoss()
        model.zero_grad()
        crit(ddp(x), y)
        ddp.backward(crit.backward())
        expect = Counter() if P == 1 else Counter({"Allreduce": len(ddp.buckets)})
        assert counting.calls == expect
        if P > 1:
            assert counting.bytes["Allreduce"] == sum(b.nbytes for b in ddp.buckets)
        for p, w in zip(model.parameters(), want):
            assert p.grad.dtype == np.float32
            np.testing.assert_allclose(p.grad, w, rtol=2e-6, atol=2e-7)


@pytest.mark.mpi(min_size=1)
@pytest.mark.parametrize("sync_bn", [False, True])
def test_parameters_stay_bitwise_equal_on_every_rank(sync_bn):
    counting = CountingComm(WORLD)
    model = digits_cnn(width=4, generator=np.random.default_rng(RANK))
    if sync_bn:
        model = nn.convert_sync_batchnorm(model, counting)
    ddp = DistributedDataParallel(model, counting, broadcast_buffers=not sync_bn)
    opt = SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3)
    crit = nn.CrossEntropyLoss()
    counting.reset()
    steps = 4
    for s in range(steps):
        x, y = batch(1000 * s + RANK)  # every rank sees different data
        opt.zero_grad()
        crit(ddp(x), y)
        ddp.backward(crit.backward())
        opt.step()
    if P > 1:
        n_bn = sum(isinstance(m, nn.SyncBatchNorm) for m in model.modules())
        per_step = Counter({"Allreduce": 1 + 2 * n_bn}) if sync_bn else \
            Counter({"Allreduce": 1, "Bcast": 1})  # local BN: rank 0's buffers each forward
        assert counting.calls == Counter({k: v * steps for k, v in per_step.items()})
    if not sync_bn:  # local BatchNorm: running statistics differ until rank 0's are broadcast
        ddp.sync_buffers()
    for k, v in model.state_dict().items():
        g = gather(v)
        assert all(np.array_equal(g[r], g[0]) for r in range(P)), k
    for p in model.parameters():
        g = gather(opt.state[p]["momentum_buffer"])
        assert all(np.array_equal(g[r], g[0]) for r in range(P))


@pytest.mark.mpi(min_size=1)
def test_no_sync_accumulates_and_the_next_backward_averages_everything():
    counting = CountingComm(WORLD)
    model = digits_cnn(width=4, dropout=0.0, generator=np.random.default_rng(0))
    ref = digits_cnn(width=4, dropout=0.0, generator=np.random.default_rng(0))
    ddp = DistributedDataParallel(model, counting, broadcast_buffers=False)
    x1, y1 = batch(RANK)
    x2, y2 = batch(50 + RANK)
    g1, g2 = local_grads(ref, x1, y1), local_grads(ref, x2, y2)
    counting.reset()
    crit = nn.CrossEntropyLoss()
    model.zero_grad()
    with ddp.no_sync():
        crit(ddp(x1), y1)
        ddp.backward(crit.backward())
    assert counting.calls == Counter()
    crit(ddp(x2), y2)
    ddp.backward(crit.backward())
    assert counting.calls == (Counter() if P == 1 else Counter({"Allreduce": 1}))
    for p, a, b in zip(model.parameters(), g1, g2):
        want = gather(a.astype(np.float64) + b).mean(axis=0)
        np.testing.assert_allclose(p.grad, want, rtol=2e-6, atol=2e-7)


@pytest.mark.mpi(min_size=2)
def test_different_models_fail_on_every_rank_instead_of_hanging():
    model = digits_cnn(width=4 if RANK == 0 else 5)
    with pytest.raises(ValueError, match="different parameters"):
        DistributedDataParallel(model)


@pytest.mark.mpi(min_size=2)
def test_state_dict_has_torch_style_module_prefix():
    model = digits_cnn(width=4)
    ddp = DistributedDataParallel(model)
    assert list(ddp.state_dict()) == ["module." + k for k in model.state_dict()]
