"""Ranks out of step, beyond mpi_syncbn.py (run by tests/multirank/test_out_of_step.py on 4 ranks).

Each scenario makes the ranks' synchronized calls disagree in a way real programs do (a layer
skipped in the middle of a model, another order, a skipped backward, a forward retried, another
dtype, lazy layers sized differently, trouble in one subgroup only) and checks that EVERY rank of the
group raises, that they all raise the same error class within that one call (gathered after the
fact), and that nothing hangs (the harness's timeout would fail the job).
"""
from __future__ import annotations

import numpy as np
import pytest
from mpi4py import MPI

from syncnorm import distributed as dist
from syncnorm import nn

WORLD = MPI.COMM_WORLD
P, RANK = WORLD.Get_size(), WORLD.Get_rank()
LAST = P - 1


def data(c: int, n: int = 3, dtype=np.float32, seed: int | None = None) -> np.ndarray:
    rng = np.random.default_rng(RANK if seed is None else seed)
    return rng.normal(2, 1, (n, c)).astype(dtype)


def outcome(fn) -> str:
    """Run fn; the name of what it raised ('ok' when nothing)."""
    try:
        fn()
    except Exception as e:  # noqa: BLE001 - the outcome is what we compare
        return type(e).__name__
    return "ok"


def gathered(name: str, comm=WORLD) -> list[str]:
    """Every rank's outcome (a fixed-size buffer collective: no pickle)."""
    mine = np.zeros(48, np.uint8)
    raw = name.encode()[:48]
    mine[:len(raw)] = np.frombuffer(raw, np.uint8)
    out = np.zeros((comm.Get_size(), 48), np.uint8)
    comm.Allgather(mine, out)
    return [bytes(row).rstrip(b"\0").decode() for row in out]


def all_raise(fn, expected: str = "RanksOutOfStepError", comm=WORLD) -> None:
    names = gathered(outcome(fn), comm)
    assert names == [expected] * len(names), names


@pytest.mark.mpi(min_size=2)
def test_a_layer_skipped_in_the_middle_of_the_model():
    model = nn.Sequential(nn.SyncBatchNorm(2), nn.ReLU(), nn.SyncBatchNorm(2), nn.ReLU(),
                          nn.SyncBatchNorm(2))
    x = data(2)
    model(x)  # one step in step

    def step():
        layers = list(model)
        if RANK == LAST:  # e.g. a data-dependent branch taken on one rank only
            layers = layers[:2] + layers[3:]
        h = x
        for m in layers:
            h = m(h)
    all_raise(step)


@pytest.mark.mpi(min_size=2)
def test_three_layers_in_another_order():
    a, b, c = nn.SyncBatchNorm(2), nn.SyncBatchNorm(2), nn.SyncBatchNorm(2)
    order = (c, b, a) if RANK == 0 else (a, b, c)
    all_raise(lambda: [m(data(2)) for m in order])


@pytest.mark.mpi(min_size=2)
@pytest.mark.parametrize("debug", [False, True])
def test_a_rank_that_skips_a_backward(debug, monkeypatch):
    """The last rank goes straight to the next forward while the others run backward: buffers of
    different sizes meet. Debug mode (SYNCNORM_CHECK_ORDER=1) catches it with its fixed-size
    pre-check; without it MPI's truncation error or the fingerprint does."""
    if debug:
        monkeypatch.setenv("SYNCNORM_CHECK_ORDER", "1")
    m = nn.SyncBatchNorm(3)
    y = m(data(3))
    m.backward(np.ones_like(y))
    y = m(data(3))

    def step():
        if RANK == LAST:
            m(data(3))
        else:
            m.backward(np.ones_like(y))
    all_raise(step)


