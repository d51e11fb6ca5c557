"""BatchNorm1d/2d/3d against torch 2.13 CPU reference vectors, finite differences, float64."""
from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest

from family_reference import numeric_grad
from syncnorm import nn

pytestmark = pytest.mark.usefixtures("kernel_engine")  # numpy and numba kernels

DATA = np.load(Path(__file__).resolve().parents[1] / "data" / "bn_refs.npz", allow_pickle=False)
CASES = json.loads(str(DATA["cases"]))
TOL = {"float16": (2e-2, 2e-2), "float32": (2e-5, 1e-4), "float64": (1e-10, 1e-9)}


def _close(a, b, dtype, what):
    atol, rtol = TOL[dtype]
    scale = max(1.0, float(np.abs(b.astype(np.float64)).max(initial=0)))
    err = float(np.abs(a.astype(np.float64) - b.astype(np.float64)).max(initial=0))
    assert err <= atol * scale + rtol * scale, f"{what}: max |diff| {err:.3g} (scale {scale:.3g})"


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_against_torch(case):
    name, dtype = case["name"], case["dtype"]
    m = getattr(nn, case["cls"])(case["shape"][1], dtype=case["param_dtype"], **case["kw"])
    if m.affine:
        m.weight.data[...] = DATA[f"{name}/init/weight"]
        m.bias.data[...] = DATA[f"{name}/init/bias"]
    for s in list(range(case["steps"])) + ["e"]:
        k = f"{name}/s{s}"
        m.train(s != "e")
        m.zero_grad()
        y = m(DATA[k + "/x"])
        assert y.dtype == np.dtype(dtype) and y.shape == tuple(case["shape"])
        _close(y, DATA[k + "/y"], dtype, f"{k} output")
        dx = m.backward(DATA[k + "/dy"])
        assert dx.dtype == np.dtype(dtype)
        _close(dx, DATA[k + "/dx"], dtype, f"{k} input grad")
        if m.affine:
            _close(m.weight.grad, DATA[k + "/dweight"], dtype, f"{k} weight grad")
            _close(m.bias.grad, DATA[k + "/dbias"], dtype, f"{k} bias grad")
        if m.track_running_stats:
            _close(m.running_mean, DATA[k + "/running_mean"], dtype, f"{k} running_mean")
            _close(m.running_var, DATA[k + "/running_var"], dtype, f"{k} running_var")
            assert int(m.num_batches_tracked) == int(DATA[k + "/num_batches_tracked"])
    # the module's state_dict has torch's keys and values
    sd = m.state_dict()
    torch_keys = [k.split("/state/")[1] for k in DATA.files if k.startswith(f"{name}/state/")]
    assert sorted(sd) == sorted(torch_keys)
    for key in torch_keys:
        _close(sd[key], DATA[f"{name}/state/{key}"], dtype, f"state {key}")


def test_load_state_dict_from_torch_arrays():
    case = next(c for c in CASES if c["name"] == "bn2d")
    sd = {k.split("/state/")[1]: DATA[k] for k in DATA.files if k.startswith("bn2d/state/")}
    m = nn.BatchNorm2d(case["shape"][1])
    m.load_state_dict(sd)
    for k, v in sd.items():
        np.testing.assert_array_equal(m.state_dict()[k], v)
    m.eval()
    x = DATA["bn2d/se/x"]
    np.testing.assert_allclose(m(x), DATA["bn2d/se/y"], atol=2e-5, rtol=1e-4)


# ----------------------------------------------------------------------- float64 ground truth
def _bn_float64(x, w, b, eps):
    axes = (0,) + tuple(range(2, x.ndim))
    x = x.astype(np.float64)
    mean = x.mean(axis=axes, keepdims=True)
    var = ((x - mean) ** 2).mean(axis=axes, keepdims=True)
    sh = (1, -1) + (1,) * (x.ndim - 2)
    return (x - mean) / np.sqrt(var + eps) * w.reshape(sh) + b.reshape(sh)


def test_large_mean_accuracy_float32():
    """float32 data with mean 1000 and std 0.01 normalizes within 1e-4 of float64."""
    rng = np.random.default_rng(0)
    x = (1000 + 0.01 * rng.standard_normal((16, 8, 12, 12))).astype(np.float32)
    m = nn.BatchNorm2d(8)
    y = m(x)
    ref = _bn_float64(x, np.ones(8), np.zeros(8), 1e-5)
    assert np.abs(y - ref).max() < 1e-4
    # the gradient too: compare with float64 module on the same (float32-representable) data
    dy = rng.standard_normal(x.shape).astype(np.float32)
    dx = m.backward(dy)
    m64 = nn.BatchNorm2d(8, dtype=np.float64)
    m64(x.astype(np.float64))
    dx64 = m64.backward(dy.astype(np.float64))
    assert np.abs(dx - dx64).max() / np.abs(dx64).max() < 1e-4


