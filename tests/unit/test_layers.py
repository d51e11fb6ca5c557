"""The CNN layers: torch 2.13 reference vectors, finite-difference gradients (float64), init, errors."""
import json
import math
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest

from family_reference import numeric_grad
from syncnorm import nn
from syncnorm.training.models import digits_cnn

pytestmark = pytest.mark.usefixtures("kernel_engine")  # numpy and numba kernels

REF = np.load(Path(__file__).resolve().parents[1] / "data" / "layer_refs.npz", allow_pickle=False)
CASES = json.loads(str(REF["cases"]))


def names(prefix):
    return sorted({k.split("/")[1] for k in REF.files if k.startswith(prefix + "/")})


def close(a, b, tol=1e-10):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    assert a.shape == b.shape, (a.shape, b.shape)
    np.testing.assert_allclose(a, b, rtol=tol, atol=tol * (1 + np.abs(b).max(initial=0)))


# --------------------------------------------------------------------------- torch references
@pytest.mark.parametrize("name", names("conv"))
def test_conv2d_matches_torch(name):
    p = f"conv/{name}/"
    kw = dict(CASES[p])
    x, w = REF[p + "x"], REF[p + "weight"]
    kw = {k: tuple(v) if isinstance(v, list) else v for k, v in kw.items()}
    m = nn.Conv2d(x.shape[1], kw.pop("out_channels"), kw.pop("kernel_size"), dtype=np.float64, **kw)
    m.weight.data[...] = w
    if m.bias is not None:
        m.bias.data[...] = REF[p + "bias"]
    y = m(x)
    close(y, REF[p + "y"])
    dx = m.backward(REF[p + "dy"])
    close(dx, REF[p + "dx"])
    close(m.weight.grad, REF[p + "dweight"])
    if m.bias is not None:
        close(m.bias.grad, REF[p + "dbias"])


@pytest.mark.parametrize("name", names("linear"))
def test_linear_matches_torch(name):
    p = f"linear/{name}/"
    x, w = REF[p + "x"], REF[p + "weight"]
    m = nn.Linear(w.shape[1], w.shape[0], bias=CASES[p]["bias"], dtype=np.float64)
    m.weight.data[...] = w
    if m.bias is not None:
        m.bias.data[...] = REF[p + "bias"]
    close(m(x), REF[p + "y"])
    close(m.backward(REF[p + "dy"]), REF[p + "dx"])
    close(m.weight.grad, REF[p + "dweight"])
    if m.bias is not None:
        close(m.bias.grad, REF[p + "dbias"])


def _pool(case):
    kw = {k: tuple(v) if isinstance(v, list) else v for k, v in case.items() if k != "kind"}
    kind = case["kind"]
    if kind == "max":
        return nn.MaxPool2d(**kw)
    if kind == "avg":
        return nn.AvgPool2d(**kw)
    return nn.AdaptiveAvgPool2d(kw["output_size"])


@pytest.mark.parametrize("name", names("pool"))
def test_pooling_matches_torch(name):
    p = f"pool/{name}/"
    m = _pool(CASES[p])
    close(m(REF[p + "x"]), REF[p + "y"])
    close(m.backward(REF[p + "dy"]), REF[p + "dx"])


@pytest.mark.parametrize("name", names("ce"))
def test_cross_entropy_matches_torch(name):
    p = f"ce/{name}/"
    kw = dict(CASES[p])
    if p + "weight" in REF.files:
        kw["weight"] = REF[p + "weight"]
    crit = nn.CrossEntropyLoss(**kw)
    loss = crit(REF[p + "logits"], REF[p + "target"])
    close(loss, REF[p + "loss"], 1e-12)
    close(crit.backward(REF[p + "grad"]), REF[p + "dlogits"], 1e-12)


def test_digits_cnn_loads_a_torch_state_dict_and_computes_what_torch_computes():
    state = OrderedDict((k[len("cnn/state/"):], REF[k]) for k in REF.files if k.startswith("cnn/state/"))
    m = digits_cnn(width=4, dtype=np.float64)
    assert list(m.state_dict()) == list(state)  # same keys, same order as torch's Sequential
    m.load_state_dict(state)
    m[12].p = 0.0
    x = REF["cnn/x"]
    y = m(x)
    close(y, REF["cnn/y_train"])
    m.zero_grad()
    close(m.backward(np.ones_like(y) / y.shape[0]), REF["cnn/dx_train"], 1e-9)
    for k, prm in m.named_parameters():
        close(prm.grad, REF[f"cnn/grad/{k}"], 1e-9)
    for k, v in m.state_dict().items():
        close(v, REF[f"cnn/state_after/{k}"])
    m.eval()
    close(m(x), REF["cnn/y_eval"])


