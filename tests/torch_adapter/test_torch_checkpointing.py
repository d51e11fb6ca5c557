"""Activation checkpointing (torch.utils.checkpoint, reentrant and non-reentrant): the recomputed
forward reuses the first forward's group statistics: one exchange forward and one backward per
layer, running statistics updated once, gradients bitwise those of the plain step
(tests/support/mpi_workers/torch_checkpoint.py, which counts the real Allreduce calls on 2 ranks,
and checks that a recomputation that differs on some ranks only raises RanksOutOfStepError)."""
from __future__ import annotations

import pytest

torch = pytest.importorskip("torch", reason="syncnorm.torch needs PyTorch (pip install 'syncnorm[torch]')")

from mpi_harness import run_mpi  # noqa: E402

from syncnorm.torch import SyncBatchNorm  # noqa: E402
from syncnorm.torch._recompute import MAX_ENTRIES  # noqa: E402

WORKER = "tests/support/mpi_workers/torch_checkpoint.py"


@pytest.mark.parametrize("nprocs", [1, 2])
def test_checkpointed_step_equals_plain_step_with_one_exchange_each_way(nprocs):
    job = run_mpi(nprocs, [WORKER], timeout=300, env={"OMP_NUM_THREADS": "1"}).check()
    for r in range(nprocs):
        assert f"CHECKPOINT-OK rank {r}" in job.output, job.output[-3000:]


def test_forwards_without_backward_keep_a_bounded_stash():
    m = SyncBatchNorm(3)
    with torch.no_grad():
        for _ in range(MAX_ENTRIES + 5):
            m(torch.randn(4, 3))
    assert len(m._stash) == MAX_ENTRIES
    x = torch.randn(4, 3, requires_grad=True)
    m(x).sum().backward()  # the oldest entry made room; the step's backward dropped its own
    assert len(m._stash) == MAX_ENTRIES - 1


def test_a_forward_inside_backward_on_other_data_is_a_step_of_its_own():
    """Only a forward that saw the very same input is reused: another input in a backward hook
    gets its own exchange and running-statistics update."""
    m = SyncBatchNorm(3, dtype=torch.float64)
    x = torch.randn(5, 3, dtype=torch.float64, requires_grad=True)
    other = torch.randn(6, 3, dtype=torch.float64)
    seen = []
    y = m(x)
    y.register_hook(lambda g: seen.append(m(other)) or g)
    y.sum().backward()
    assert int(m.num_batches_tracked) == 2 and m._exchange.forward_calls == 2
    ref = torch.nn.functional.batch_norm(other, None, None, m.weight, m.bias, True)
    torch.testing.assert_close(seen[0], ref, atol=1e-12, rtol=1e-12)