@pytest.mark.parametrize("mean,std", [(1e4, 1e-3), (-3e3, 0.5), (0.0, 1e-6)])
def test_extreme_means_float64_exact(mean, std):
    rng = np.random.default_rng(1)
    x = mean + std * rng.standard_normal((8, 3, 7))
    y = nn.BatchNorm1d(3, eps=0.0, dtype=np.float64)(x)
    ref = _bn_float64(x, np.ones(3), np.zeros(3), 0.0)
    assert np.abs(y - ref).max() < 1e-7


# ----------------------------------------------------------------------- finite differences
@pytest.mark.parametrize("cls,shape,training,track", [
    (nn.BatchNorm1d, (5, 3), True, True), (nn.BatchNorm1d, (4, 2, 3), True, True),
    (nn.BatchNorm2d, (3, 2, 2, 3), True, True), (nn.BatchNorm3d, (2, 2, 2, 2, 3), True, True),
    (nn.BatchNorm2d, (3, 2, 2, 2), False, True), (nn.BatchNorm2d, (3, 2, 2, 2), False, False)])
def test_gradients_match_finite_differences(cls, shape, training, track):
    rng = np.random.default_rng(3)
    m = cls(shape[1], dtype=np.float64, track_running_stats=track)
    m.weight.data[...] = rng.uniform(0.5, 1.5, shape[1])
    m.bias.data[...] = rng.normal(size=shape[1])
    if track:
        m.running_mean[...] = rng.normal(size=shape[1])
        m.running_var[...] = rng.uniform(0.5, 2, shape[1])
    m.train(training)
    x = rng.normal(size=shape)
    dy = rng.normal(size=shape)
    bufs = {k: v.copy() for k, v in m.named_buffers()}

    def restore():  # a training forward updates the running stats; undo it
        for k, v in m.named_buffers():
            v[...] = bufs[k]

    def loss():
        restore()
        out = float((m(x) * dy).sum())
        m._cache = None
        return out

    restore()
    m(x)
    dx = m.backward(dy)
    gw, gb = m.weight.grad.copy(), m.bias.grad.copy()
    np.testing.assert_allclose(dx, numeric_grad(loss, x), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(gw, numeric_grad(loss, m.weight.data), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(gb, numeric_grad(loss, m.bias.data), rtol=1e-5, atol=1e-7)


# ----------------------------------------------------------------------- semantics
def test_grads_accumulate_and_zero_grad_sets_none():
    m = nn.BatchNorm1d(3)
    x = np.random.default_rng(0).normal(size=(6, 3)).astype(np.float32)
    dy = np.ones_like(x) + x
    m(x)
    m.backward(dy)
    g1 = m.weight.grad.copy()
    m(x)
    m.backward(dy)
    np.testing.assert_allclose(m.weight.grad, 2 * g1, rtol=1e-5)
    m.zero_grad()
    assert m.weight.grad is None and m.bias.grad is None


def test_track_running_stats_false_has_no_buffers_and_uses_batch_stats_in_eval():
    m = nn.BatchNorm2d(2, track_running_stats=False)
    assert list(m.state_dict()) == ["weight", "bias"]
    x = np.random.default_rng(0).normal(3, 2, size=(4, 2, 3, 3)).astype(np.float32)
    m.eval()
    y = m(x)
    assert np.abs(y.mean(axis=(0, 2, 3))).max() < 1e-5


def test_affine_false_has_no_parameters():
    m = nn.BatchNorm1d(4, affine=False)
    assert list(m.parameters()) == [] and m.weight is None
    assert list(m.state_dict()) == ["running_mean", "running_var", "num_batches_tracked"]


def test_empty_batch_gives_empty_output_and_no_update():
    m = nn.BatchNorm2d(3)
    y = m(np.zeros((0, 3, 2, 2), np.float32))
    assert y.shape == (0, 3, 2, 2)
    assert int(m.num_batches_tracked) == 0 and np.all(m.running_var == 1)
    assert m.backward(np.zeros((0, 3, 2, 2), np.float32)).shape == (0, 3, 2, 2)


def test_repr_like_torch():
    assert repr(nn.BatchNorm2d(3)) == \
        "BatchNorm2d(3, eps=1e-05, momentum=0.1, affine=True, bias=True, track_running_stats=True)"
    assert repr(nn.Sequential(nn.BatchNorm1d(2, momentum=None))) == (
        "Sequential(\n  (0): BatchNorm1d(2, eps=1e-05, momentum=None, affine=True, bias=True, "
        "track_running_stats=True)\n)")
    assert repr(nn.SyncBatchNorm(2, affine=False)) == (
        "SyncBatchNorm(2, eps=1e-05, momentum=0.1, affine=False, bias=False, track_running_stats=True)")


def test_bias_false_like_torch_2_13():
    m = nn.BatchNorm2d(3, bias=False)
    assert m.bias is None and list(m.state_dict()) == ["weight", "running_mean", "running_var",
                                                       "num_batches_tracked"]
    x = np.random.default_rng(0).normal(size=(4, 3, 2, 2)).astype(np.float32)
    m.backward(np.ones_like(m(x)))
    assert m.weight.grad is not None


def test_state_dict_round_trip_and_versioned_upgrade():
    rng = np.random.default_rng(0)
    a = nn.Sequential(nn.BatchNorm2d(3), nn.ModuleList([nn.BatchNorm1d(2)]))
    for _ in range(3):
        a[0](rng.normal(size=(4, 3, 2, 2)).astype(np.float32))
    sd = a.state_dict()
    assert list(sd) == ["0.weight", "0.bias", "0.running_mean", "0.running_var",
                        "0.num_batches_tracked", "1.0.weight", "1.0.bias", "1.0.running_mean",
                        "1.0.running_var", "1.0.num_batches_tracked"]
    b = nn.Sequential(nn.BatchNorm2d(3), nn.ModuleList([nn.BatchNorm1d(2)]))
    b.load_state_dict(sd)
    for k, v in b.state_dict().items():
        np.testing.assert_array_equal(v, sd[k])
    # a plain dict (no version metadata) without num_batches_tracked loads, like torch's v1 dicts
    old = {k: v for k, v in sd.items() if "num_batches_tracked" not in k}
    nn.Sequential(nn.BatchNorm2d(3), nn.ModuleList([nn.BatchNorm1d(2)])).load_state_dict(old)


# ----------------------------------------------------------------------- errors, by message
@pytest.mark.parametrize("cls,shape,msg", [
    (nn.BatchNorm1d, (2, 3, 4, 5), "expected 2D or 3D input (got 4D input)"),
    (nn.BatchNorm1d, (3,), "expected 2D or 3D input (got 1D input)"),
    (nn.BatchNorm2d, (2, 3, 4), "expected 4D input (got 3D input)"),
    (nn.BatchNorm3d, (2, 3, 4, 4), "expected 5D input (got 4D input)"),
])
def test_input_dimension_errors(cls, shape, msg):
    with pytest.raises(ValueError, match=msg.replace("(", r"\(").replace(")", r"\)")):
        cls(3)(np.zeros(shape, np.float32))


def test_more_than_one_value_per_channel():
    with pytest.raises(ValueError, match="Expected more than 1 value per channel when training"):
        nn.BatchNorm1d(3)(np.zeros((1, 3), np.float32))
    m = nn.BatchNorm1d(3).eval()
    m(np.zeros((1, 3), np.float32))  # eval uses running stats: fine


def test_channel_and_dtype_errors():
    with pytest.raises(ValueError, match=r"expected input with 3 channels .* got input of shape \(2, 4, 5\)"):
        nn.BatchNorm1d(3)(np.zeros((2, 4, 5), np.float32))
    with pytest.raises(ValueError, match="number of input channels should be non-zero"):
        nn.BatchNorm1d(0)(np.zeros((2, 0), np.float32))
    for dt in (np.int32, np.bool_, np.complex64, object):
        with pytest.raises(TypeError, match=f"expected a floating-point input .* got dtype"):
            nn.BatchNorm1d(2)(np.zeros((3, 2), dt))


def test_backward_errors():
    m = nn.BatchNorm1d(2)
    with pytest.raises(RuntimeError, match="backward\\(\\) called without a forward"):
        m.backward(np.zeros((3, 2), np.float32))
    m(np.ones((3, 2), np.float32) * np.arange(3)[:, None])
    with pytest.raises(ValueError, match=r"expected grad_output of shape \(3, 2\) .* got \(2, 2\)"):
        m.backward(np.zeros((2, 2), np.float32))
    # a failed backward used up the forward (a SyncBatchNorm has joined its collective by then)
    with pytest.raises(RuntimeError, match="without a forward"):
        m.backward(np.zeros((3, 2), np.float32))
    m(np.ones((3, 2), np.float32) * np.arange(3)[:, None])
    m.backward(np.zeros((3, 2), np.float32))
    with pytest.raises(RuntimeError, match="or twice for one forward"):
        m.backward(np.zeros((3, 2), np.float32))


def test_load_state_dict_errors_change_nothing():
    m = nn.BatchNorm1d(2)
    before = m.state_dict()
    good = {k: v + 1 for k, v in before.items()}
    bad = dict(good, running_var=np.ones(3, np.float32))
    with pytest.raises(nn.StateDictError, match="size mismatch for running_var: copying a param "
                       r"with shape \(3,\) from checkpoint, the shape in current model is \(2,\)"):
        m.load_state_dict(bad)
    for k, v in m.state_dict().items():
        np.testing.assert_array_equal(v, before[k])
    with pytest.raises(nn.StateDictError, match='Missing key\\(s\\) in state_dict: "bias"'):
        m.load_state_dict({k: v for k, v in good.items() if k != "bias"})
    with pytest.raises(nn.StateDictError, match='Unexpected key\\(s\\) in state_dict: "extra"'):
        m.load_state_dict(dict(good, extra=np.zeros(1)))
    with pytest.raises(nn.StateDictError, match="weight: expected a real numeric array"):
        m.load_state_dict(dict(good, weight=np.array(["a", "b"])))
    for k, v in m.state_dict().items():
        np.testing.assert_array_equal(v, before[k])
    res = m.load_state_dict(dict(good, extra=np.zeros(1)), strict=False)
    assert res.unexpected_keys == ["extra"] and res.missing_keys == []


def test_load_state_dict_refuses_values_the_cast_would_not_keep():
    """numpy would wrap 2**63 into int64 and turn 1e39 into inf in float32 (with only a warning):
    refused, nothing loaded; values at the edge of the range, inf and NaN load as they are."""
    m = nn.BatchNorm1d(2)
    before = {k: v.copy() for k, v in m.state_dict().items()}
    for key, value, msg in [
            ("num_batches_tracked", np.array(2.0 ** 63), r"num_batches_tracked: values from "
             r"9.223372036854776e\+18 to 9.223372036854776e\+18 do not fit int64"),
            ("num_batches_tracked", np.array(2 ** 64 - 1, np.uint64), "do not fit int64"),
            ("num_batches_tracked", np.array(-1e19), "do not fit int64"),
            ("weight", np.array([1.0, -1e39]), r"weight: finite values up to 1e\+39 in magnitude "
             r"would become inf in float32 \(largest 3.40282e\+38\)")]:
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # and no numpy cast warning on the way
            with pytest.raises(nn.StateDictError, match=msg):
                m.load_state_dict(dict(before, **{key: value}))
        for k, v in m.state_dict().items():
            np.testing.assert_array_equal(v, before[k])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        m.load_state_dict(dict(before, num_batches_tracked=np.array(2 ** 63 - 1, np.uint64),
                               running_var=np.array([np.inf, np.nan]),
                               weight=np.array([3.4e38, -3.4e38])))
    assert m.num_batches_tracked == 2 ** 63 - 1
    assert np.isinf(m.running_var[0]) and np.isnan(m.running_var[1])
    h = nn.BatchNorm1d(2, dtype=np.float16)
    h.load_state_dict(dict(h.state_dict(), running_var=np.array([65519.0, 1.0])))  # rounds to 65504
    assert h.running_var[0] == 65504
    with pytest.raises(nn.StateDictError, match="would become inf in float16 \\(largest 65504\\)"):
        h.load_state_dict(dict(h.state_dict(), running_var=np.array([65520.0, 1.0])))


def test_a_nan_running_mean_does_not_poison_a_finite_batch():
    m = nn.BatchNorm2d(2)
    m.running_mean[...] = [np.nan, np.inf]  # e.g. loaded from a diverged run
    x = np.random.default_rng(0).normal(5, 2, (4, 2, 3, 3)).astype(np.float32)
    y = m(x)
    assert np.isfinite(y).all()
    np.testing.assert_allclose(y, nn.BatchNorm2d(2)(x), atol=1e-5)
