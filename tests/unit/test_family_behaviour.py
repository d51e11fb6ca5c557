"""Semantics of the family beyond the reference vectors: torch's documented equivalences, dtypes and
large-mean accuracy, InstanceNorm's running statistics, empty batches, bad input, reprs."""
from __future__ import annotations

import warnings

import numpy as np
import pytest

from family_reference import group_norm_ref, layer_norm_ref, lrn_ref
from syncnorm import nn

pytestmark = pytest.mark.usefixtures("kernel_engine")  # numpy and numba kernels

RNG = np.random.default_rng(11)


def _rand(shape, mean=0.0, std=1.0, dtype=np.float64):
    return RNG.normal(mean, std, shape).astype(dtype)


def _run(m, x, dy):
    m.zero_grad()
    y = m(x)
    return y, m.backward(dy)


# --------------------------------------------------------------------------- equivalences
def test_group_norm_with_one_group_per_channel_is_instance_norm():
    C = 5
    gn = nn.GroupNorm(C, C, dtype=np.float64)
    inn = nn.InstanceNorm2d(C, affine=True, dtype=np.float64)
    w, b = _rand(C), _rand(C)
    for m in (gn, inn):
        m.weight.data[...] = w
        m.bias.data[...] = b
    x, dy = _rand((3, C, 4, 6), 2.0, 3.0), _rand((3, C, 4, 6))
    y1, dx1 = _run(gn, x, dy)
    y2, dx2 = _run(inn, x, dy)
    np.testing.assert_allclose(y1, y2, rtol=0, atol=1e-13)
    np.testing.assert_allclose(dx1, dx2, rtol=0, atol=1e-12)
    np.testing.assert_allclose(gn.weight.grad, inn.weight.grad, rtol=1e-13, atol=1e-12)
    np.testing.assert_allclose(gn.bias.grad, inn.bias.grad, rtol=1e-13, atol=1e-12)


@pytest.mark.parametrize("shape, G", [((1, 4), 4), ((5, 4), 4), ((3, 2, 1, 1), 2)])
def test_group_norm_refuses_groups_of_one_value_at_any_batch_size(shape, G):
    """torch raises only for shape (1, 4) here and returns the bias for (5, 4); syncnorm raises for
    every batch: the output could not depend on the input."""
    m = nn.GroupNorm(G, shape[1])
    with pytest.raises(ValueError) as info:
        m(np.ones(shape, np.float32))
    assert str(info.value).startswith("GroupNorm: each group holds 1 value (1 channel x 1 position)")
    assert f"got input of shape {shape} with {G} groups" in str(info.value)
    assert m(np.ones((0,) + shape[1:], np.float32)).shape == (0,) + shape[1:]  # empty: valid


def test_group_norm_with_two_values_per_group_computes():
    y = nn.GroupNorm(2, 4)(np.array([[1, 3, 5, 9]], np.float32))  # groups (1, 3), (5, 9)
    np.testing.assert_allclose(y, [[-1, 1, -1, 1]], atol=1e-5)


def test_group_norm_with_one_group_is_layer_norm_over_c_and_positions():
    C, H, W = 4, 3, 5
    gn = nn.GroupNorm(1, C, dtype=np.float64)
    ln = nn.LayerNorm([C, H, W], dtype=np.float64)
    w, b = _rand(C), _rand(C)
    gn.weight.data[...], gn.bias.data[...] = w, b
    ln.weight.data[...] = np.broadcast_to(w[:, None, None], (C, H, W))
    ln.bias.data[...] = np.broadcast_to(b[:, None, None], (C, H, W))
    x, dy = _rand((2, C, H, W), -1.0, 2.0), _rand((2, C, H, W))
    y1, dx1 = _run(gn, x, dy)
    y2, dx2 = _run(ln, x, dy)
    np.testing.assert_allclose(y1, y2, rtol=0, atol=1e-13)
    np.testing.assert_allclose(dx1, dx2, rtol=0, atol=1e-12)
    np.testing.assert_allclose(gn.weight.grad, ln.weight.grad.sum(axis=(1, 2)), atol=1e-12)
    np.testing.assert_allclose(gn.bias.grad, ln.bias.grad.sum(axis=(1, 2)), atol=1e-12)
    # and without affine parameters
    y3 = nn.GroupNorm(1, C, affine=False)(x)
    y4 = nn.LayerNorm([C, H, W], elementwise_affine=False)(x)
    np.testing.assert_allclose(y3, y4, rtol=0, atol=1e-13)