@pytest.mark.mpi(min_size=2)
@pytest.mark.parametrize("debug", [False, True])
def test_a_forward_retried_on_one_rank(debug, monkeypatch):
    """Rank 0 caught an exception of its own after the forward and runs the forward again (an extra
    step) while the others go on to backward."""
    if debug:
        monkeypatch.setenv("SYNCNORM_CHECK_ORDER", "1")
    m = nn.SyncBatchNorm(4)
    y = m(data(4))

    def step():
        if RANK == 0:
            m(data(4))
        else:
            m.backward(np.ones_like(y))
    all_raise(step)


@pytest.mark.mpi(min_size=2)
def test_one_rank_with_another_dtype():
    m = nn.SyncBatchNorm(2)
    x = data(2, dtype=np.float64 if RANK == 0 else np.float32)
    all_raise(lambda: m(x))


@pytest.mark.mpi(min_size=2)
def test_lazy_layers_that_materialize_with_different_sizes(monkeypatch):
    """A model whose lazy BatchNorm infers its size from data that differs between ranks."""
    monkeypatch.setenv("SYNCNORM_CHECK_ORDER", "1")
    m = nn.convert_sync_batchnorm(nn.Sequential(nn.LazyBatchNorm1d()))
    c = 3 if RANK == 0 else 5
    all_raise(lambda: m(data(c)))


@pytest.mark.mpi(min_size=4)
def test_trouble_in_one_subgroup_leaves_the_other_alone():
    mine, _ = dist.new_subgroups_by_enumeration([[0, 1], [2, 3]])
    a, b = nn.SyncBatchNorm(2, process_group=mine), nn.SyncBatchNorm(2, process_group=mine)
    x = data(2)
    a(x)  # one step in step: `a` and `b` are layers #0 and #1 of each group
    b(x)
    if RANK < 2:  # group [0, 1]: rank 1 skips `a`
        all_raise(lambda: (b if RANK == 1 else a)(x), comm=mine.comm)
    else:  # group [2, 3] trains on, exactly
        ref = nn.BatchNorm1d(2)
        both = np.concatenate([data(2, seed=2), data(2, seed=3)])
        y = a(x)
        np.testing.assert_allclose(y, ref(both)[(RANK - 2) * 3:(RANK - 1) * 3], rtol=1e-5, atol=1e-6)
        b(x)
    names = gathered("done")
    assert names == ["done"] * P


@pytest.mark.mpi(min_size=2)
def test_after_an_out_of_step_error_new_layers_work():
    """The error leaves the communicator usable: rebuilding the layers on every rank gives exact
    group statistics again (the group's layer numbering restarts after the error)."""
    a, b = nn.SyncBatchNorm(2), nn.SyncBatchNorm(2)
    a(data(2))
    all_raise(lambda: (b if RANK == 0 else a)(data(2)))
    fresh = nn.SyncBatchNorm(2)
    y = fresh(data(2))
    everyone = np.concatenate([data(2, seed=r) for r in range(P)])
    np.testing.assert_allclose(y, nn.BatchNorm1d(2)(everyone)[RANK * 3:(RANK + 1) * 3],
                               rtol=1e-5, atol=1e-6)


@pytest.mark.mpi(min_size=2)
def test_layers_built_on_one_rank_only_cost_nothing():
    """Rank 0 builds layers the others do not (a probe before the model, an evaluation copy after
    it) and uses them outside training: the shared layers train exactly, as layers are numbered by
    their first training use in the group, not by creation."""
    if RANK == 0:
        nn.SyncBatchNorm(2).eval()(data(2))
    shared = nn.Sequential(nn.SyncBatchNorm(2), nn.ReLU(), nn.SyncBatchNorm(2))
    if RANK == 0:
        nn.SyncBatchNorm(2)
    everyone = np.concatenate([data(2, seed=r) for r in range(P)])
    ref = nn.Sequential(nn.BatchNorm1d(2), nn.ReLU(), nn.BatchNorm1d(2))
    for _ in range(2):
        np.testing.assert_allclose(shared(data(2)), ref(everyone)[RANK * 3:(RANK + 1) * 3],
                                   rtol=1e-5, atol=1e-6)