def test_default_init_has_torchs_bounds():
    # torch: U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for Linear/Conv2d weights and biases
    for ours, key, fan_in in ((nn.Linear(50, 40, generator=np.random.default_rng(0)), "linear", 50),
                              (nn.Conv2d(6, 20, 3, generator=np.random.default_rng(0)), "conv", 54)):
        bound = 1 / math.sqrt(fan_in)
        for attr in ("weight", "bias"):
            theirs = REF[f"init/{key}_{attr}"]
            mine = getattr(ours, attr).data
            assert mine.shape == theirs.shape and mine.dtype == np.float32
            assert np.abs(theirs).max() <= bound and np.abs(mine).max() <= bound
            if mine.size > 100:  # uniform: std = bound / sqrt(3), both of them
                assert abs(mine.std() - bound / math.sqrt(3)) < 0.1 * bound
                assert abs(theirs.std() - bound / math.sqrt(3)) < 0.1 * bound


def test_init_is_reproducible_from_a_generator_and_manual_seed():
    a = digits_cnn(generator=np.random.default_rng(5)).state_dict()
    b = digits_cnn(generator=np.random.default_rng(5)).state_dict()
    c = digits_cnn(generator=np.random.default_rng(6)).state_dict()
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert not np.array_equal(a["0.weight"], c["0.weight"])
    nn.init.manual_seed(3)
    d = nn.Linear(4, 3).weight.data.copy()
    nn.init.manual_seed(3)
    assert np.array_equal(d, nn.Linear(4, 3).weight.data)


# --------------------------------------------------------------------------- finite differences
def gradcheck(m, x, rng, tol=1e-7):
    """Input and parameter gradients of sum(m(x) * dy) against central differences."""
    y = m(x)
    dy = rng.standard_normal(y.shape)
    m.zero_grad()
    dx = m.backward(dy)
    f = lambda: float(np.sum(m(x) * dy))  # noqa: E731
    close(dx, numeric_grad(f, x), tol)
    for _, p in m.named_parameters():
        close(p.grad, numeric_grad(f, p.data), tol)


LAYERS = [
    ("linear", lambda g: nn.Linear(5, 3, dtype=np.float64, generator=g), (4, 5)),
    ("linear_3d_nobias", lambda g: nn.Linear(4, 2, bias=False, dtype=np.float64, generator=g), (2, 3, 4)),
    ("conv", lambda g: nn.Conv2d(3, 4, 3, padding=1, dtype=np.float64, generator=g), (2, 3, 5, 4)),
    ("conv_stride_dil", lambda g: nn.Conv2d(2, 3, (3, 2), stride=(2, 1), padding=(2, 1), dilation=(2, 1),
                                             dtype=np.float64, generator=g), (2, 2, 7, 5)),
    ("conv_groups", lambda g: nn.Conv2d(4, 6, 3, groups=2, padding="same", dtype=np.float64,
                                         generator=g), (2, 4, 4, 4)),
    ("conv_unbatched", lambda g: nn.Conv2d(2, 3, 2, dtype=np.float64, generator=g), (2, 4, 4)),
    ("relu", lambda g: nn.ReLU(), (3, 4, 5)),
    ("maxpool", lambda g: nn.MaxPool2d(2), (2, 3, 6, 6)),
    ("maxpool_overlap_ceil", lambda g: nn.MaxPool2d(3, 2, 1, ceil_mode=True), (2, 2, 7, 6)),
    ("avgpool", lambda g: nn.AvgPool2d(3, 2, 1, count_include_pad=False), (2, 2, 7, 6)),
    ("avgpool_ceil", lambda g: nn.AvgPool2d(2, ceil_mode=True), (2, 2, 5, 5)),
    ("adaptive", lambda g: nn.AdaptiveAvgPool2d((2, 3)), (2, 2, 5, 7)),
    ("global", lambda g: nn.AdaptiveAvgPool2d(1), (3, 2, 4, 4)),
    ("flatten", lambda g: nn.Flatten(), (3, 2, 2, 2)),
    ("dropout_eval", lambda g: nn.Dropout(0.4).eval(), (3, 5)),
    ("small_cnn", lambda g: nn.Sequential(nn.Conv2d(1, 3, 3, padding=1, dtype=np.float64, generator=g),
                                          nn.BatchNorm2d(3, dtype=np.float64), nn.ReLU(), nn.MaxPool2d(2),
                                          nn.Conv2d(3, 2, 2, dtype=np.float64, generator=g),
                                          nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                                          nn.Linear(2, 3, dtype=np.float64, generator=g)), (4, 1, 5, 5)),
]