# --------------------------------------------------------------------------- dtypes, accuracy
LAYERS = [
    ("InstanceNorm2d", lambda: nn.InstanceNorm2d(3, affine=True), lambda x, m: group_norm_ref(
        x, 3, m.weight.data, m.bias.data, m.eps)),
    ("GroupNorm", lambda: nn.GroupNorm(3, 6), lambda x, m: group_norm_ref(
        x, 3, m.weight.data, m.bias.data, m.eps)),
    ("LayerNorm", lambda: nn.LayerNorm([5, 7]), lambda x, m: layer_norm_ref(
        x, 2, m.weight.data, m.bias.data, m.eps)),
    ("LocalResponseNorm", lambda: nn.LocalResponseNorm(3, alpha=0.1), lambda x, m: lrn_ref(
        x, 3, 0.1, 0.75, 1.0)),
]
SHAPES = {"InstanceNorm2d": (2, 3, 5, 7), "GroupNorm": (2, 6, 5, 7), "LayerNorm": (2, 3, 5, 7),
          "LocalResponseNorm": (2, 6, 5, 7)}


@pytest.mark.parametrize("dtype,tol", [(np.float16, 2e-3), (np.float32, 2e-6), (np.float64, 1e-13)])
@pytest.mark.parametrize("name,make,ref", LAYERS, ids=[c[0] for c in LAYERS])
def test_dtypes(name, make, ref, dtype, tol):
    m = make()
    x = _rand(SHAPES[name], 1.0, 2.0, dtype)
    dy = _rand(x.shape, 0.0, 1.0, dtype)
    y, dx = _run(m, x, dy)
    assert y.dtype == dtype and dx.dtype == dtype and y.shape == x.shape
    expect = ref(x.astype(np.float64), m)
    err = np.abs(y.astype(np.float64) - expect).max() / max(1.0, np.abs(expect).max())
    assert err <= tol, f"{name} {np.dtype(dtype).name}: relative error {err:.3g}"
    # the gradients of a lower precision agree with the float64 layer's on the same values
    m64 = make()
    for p, q in zip(m.parameters(), m64.parameters()):
        q.data = p.data.astype(np.float64)
    _, dx64 = _run(m64, x.astype(np.float64), dy.astype(np.float64))
    err = np.abs(dx.astype(np.float64) - dx64).max() / max(1.0, np.abs(dx64).max())
    assert err <= 5 * tol, f"{name} {np.dtype(dtype).name} input grad: relative error {err:.3g}"


@pytest.mark.parametrize("make,ref", [
    (lambda: nn.InstanceNorm2d(4), lambda x: group_norm_ref(x, 4, None, None, 1e-5)),
    (lambda: nn.GroupNorm(2, 4, affine=False), lambda x: group_norm_ref(x, 2, None, None, 1e-5)),
    (lambda: nn.LayerNorm([4, 20, 30], elementwise_affine=False),
     lambda x: layer_norm_ref(x, 3, None, None, 1e-5)),
    (lambda: nn.LayerNorm([4, 20, 30]), lambda x: layer_norm_ref(x, 3, None, None, 1e-5)),
], ids=["InstanceNorm2d", "GroupNorm", "LayerNorm", "LayerNorm_affine"])
def test_large_mean_accuracy_float32(make, ref):
    """float32 input with mean 1000 and std 0.01 normalizes within 1e-4 of float64."""
    x = _rand((3, 4, 20, 30), 1000.0, 0.01, np.float32)
    y = make()(x)
    err = float(np.abs(y.astype(np.float64) - ref(x.astype(np.float64))).max())
    assert err <= 1e-4, f"max |error| {err:.3g}"


