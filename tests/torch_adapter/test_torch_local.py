"""syncnorm.torch.SyncBatchNorm in one process (a world of size 1, no MPI) against torch's own
BatchNorm, finite differences and float64 truth; input checks. Multi-rank tests: test_torch_mpi.py."""
from __future__ import annotations

import copy
import io
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.usefixtures("kernel_engine")  # numpy and numba kernels

torch = pytest.importorskip("torch", reason="syncnorm.torch needs PyTorch (pip install 'syncnorm[torch]')")
from torch import nn  # noqa: E402

from syncnorm.torch import SyncBatchNorm, convert_sync_batchnorm  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
TORCH_BN = {2: nn.BatchNorm1d, 3: nn.BatchNorm1d, 4: nn.BatchNorm2d, 5: nn.BatchNorm3d}


def pair(ndim, C=3, dtype=torch.float64, **kw):
    """torch's BatchNorm*d and a SyncBatchNorm converted from a copy of it (random affine)."""
    ref = TORCH_BN[ndim](C, dtype=dtype, **kw)
    if ref.weight is not None:
        with torch.no_grad():
            ref.weight.uniform_(0.5, 1.5)
            if ref.bias is not None:
                ref.bias.normal_()
    return ref, convert_sync_batchnorm(copy.deepcopy(ref))


def run_both(ref, sync, x, dy):
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    ya, yb = sync(xa), ref(xb)
    ya.backward(dy)
    yb.backward(dy)
    return (ya, xa.grad), (yb, xb.grad)


# ------------------------------------------------------------------------------ numerics
@pytest.mark.parametrize("shape", [(6, 3), (4, 3, 5), (3, 3, 4, 5), (2, 3, 2, 3, 4)])
@pytest.mark.parametrize("mode", ["train", "eval", "eval_no_running_stats"])
def test_float64_equals_torch_batchnorm(shape, mode):
    torch.manual_seed(len(shape))
    kw = {"track_running_stats": False} if mode == "eval_no_running_stats" else {}
    ref, sync = pair(len(shape), **kw)
    for step in range(3):
        if mode != "train" and step == 2:
            ref.eval(), sync.eval()
        x = torch.randn(shape, dtype=torch.float64) * 2 + 1
        dy = torch.randn(shape, dtype=torch.float64)
        sync.zero_grad(), ref.zero_grad()
        (ya, dxa), (yb, dxb) = run_both(ref, sync, x, dy)
        torch.testing.assert_close(ya, yb, atol=1e-12, rtol=1e-12)
        torch.testing.assert_close(dxa, dxb, atol=1e-12, rtol=1e-12)
        for (n, p), q in zip(sync.named_parameters(), ref.parameters()):
            torch.testing.assert_close(p.grad, q.grad, atol=1e-11, rtol=1e-11, msg=n)
        for (n, b), c in zip(sync.named_buffers(), ref.buffers()):
            torch.testing.assert_close(b, c, atol=1e-12, rtol=1e-12, msg=n)


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 2e-6), (torch.float16, 2e-3),
                                       (torch.bfloat16, 2e-2)])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_reduced_precision_against_float64_truth(dtype, tol, layout):
    """Output and input gradient within the dtype's rounding of a float64 computation; same dtype
    and memory layout as the input; parameters and buffers stay float32."""
    torch.manual_seed(3)
    ref, sync = pair(4)
    sync.float()
    x64 = torch.randn(4, 3, 5, 6, dtype=torch.float64) * 3 + 2
    dy64 = torch.randn(4, 3, 5, 6, dtype=torch.float64)
    x, dy = x64.to(dtype), dy64.to(dtype)
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    x.requires_grad_()
    y = sync(x)
    assert y.dtype == dtype and y.stride() == x.stride()
    y.backward(dy)
    assert x.grad.dtype == dtype and sync.weight.grad.dtype == torch.float32
    x64 = x.detach().double().requires_grad_()  # the same (rounded) values in float64
    y64 = ref(x64)
    y64.backward(dy.double())
    torch.testing.assert_close(y.double(), y64, atol=tol * 4, rtol=tol)
    torch.testing.assert_close(x.grad.double(), x64.grad, atol=tol * 4, rtol=tol)
    torch.testing.assert_close(sync.running_var.double(), ref.running_var, atol=1e-6, rtol=1e-6)


