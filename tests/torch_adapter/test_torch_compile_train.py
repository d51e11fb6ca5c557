"""Training under torch.compile(fullgraph=True): the step is syncnorm's custom operators; a compiled
step equals the eager one bitwise at P = 1 and P = 2 (tests/support/mpi_workers/torch_compile_train.py).
Inductor (which compiles C++, about a minute per job on 2 busy cores) runs at P = 2; P = 1 uses the
aot_eager backend, which traces the same graph through the same operators without the C++ step.
The operators pass torch's own checks."""
from __future__ import annotations

import pytest

torch = pytest.importorskip("torch", reason="syncnorm.torch needs PyTorch (pip install 'syncnorm[torch]')")

from mpi_harness import run_mpi  # noqa: E402

from syncnorm.torch import SyncBatchNorm  # noqa: E402

WORKER = "tests/support/mpi_workers/torch_compile_train.py"


@pytest.mark.parametrize("nprocs,backend", [(1, "aot_eager"), (2, "inductor")])
def test_compiled_training_step_equals_eager(nprocs, backend):
    job = run_mpi(nprocs, [WORKER, backend], timeout=600, env={"OMP_NUM_THREADS": "1"}).check()
    for r in range(nprocs):
        assert f"COMPILED-TRAIN-OK rank {r}" in job.output, job.output[-3000:]


def test_operators_pass_torch_opcheck():
    """Schema, fake (meta) implementation, autograd registration and declared mutations, checked
    by torch.library.opcheck against the real operators."""
    m = SyncBatchNorm(3, dtype=torch.float64)
    x = torch.randn(4, 3, 5, dtype=torch.float64, requires_grad=True)
    w = m.weight.detach().clone().requires_grad_()
    b = m.bias.detach().clone().requires_grad_()
    key = m._op_key
    torch.library.opcheck(torch.ops.syncnorm.batch_norm_train.default,
                          (x, w, b, m.running_mean, key))
    with torch.no_grad():
        y, mean, var, invstd, count = torch.ops.syncnorm.batch_norm_train(x, w, b, m.running_mean, key)
    assert float(count) == 20 and torch.equal(y, m(x.detach()))
    torch.library.opcheck(torch.ops.syncnorm.batch_norm_train_backward.default,
                          (torch.randn_like(x), x.detach(), w.detach(), mean, invstd, count, key,
                           True, True, True))
    torch.library.opcheck(torch.ops.syncnorm.batch_norm_record.default,
                          (m.running_mean.clone(), m.running_var.clone(), m.num_batches_tracked.clone(),
                           mean, var, count, key))