@pytest.mark.parametrize("make,shape", [
    (lambda dt: nn.InstanceNorm2d(4, affine=True, dtype=dt), (3, 4, 20, 30)),
    (lambda dt: nn.GroupNorm(2, 4, dtype=dt), (3, 4, 20, 30)),
    (lambda dt: nn.LayerNorm([4, 20, 30], dtype=dt), (3, 4, 20, 30)),
    (lambda dt: nn.LayerNorm(30, dtype=dt), (3, 4, 20, 30)),
], ids=["InstanceNorm2d", "GroupNorm", "LayerNorm_long_rows", "LayerNorm_short_rows"])
@pytest.mark.parametrize("mean,std", [(1000.0, 0.01), (3.0, 1.0), (-1e4, 1.0)])
def test_float32_gradients_at_large_means(make, shape, mean, std):
    """Input and weight gradients of float32 layers agree with float64 ones to ~1e-6 relative,
    on both sides of the |mean| <= 4 std fold (at mean 1000, std 0.01 the fold would lose 1e-3)."""
    x = _rand(shape, mean, std, np.float32)
    dy = _rand(shape, 0.0, 1.0, np.float32)
    m32, m64 = make(np.float32), make(np.float64)
    w = RNG.uniform(0.5, 1.5, m32.weight.shape).astype(np.float32)
    m32.weight.data[...], m64.weight.data[...] = w, w
    _, dx32 = _run(m32, x, dy)
    _, dx64 = _run(m64, x.astype(np.float64), dy.astype(np.float64))
    assert np.abs(dx32 - dx64).max() <= 5e-6 * np.abs(dx64).max()
    g64 = m64.weight.grad
    assert np.abs(m32.weight.grad - g64).max() <= 5e-6 * np.abs(g64).max()
    assert np.abs(m32.bias.grad - m64.bias.grad).max() <= 5e-6 * np.abs(m64.bias.grad).max()


def test_row_statistics_survive_an_outlier_first_value():
    """row_stats shifts each row by its first value. Being a member of the row, that value is
    within sqrt(M) standard deviations of the mean, so the float64 shifted sums cancel at most a
    factor M even when it is an extreme outlier (a farther shift would be caught by
    moments.poorly_shifted and the row summed again)."""
    x = _rand((3, 5000), 0.0, 1.0)
    x[:, 0] = [1e7, -3e6, 0.5]
    y = nn.LayerNorm(5000, elementwise_affine=False, dtype=np.float64)(x)
    np.testing.assert_allclose(y, layer_norm_ref(x, 1, None, None, 1e-5), rtol=0, atol=1e-10)


def test_statistics_are_float64_for_float16_rows_of_many_values():
    # 2**14 float16 values near 100: a float16 running sum would lose the spread entirely
    x = (100 + RNG.normal(0, 0.5, (2, 1, 1 << 14))).astype(np.float16)
    y = nn.LayerNorm(1 << 14, elementwise_affine=False)(x.reshape(2, -1))
    expect = layer_norm_ref(x.reshape(2, -1).astype(np.float64), 1, None, None, 1e-5)
    assert np.abs(y.astype(np.float64) - expect).max() <= 4e-3


# --------------------------------------------------------------------------- InstanceNorm state
def test_instance_norm_running_stats_with_momentum_and_eval():
    m = nn.InstanceNorm1d(3, track_running_stats=True, momentum=0.2, dtype=np.float64)
    rm, rv = np.zeros(3), np.ones(3)
    for step in range(3):
        x = _rand((4, 3, 6), step, 1 + step)
        m(x)
        rm = 0.8 * rm + 0.2 * x.mean(axis=2).mean(axis=0)
        rv = 0.8 * rv + 0.2 * x.var(axis=2, ddof=1).mean(axis=0)
        np.testing.assert_allclose(m.running_mean, rm, rtol=1e-13)
        np.testing.assert_allclose(m.running_var, rv, rtol=1e-13)
    assert int(m.num_batches_tracked) == 3
    m.eval()
    x = _rand((2, 3, 6))
    expect = (x - rm[:, None]) / np.sqrt(rv[:, None] + m.eps)
    np.testing.assert_allclose(m(x), expect, rtol=1e-13, atol=1e-14)
    before = m.running_mean.copy()
    m(x)
    np.testing.assert_array_equal(m.running_mean, before)  # eval never updates