def test_large_mean_small_spread_float32_is_exact_where_torch_is_not():
    """mean 1e4, std 1e-2 in float32: syncnorm's statistics are float64 shifted sums and its
    normalization subtracts the rounded mean first, so the output is within float32 rounding of
    float64 truth; torch's float32 BatchNorm is off by far more."""
    g = torch.Generator().manual_seed(0)
    x32 = (1e4 + 1e-2 * torch.randn(64, 2, 8, 8, dtype=torch.float64, generator=g)).float()
    truth = nn.functional.batch_norm(x32.double(), None, None, training=True, eps=1e-8)
    err = (SyncBatchNorm(2, eps=1e-8)(x32).double() - truth).abs().max().item()
    err_torch = (nn.BatchNorm2d(2, eps=1e-8)(x32).double() - truth).abs().max().item()
    assert err < 1e-5, err
    assert err_torch > 10 * err, (err_torch, err)


def test_other_strides_are_copied_once_and_give_the_same_result():
    torch.manual_seed(4)
    ref, sync = pair(4)
    big = torch.randn(4, 6, 5, 10, dtype=torch.float64)
    x = big[:, ::2, :, ::2]  # neither contiguous nor channels last
    assert not x.is_contiguous()
    dy = torch.randn(4, 3, 5, 5, dtype=torch.float64)
    (ya, dxa), (yb, dxb) = run_both(ref, sync, x, dy)
    torch.testing.assert_close(ya, yb, atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(dxa, dxb, atol=1e-12, rtol=1e-12)


def test_momentum_none_is_the_cumulative_average_and_counts_batches():
    torch.manual_seed(1)
    ref, sync = pair(3, momentum=None)
    for n in (2, 5, 3, 7):
        x = torch.randn(n, 3, 4, dtype=torch.float64) * 3 - 1
        ref(x), sync(x)
    assert int(sync.num_batches_tracked) == 4
    torch.testing.assert_close(sync.running_mean, ref.running_mean, atol=1e-13, rtol=1e-13)
    torch.testing.assert_close(sync.running_var, ref.running_var, atol=1e-13, rtol=1e-13)


def test_gradcheck_train_and_eval():
    torch.manual_seed(2)
    for training, track in ((True, True), (False, True), (False, False)):
        m = SyncBatchNorm(3, dtype=torch.float64, track_running_stats=track)
        with torch.no_grad():
            m.weight.uniform_(0.5, 1.5)
            m.bias.normal_()
        m.train(training)
        if training:  # running statistics change with every call: check the batch math only
            m.momentum = 0.0
        x = torch.randn(4, 3, 5, dtype=torch.float64, requires_grad=True)
        assert torch.autograd.gradcheck(lambda x, w, b: m(x), (x, m.weight, m.bias))


def test_requires_grad_false_everywhere_runs_forward_only():
    m = SyncBatchNorm(3)
    for p in m.parameters():
        p.requires_grad_(False)
    y = m(torch.randn(4, 3))
    assert y.grad_fn is None and not y.requires_grad


def test_double_backward_is_refused_clearly():
    m = SyncBatchNorm(3, dtype=torch.float64)
    x = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    (g,) = torch.autograd.grad(m(x).pow(2).sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match="once_differentiable|does not require grad|double"):
        g.sum().backward()


def test_empty_batch_in_one_process_changes_nothing():
    m = SyncBatchNorm(3)
    before = copy.deepcopy(m.state_dict())
    x = torch.zeros(0, 3, 4, requires_grad=True)
    y = m(x)
    y.sum().backward()
    assert y.shape == (0, 3, 4) and x.grad.shape == (0, 3, 4)
    assert torch.count_nonzero(m.weight.grad) == 0
    for k, v in m.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_state_dict_is_torch_compatible_both_ways():
    ref, sync = pair(4)
    ref(torch.randn(4, 3, 2, 2, dtype=torch.float64))
    sync2 = SyncBatchNorm(3, dtype=torch.float64)
    sync2.load_state_dict(ref.state_dict())
    back = nn.BatchNorm2d(3, dtype=torch.float64)
    back.load_state_dict(sync2.state_dict())
    for k, v in back.state_dict().items():
        assert torch.equal(v, ref.state_dict()[k]), k


def test_deepcopy_pickle_and_repr():
    m = SyncBatchNorm(4, momentum=None, bias=False)
    m(torch.randn(3, 4))
    c = copy.deepcopy(m)
    assert c._exchange is None and torch.equal(c.running_var, m.running_var)
    c(torch.randn(3, 4))  # the copy trains on its own
    buf = io.BytesIO()
    torch.save(m, buf)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=False)
    assert torch.equal(loaded.running_mean, m.running_mean) and loaded.bias is None
    assert repr(m) == ("SyncBatchNorm(4, eps=1e-05, momentum=None, affine=True, bias=False, "
                       "track_running_stats=True)")