@pytest.mark.parametrize("name,make,shape", LAYERS, ids=[c[0] for c in LAYERS])
def test_gradients_match_finite_differences(name, make, shape):
    rng = np.random.default_rng(hash(name) % 2 ** 32)
    m = make(np.random.default_rng(1))
    x = rng.standard_normal(shape)
    if "pool" in name:  # keep window maxima apart from each other so max is differentiable
        x = x + np.arange(x.size).reshape(shape) * 1e-3
    gradcheck(m, x, rng)


def test_dropout_gradient_with_a_fixed_mask():
    rng = np.random.default_rng(0)
    m = nn.Sequential(nn.Dropout(0.3))
    x = rng.standard_normal((4, 6))
    nn.set_dropout_keys(m, [3, 1, 4, 1], step=2, seed=7)
    y = m(x)
    dy = rng.standard_normal(y.shape)
    dx = m.backward(dy)

    def f():
        nn.set_dropout_keys(m, [3, 1, 4, 1], step=2, seed=7)
        return float(np.sum(m(x) * dy))
    close(dx, numeric_grad(f, x), 1e-7)
    kept = y != 0
    np.testing.assert_allclose(y[kept], x[kept] / 0.7)


@pytest.mark.parametrize("kw,probs", [({}, False), ({"weight": [1.0, 2.0, 0.5, 1.5]}, False),
                                      ({"label_smoothing": 0.2, "ignore_index": 0}, False),
                                      ({"reduction": "sum", "label_smoothing": 0.1}, False),
                                      ({"weight": [1.0, 2.0, 0.5, 1.5], "label_smoothing": 0.3}, True)])
def test_cross_entropy_gradient_matches_finite_differences(kw, probs):
    rng = np.random.default_rng(1)
    z = rng.standard_normal((5, 4)) * 2
    t = rng.dirichlet(np.ones(4), 5) if probs else rng.integers(0, 4, 5)
    crit = nn.CrossEntropyLoss(**{k: np.array(v) if k == "weight" else v for k, v in kw.items()})
    crit(z, t)
    dz = crit.backward()
    close(dz, numeric_grad(lambda: float(crit(z, t)), z), 1e-7)


# --------------------------------------------------------------------------- dropout semantics
def test_dropout_per_sample_streams_do_not_depend_on_the_split():
    x = np.ones((8, 10), np.float32)
    ids = np.array([5, 17, 2, 9, 11, 30, 4, 0])
    whole = nn.Sequential(nn.Dropout(0.5))
    nn.set_dropout_keys(whole, ids, step=3, seed=1)
    y = whole(x)
    parts = []
    for lo, hi in ((0, 3), (3, 3), (3, 8)):  # includes an empty shard
        m = nn.Sequential(nn.Dropout(0.5))
        nn.set_dropout_keys(m, ids[lo:hi], step=3, seed=1)
        parts.append(m(x[lo:hi]))
    assert np.array_equal(np.concatenate(parts), y)
    nn.set_dropout_keys(whole, ids, step=4, seed=1)
    assert not np.array_equal(whole(x), y)  # a new step draws new masks
    assert 0.3 < np.mean(y == 0) < 0.7


def test_dropout_modes():
    x = np.ones((200, 50))
    d = nn.Dropout(0.25, generator=np.random.default_rng(0))
    y = d(x)
    assert abs(np.mean(y == 0) - 0.25) < 0.02
    assert np.allclose(y[y != 0], 1 / 0.75)
    assert np.array_equal(nn.Dropout(1.0)(x), np.zeros_like(x))
    assert nn.Dropout(0.5).eval()(x) is x
    with pytest.raises(ValueError, match="between 0 and 1"):
        nn.Dropout(1.5)
    m = nn.Sequential(nn.Dropout(0.5))
    nn.set_dropout_keys(m, [1, 2], step=0)
    with pytest.raises(ValueError, match="2 sample ids"):
        m(np.ones((3, 2)))