def test_instance_norm_momentum_none_is_a_cumulative_average():
    """torch passes momentum 0 here (running statistics never move); syncnorm averages."""
    m = nn.InstanceNorm2d(2, track_running_stats=True, momentum=None, dtype=np.float64)
    xs = [_rand((3, 2, 4, 4), 5.0 * i, 1.0 + i) for i in range(4)]
    for x in xs:
        m(x)
    np.testing.assert_allclose(m.running_mean,
                               np.mean([x.mean(axis=(2, 3)).mean(axis=0) for x in xs], axis=0),
                               rtol=1e-13)
    np.testing.assert_allclose(m.running_var, np.mean(
        [x.reshape(3, 2, -1).var(axis=2, ddof=1).mean(axis=0) for x in xs], axis=0), rtol=1e-13)


def test_instance_norm_track_without_input_stats_in_eval_accepts_one_position():
    m = nn.InstanceNorm1d(2, track_running_stats=True).eval()
    assert m(np.ones((3, 2, 1), np.float32)).shape == (3, 2, 1)


def test_instance_norm_state_dict_keys():
    assert list(nn.InstanceNorm2d(3).state_dict()) == []
    assert list(nn.InstanceNorm2d(3, affine=True, bias=False).state_dict()) == ["weight"]
    sd = nn.InstanceNorm2d(3, affine=True, track_running_stats=True).state_dict()
    assert list(sd) == ["weight", "bias", "running_mean", "running_var", "num_batches_tracked"]
    with pytest.raises(nn.StateDictError, match='Unexpected key.*"running_mean"'):
        nn.InstanceNorm2d(3, affine=True).load_state_dict(sd)


# --------------------------------------------------------------------------- empty batches
EMPTY = [
    ("InstanceNorm2d", lambda: nn.InstanceNorm2d(3, affine=True, track_running_stats=True),
     (0, 3, 4, 4)),
    ("InstanceNorm1d_no_positions", lambda: nn.InstanceNorm1d(3, affine=True,
                                                             track_running_stats=True), (2, 3, 0)),
    ("GroupNorm", lambda: nn.GroupNorm(2, 4), (0, 4, 3)),
    ("LayerNorm", lambda: nn.LayerNorm([3, 2]), (0, 3, 2)),
    ("LocalResponseNorm", lambda: nn.LocalResponseNorm(2), (0, 4, 3)),
]


@pytest.mark.parametrize("name,make,shape", EMPTY, ids=[c[0] for c in EMPTY])
def test_empty_batch_gives_empty_output_zero_grads_and_keeps_running_stats(name, make, shape):
    """As torch: an empty batch (a data-parallel rank may hold none) is valid input. torch writes
    NaN into InstanceNorm's running statistics and raises IndexError with affine; syncnorm does
    neither."""
    m = make()
    before = {k: v.copy() for k, v in m.state_dict().items()}
    x = np.zeros(shape, np.float32)
    y = m(x)
    assert y.shape == shape and y.dtype == np.float32
    dx = m.backward(np.zeros(shape, np.float32))
    assert dx.shape == shape
    for p in m.parameters():
        np.testing.assert_array_equal(p.grad, np.zeros(p.shape))
    for k in ("running_mean", "running_var"):
        if k in before:
            np.testing.assert_array_equal(m.state_dict()[k], before[k])


