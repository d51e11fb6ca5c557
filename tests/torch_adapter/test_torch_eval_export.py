"""A converted model in eval is torch's own model: bitwise torch.nn.BatchNorm*d eagerly, and it
exports (torch.export), scripts (torch.jit.script, saved and loaded), traces and compiles
(torch.compile fullgraph=True) without revert. torch.save/load and state_dict round trips."""
from __future__ import annotations

import copy
import io

import pytest

torch = pytest.importorskip("torch", reason="syncnorm.torch needs PyTorch (pip install 'syncnorm[torch]')")
from torch import nn  # noqa: E402

from syncnorm.torch import SyncBatchNorm, convert_sync_batchnorm, revert_sync_batchnorm  # noqa: E402

# torch 2.13 deprecates TorchScript (it still works, and is tested here for the users who use it)
pytestmark = pytest.mark.filterwarnings("ignore:.*torch.jit.* is deprecated:DeprecationWarning")


def trained_pair(track: bool = True, dtype=torch.float32):
    """A Conv-BN-ReLU-BN1d model trained two steps in torch, and its converted copy."""
    torch.manual_seed(0)
    ref = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1, bias=False),
                        nn.BatchNorm2d(6, track_running_stats=track), nn.ReLU(),
                        nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.BatchNorm1d(24, track_running_stats=track),
                        ).to(dtype)
    with torch.no_grad():
        for bn in (ref[1], ref[5]):
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.normal_()
    for _ in range(2):
        ref(torch.randn(5, 3, 8, 8, dtype=dtype) * 2 + 1)
    sync = convert_sync_batchnorm(copy.deepcopy(ref))
    return ref.eval(), sync.eval()


@pytest.mark.parametrize("track", [True, False], ids=["running_stats", "no_running_stats"])
def test_eval_is_bitwise_torch_and_scripts_traces_exports(track):
    ref, sync = trained_pair(track)
    x = torch.randn(4, 3, 8, 8) * 3 - 1
    want = ref(x)
    assert torch.equal(sync(x), want)
    scripted = torch.jit.script(sync)
    buf = io.BytesIO()
    torch.jit.save(scripted, buf)
    buf.seek(0)
    assert torch.equal(torch.jit.load(buf)(x), want)
    assert torch.equal(torch.jit.trace(sync, x)(x), want)
    exported = torch.export.export(sync, (x,))
    assert torch.equal(exported.module()(x), want)
    assert isinstance(sync[1], SyncBatchNorm)  # nothing was reverted


def test_eval_gradients_are_torchs():
    ref, sync = trained_pair()
    x = torch.randn(4, 3, 8, 8)
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    sync(xa).square().sum().backward()
    ref(xb).square().sum().backward()
    assert torch.equal(xa.grad, xb.grad)
    for (n, p), q in zip(sync.named_parameters(), ref.parameters()):
        assert torch.equal(p.grad, q.grad), n


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_eval_other_dtypes_and_channels_last(dtype):
    """float16/bfloat16 input with float32 parameters is torch's mixed-precision kernel (bitwise);
    torch refuses float64 input with float32 parameters, syncnorm casts the parameters."""
    ref, sync = trained_pair()
    x = (torch.randn(4, 6, 5, 5) * 2).to(dtype).contiguous(memory_format=torch.channels_last)
    y = sync[1](x)
    assert y.dtype == dtype and y.is_contiguous(memory_format=torch.channels_last)
    want = ref[1].to(torch.float64)(x) if dtype == torch.float64 else ref[1](x)
    assert torch.equal(y, want)


def test_scripted_model_refuses_training_clearly():
    _, sync = trained_pair()
    scripted = torch.jit.script(sync)
    scripted.train()
    with pytest.raises(Exception, match="ignored and cannot be run"):
        scripted(torch.randn(4, 3, 8, 8))


def test_compile_fullgraph_in_eval_equals_compiled_torch():
    """Both graphs are torch's batch norm: the compiled converted model equals the compiled torch
    model bitwise (inductor fuses the normalization, so both differ from eager by rounding)."""
    ref, sync = trained_pair()
    x = torch.randn(4, 3, 8, 8)
    got = torch.compile(sync, fullgraph=True)(x)
    assert torch.equal(got, torch.compile(ref, fullgraph=True)(x))
    torch.testing.assert_close(got, ref(x), atol=1e-5, rtol=1e-5)


def test_save_load_whole_model_and_state_dicts_round_trip():
    ref, sync = trained_pair()
    buf = io.BytesIO()
    torch.save(sync, buf)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=False)
    x = torch.randn(3, 3, 8, 8)
    assert isinstance(loaded[1], SyncBatchNorm) and torch.equal(loaded(x), ref(x))
    loaded.train()
    loaded(x)  # trains: its own exchange and operator key
    assert loaded[1]._op_key != sync[1]._op_key
    fresh = convert_sync_batchnorm(copy.deepcopy(ref))
    fresh.load_state_dict(ref.state_dict())   # torch -> syncnorm
    back = copy.deepcopy(ref)
    back.load_state_dict(sync.state_dict())   # syncnorm -> torch
    assert sync.state_dict().keys() == ref.state_dict().keys()
    for k, v in back.state_dict().items():
        assert torch.equal(v, ref.state_dict()[k]) and torch.equal(fresh.state_dict()[k], v), k
    assert torch.equal(revert_sync_batchnorm(fresh)(x), ref(x))