# ------------------------------------------------------------------------------ bad input
def test_bad_inputs_raise_clear_errors():
    m = SyncBatchNorm(3)
    with pytest.raises(ValueError, match=r"expected at least 2D input \(got 1D input\)"):
        m(torch.randn(3))
    with pytest.raises(ValueError, match=r"expected input with 3 channels \(shape \(N, 3, \.\.\.\)\), got "
                                         r"input of shape \(2, 4, 5\)"):
        m(torch.randn(2, 4, 5))
    with pytest.raises(ValueError, match="number of input channels should be non-zero"):
        SyncBatchNorm(0)(torch.randn(2, 0, 5))
    with pytest.raises(TypeError, match=r"expected a floating-point tensor .* got dtype torch.int64"):
        m(torch.ones(2, 3, dtype=torch.int64))
    with pytest.raises(TypeError, match="got dtype torch.complex64"):
        m(torch.ones(2, 3, dtype=torch.complex64))
    with pytest.raises(TypeError, match="expected a torch.Tensor, got ndarray"):
        m(np.ones((2, 3), np.float32))
    with pytest.raises(ValueError, match="works on CPU tensors, got a tensor on meta"):
        m(torch.empty(2, 3, device="meta"))
    with pytest.raises(ValueError, match=r"Expected more than 1 value per channel when training, got "
                                         r"input size \(1, 3\)$"):
        m(torch.randn(1, 3))
    with pytest.raises(ValueError, match="Expected more than 1 value per channel"):
        SyncBatchNorm(3, track_running_stats=False).eval()(torch.randn(1, 3))
    SyncBatchNorm(3).eval()(torch.randn(1, 3))  # eval with running statistics: fine


def test_converted_layers_keep_their_input_dimension_check():
    m = convert_sync_batchnorm(nn.BatchNorm2d(3))
    with pytest.raises(ValueError, match=r"expected 4D input \(got 3D input\)"):
        m(torch.randn(2, 3, 4))
    m1 = convert_sync_batchnorm(nn.BatchNorm1d(3))
    with pytest.raises(ValueError, match=r"expected 2D or 3D input \(got 4D input\)"):
        m1(torch.randn(2, 3, 4, 4))


def test_bad_process_group_is_refused_at_construction():
    with pytest.raises(TypeError, match="process_group must be a syncnorm ProcessGroup, an mpi4py "
                                        "communicator, a torch.distributed group or None; got str"):
        SyncBatchNorm(3, process_group="world")
    with pytest.raises(TypeError, match="process_group must be"):
        convert_sync_batchnorm(nn.BatchNorm1d(3), process_group=3)


def test_a_torch_distributed_group_is_accepted(tmp_path):
    import torch.distributed as tdist
    tdist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        m = SyncBatchNorm(3, process_group=tdist.group.WORLD)
        m(torch.randn(4, 3))
        assert m._exchange.group.backend == "torch" and m._exchange.group.size == 1
        d = SyncBatchNorm(3)
        d(torch.randn(4, 3))  # None in a plain process with torch initialized: torch's world of 1
        assert d._exchange.group.backend == "torch"
    finally:
        tdist.destroy_process_group()


def test_torchrun_style_job_without_mpi_synchronizes_over_torch(tmp_path):
    """Two processes with a torch.distributed world of 2 and no MPI launcher: process_group=None is
    torch's default group, and each rank normalizes with the statistics of both batches."""
    script = tmp_path / "torchrun_like.py"
    script.write_text(textwrap.dedent(f"""
        import sys, torch, torch.distributed as tdist
        from syncnorm.torch import SyncBatchNorm
        rank = int(sys.argv[1])
        tdist.init_process_group("gloo", init_method="file://{tmp_path / 'store'}", rank=rank,
                                 world_size=2)
        both = torch.arange(24, dtype=torch.float64).reshape(8, 3) ** 1.5
        y = SyncBatchNorm(3).double()(both[4 * rank:4 * rank + 4])
        ref = torch.nn.BatchNorm1d(3).double()(both)[4 * rank:4 * rank + 4]
        print("SYNCED" if torch.allclose(y, ref, atol=1e-12) else "NOT SYNCED", flush=True)
        print("mpi4py loaded:", "mpi4py.MPI" in sys.modules, flush=True)
        tdist.barrier()
        tdist.destroy_process_group()
    """))
    env = {"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", "GLOO_SOCKET_IFNAME": "lo",
           "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen([sys.executable, str(script), str(r)], stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, env=env) for r in (0, 1)]
    outs = []
    try:
        for p in procs:
            outs.append(p.communicate(timeout=120)[0])
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for out in outs:
        assert "SYNCED\nmpi4py loaded: False" in out, out