# --------------------------------------------------------------------------- bad input
F = np.float32
BAD = [
    # (layer, input, exception, message)
    (lambda: nn.InstanceNorm1d(3), np.zeros((2, 3, 4, 4), F), ValueError,
     r"expected 2D or 3D input \(got 4D input\)"),
    (lambda: nn.InstanceNorm2d(3), np.zeros((2, 3, 4, 4, 4), F), ValueError,
     r"expected 3D or 4D input \(got 5D input\)"),
    (lambda: nn.InstanceNorm3d(3), np.zeros((3, 4, 4), F), ValueError,
     r"expected 4D or 5D input \(got 3D input\)"),
    (lambda: nn.InstanceNorm2d(3, affine=True), np.zeros((2, 4, 3, 3), F), ValueError,
     r"expected input's size at dim=1 to match num_features \(3\), but got: 4"),
    (lambda: nn.InstanceNorm2d(3, affine=True), np.zeros((4, 3, 3), F), ValueError,
     r"expected input's size at dim=0 to match num_features \(3\), but got: 4"),
    (lambda: nn.InstanceNorm2d(3, track_running_stats=True), np.zeros((2, 4, 3, 3), F), ValueError,
     r"match num_features \(3\), the size of the running statistics, but got: 4"),
    (lambda: nn.InstanceNorm2d(3), np.zeros((2, 3, 3, 3), np.int64), TypeError,
     r"expected a floating-point input .* got dtype int64"),
    (lambda: nn.InstanceNorm1d(3), np.zeros((2, 3, 1), F), ValueError,
     r"Expected more than 1 spatial element when training"),
    (lambda: nn.GroupNorm(2, 4), np.zeros(4, F), ValueError,
     r"expected input of at least 2 dimensions \(N, C, \*\), got 1D input"),
    (lambda: nn.GroupNorm(2, 4), np.zeros((2, 6, 3), F), ValueError,
     r"expected input with 4 channels \(the size of weight\), got input of shape \(2, 6, 3\)"),
    (lambda: nn.GroupNorm(2, 4, affine=False), np.zeros((2, 5, 3), F), ValueError,
     r"divisible by num_groups=2, got input of shape \(2, 5, 3\)"),
    (lambda: nn.GroupNorm(2, 4), np.zeros((2, 4, 3), np.int32), TypeError,
     r"floating-point input .* got dtype int32"),
    (lambda: nn.LayerNorm([3, 4]), np.zeros((2, 3, 5), F), ValueError,
     r"given normalized_shape=\[3, 4\], expected input with shape \[\*, 3, 4\], but got input of "
     r"shape \[2, 3, 5\]"),
    (lambda: nn.LayerNorm([3, 4]), np.zeros(4, F), ValueError, r"but got input of shape \[4\]"),
    (lambda: nn.LayerNorm(4), np.zeros((2, 4), np.bool_), TypeError, r"got dtype bool"),
    (lambda: nn.LocalResponseNorm(2), np.zeros((3, 4), F), ValueError,
     r"expected 3D or higher dimensionality input \(N, C, \*\), got 2D input"),
    (lambda: nn.LocalResponseNorm(2), np.zeros((2, 4, 3), np.complex64), TypeError,
     r"got dtype complex64"),
    (lambda: nn.LayerNorm(3), "not an array", TypeError, r"expected a numpy array, got str"),
]


@pytest.mark.parametrize("make,x,exc,msg", BAD, ids=range(len(BAD)))
def test_bad_input_is_a_clear_error(make, x, exc, msg):
    m = make()
    with pytest.raises(exc, match=msg):
        m(x)