# --------------------------------------------------------------------------- errors, repr
def test_layer_errors_say_what_was_expected():
    with pytest.raises(ValueError, match=r"expected input with 3 channels"):
        nn.Conv2d(3, 4, 3)(np.zeros((1, 2, 5, 5), np.float32))
    with pytest.raises(TypeError, match="does not match the layer's parameter dtype float32"):
        nn.Conv2d(3, 4, 3)(np.zeros((1, 3, 5, 5)))
    with pytest.raises(ValueError, match=r"\(\*, 5\)"):
        nn.Linear(5, 2)(np.zeros((3, 4), np.float32))
    with pytest.raises(ValueError, match="4D input"):
        nn.MaxPool2d(2)(np.zeros((2, 3), np.float32))
    with pytest.raises(ValueError, match="smaller than the dilated kernel"):
        nn.Conv2d(1, 1, 5)(np.zeros((1, 1, 3, 3), np.float32))
    with pytest.raises(ValueError, match="divisible by groups"):
        nn.Conv2d(3, 4, 3, groups=2)
    with pytest.raises(ValueError, match="padding_mode"):
        nn.Conv2d(3, 4, 3, padding_mode="reflect")
    with pytest.raises(RuntimeError, match="without a forward"):
        nn.ReLU().backward(np.zeros(3))
    lin = nn.Linear(3, 2)
    lin(np.zeros((4, 3), np.float32))
    with pytest.raises(ValueError, match=r"expected grad_output of shape \(4, 2\)"):
        lin.backward(np.zeros((4, 3), np.float32))
    with pytest.raises(IndexError, match="Target 7 is out of bounds"):
        nn.CrossEntropyLoss()(np.zeros((2, 3)), np.array([0, 7]))
    with pytest.raises(ValueError, match="expected class-index target of shape"):
        nn.CrossEntropyLoss()(np.zeros((2, 3)), np.array([0, 1, 2]))
    with pytest.raises(ValueError, match="padding should be at most half"):
        nn.MaxPool2d(2, padding=2)(np.zeros((1, 1, 6, 6)))


def test_reprs_match_torch():
    assert repr(nn.Conv2d(1, 16, 3, padding=1, bias=False)) == \
        "Conv2d(1, 16, kernel_size=(3, 3), stride=(1, 1), padding=(1, 1), bias=False)"
    assert repr(nn.Linear(32, 10)) == "Linear(in_features=32, out_features=10, bias=True)"
    assert repr(nn.MaxPool2d(2)) == \
        "MaxPool2d(kernel_size=2, stride=2, padding=0, dilation=1, ceil_mode=False)"
    assert repr(nn.AdaptiveAvgPool2d(1)) == "AdaptiveAvgPool2d(output_size=1)"
    assert repr(nn.Flatten()) == "Flatten(start_dim=1, end_dim=-1)"
    assert repr(nn.Dropout(0.1)) == "Dropout(p=0.1, inplace=False)"
    assert repr(nn.ReLU()) == "ReLU()"


def test_float32_layers_stay_float32():
    m = digits_cnn(width=4, generator=np.random.default_rng(0))
    x = np.random.default_rng(0).standard_normal((3, 1, 8, 8)).astype(np.float32)
    y = m(x)
    assert y.dtype == np.float32
    assert m.backward(np.ones_like(y)).dtype == np.float32
    assert all(p.grad.dtype == np.float32 for p in m.parameters())


def _splitmix_mix(z):  # pure-Python reference of SplitMix64's finalizer
    m = (1 << 64) - 1
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & m
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & m
    return z ^ (z >> 31)


def test_keyed_uniform_is_the_documented_integer_function_and_uniform():
    from syncnorm.nn.dropout import keyed_uniform
    g, m = 0x9E3779B97F4A7C15, (1 << 64) - 1
    seed, stream, step, ids = 7, 1, 3, [0, 12345]
    h = _splitmix_mix((seed + g) & m)
    h = _splitmix_mix(h ^ ((stream + 2 * g) & m))
    h = _splitmix_mix(h ^ ((step + 3 * g) & m))
    want = [[(_splitmix_mix((_splitmix_mix(h ^ i) + j * g) & m) >> 11) * 2.0 ** -53 for j in (1, 2, 3)]
            for i in ids]
    assert keyed_uniform(seed, stream, step, np.array(ids), (2, 3)).tolist() == want
    u = keyed_uniform(0, 0, 0, np.arange(4000), (4000, 25))
    assert abs(u.mean() - 0.5) < 0.005 and abs(u.var() - 1 / 12) < 0.002
    assert np.all((u >= 0) & (u < 1))
