"""syncnorm.torch.SyncBatchNorm on 4 ranks against the results of PyTorch's own nn.SyncBatchNorm on
CUDA (tests/data/golden, README.md there): every case, every step, every rank."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from mpi4py import MPI  # noqa: E402

from syncnorm import distributed as dist  # noqa: E402
from syncnorm.torch import SyncBatchNorm, convert_sync_batchnorm  # noqa: E402

torch.set_num_threads(1)
P, RANK = MPI.COMM_WORLD.Get_size(), MPI.COMM_WORLD.Get_rank()
GOLDEN = Path(__file__).resolve().parents[2] / "data" / "golden"
CASES = json.loads((GOLDEN / "cases.json").read_text())["cases"]


def t(d, key):
    return torch.from_numpy(np.ascontiguousarray(d[key]))


@pytest.mark.mpi(min_size=4)
@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_against_pytorch_cuda_syncbatchnorm(case):
    if P != 4:
        pytest.skip("the golden files were recorded with 4 ranks")
    d = np.load(GOLDEN / f"{case['name']}.npz", allow_pickle=False)
    group = dist.new_subgroups_by_enumeration(case["groups"])[0] if case["groups"] else None
    layer = getattr(torch.nn, case["layer"])(case["C"], **case["kw"])
    m = convert_sync_batchnorm(torch.nn.Sequential(layer), group)[0]
    assert isinstance(m, SyncBatchNorm)
    if m.affine:
        with torch.no_grad():
            m.weight.copy_(t(d, "init/weight"))
            m.bias.copy_(t(d, "init/bias"))
    r = RANK
    for s in range(case["steps"]):
        k = f"r{r}/s{s}"
        m.zero_grad(set_to_none=True)
        x = t(d, k + "/x").requires_grad_()
        y = m(x)
        torch.testing.assert_close(y, t(d, k + "/y"), atol=2e-5, rtol=1e-5, msg=f"{k} y")
        y.backward(t(d, k + "/dy"))
        torch.testing.assert_close(x.grad, t(d, k + "/dx"), atol=2e-5, rtol=1e-4, msg=f"{k} dx")
        if m.affine:
            for name, got in (("dweight", m.weight.grad), ("dbias", m.bias.grad)):
                ref = d[f"{k}/{name}"]
                scale = 1 + np.abs(ref).max()
                assert np.abs(got.numpy() - ref).max() <= 1e-5 * scale, f"{k} {name}"
    torch.testing.assert_close(m.running_mean, t(d, f"r{r}/running_mean"), atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(m.running_var, t(d, f"r{r}/running_var"), atol=1e-6, rtol=1e-5)
    assert int(m.num_batches_tracked) == int(d[f"r{r}/num_batches_tracked"])
    m.eval()
    torch.testing.assert_close(m(t(d, f"r{r}/eval_x")), t(d, f"r{r}/eval_y"), atol=2e-5, rtol=1e-5)