@pytest.mark.parametrize("call,exc,msg", [
    (lambda: nn.GroupNorm(3, 4), ValueError,
     r"num_channels \(4\) must be divisible by num_groups \(3\)"),
    (lambda: nn.GroupNorm(0, 4), ValueError, r"num_groups must be positive, got 0"),
    (lambda: nn.GroupNorm(2.0, 4), TypeError, r"num_groups must be an int, got float"),
    (lambda: nn.LayerNorm("x"), TypeError, r"normalized_shape must hold non-negative ints"),
    (lambda: nn.LayerNorm([2, -1]), TypeError, r"normalized_shape must hold non-negative ints"),
    (lambda: nn.LocalResponseNorm(0), ValueError, r"size must be a positive number of channels"),
    (lambda: nn.InstanceNorm2d(3, dtype=np.int32), TypeError, r"dtype must be float16, float32"),
    (lambda: nn.LayerNorm(3, dtype=np.int8), TypeError, r"dtype must be float16, float32"),
    (lambda: nn.GroupNorm(1, 3, device="cuda"), ValueError, r"syncnorm runs on the CPU"),
])
def test_bad_construction(call, exc, msg):
    with pytest.raises(exc, match=msg):
        call()


def test_channel_mismatch_without_parameters_warns_like_torch():
    with pytest.warns(UserWarning, match=r"input's size at dim=1 does not match num_features"):
        y = nn.InstanceNorm2d(3)(np.ones((2, 4, 2, 2), F))
    assert y.shape == (2, 4, 2, 2)
    with pytest.warns(UserWarning, match=r"input has 6 channels but num_channels=4"):
        nn.GroupNorm(2, 4, affine=False)(_rand((2, 6, 3)))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        nn.InstanceNorm2d(4)(np.ones((2, 4, 2, 2), F))


@pytest.mark.parametrize("make,shape", [(lambda: nn.InstanceNorm2d(2), (2, 2, 3, 3)),
                                        (lambda: nn.GroupNorm(1, 2), (2, 2, 3)),
                                        (lambda: nn.LayerNorm(3), (2, 3)),
                                        (lambda: nn.LocalResponseNorm(2), (2, 2, 3))])
def test_backward_protocol(make, shape):
    m = make()
    name = type(m).__name__
    with pytest.raises(RuntimeError, match=rf"{name}.backward\(\) called without a forward\(\)"):
        m.backward(np.zeros(shape))
    m(_rand(shape))
    with pytest.raises(ValueError, match=r"expected grad_output of shape"):
        m.backward(np.zeros(shape[:-1] + (shape[-1] + 1,)))
    m.backward(np.zeros(shape))
    with pytest.raises(RuntimeError, match="without a forward"):
        m.backward(np.zeros(shape))


def test_parameter_grads_accumulate_like_torch():
    m = nn.GroupNorm(2, 4, dtype=np.float64)
    x, dy = _rand((2, 4, 5)), _rand((2, 4, 5))
    m(x)
    m.backward(dy)
    g1 = m.weight.grad.copy()
    m(x)
    m.backward(dy)
    np.testing.assert_allclose(m.weight.grad, 2 * g1, rtol=1e-14)


# --------------------------------------------------------------------------- reprs (torch 2.13)
@pytest.mark.parametrize("m,text", [
    (nn.InstanceNorm2d(3), "InstanceNorm2d(3, eps=1e-05, momentum=0.1, affine=False, bias=False, "
                           "track_running_stats=False)"),
    (nn.InstanceNorm1d(4, affine=True, momentum=None), "InstanceNorm1d(4, eps=1e-05, momentum=None, "
                                                      "affine=True, bias=True, "
                                                      "track_running_stats=False)"),
    (nn.GroupNorm(2, 4), "GroupNorm(2, 4, eps=1e-05, affine=True, bias=True)"),
    (nn.GroupNorm(2, 4, affine=False), "GroupNorm(2, 4, eps=1e-05, affine=False, bias=False)"),
    (nn.LayerNorm([3, 4]), "LayerNorm((3, 4), eps=1e-05, elementwise_affine=True, bias=True)"),
    (nn.LayerNorm(3, bias=False), "LayerNorm((3,), eps=1e-05, elementwise_affine=True, bias=False)"),
    (nn.LocalResponseNorm(3), "LocalResponseNorm(3, alpha=0.0001, beta=0.75, k=1.0)"),
])
def test_repr_like_torch(m, text):
    assert repr(m) == text
