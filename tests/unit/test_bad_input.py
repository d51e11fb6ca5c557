"""Bad input on every layer: each kind of mistake gets a clear error (or, where torch accepts the input,
a correct result), and a refused input changes nothing.

The kinds (KINDS below): too many / too few dimensions, a wrong channel count, zero channels,
integer / bool / complex / object dtypes, something that is not an array, an empty batch, three
kinds of non-contiguous views (accepted and bitwise equal to the contiguous input), NaN and Inf
(propagated, never an exception by default), backward before forward, backward twice, a
grad_output of the wrong shape or dtype, and "a refused input leaves the layer unchanged and
usable". SyncBatchNorm here is a world of 1; the same checks across ranks are in
tests/support/mpi_workers/mpi_syncbn.py (bad input on one rank raises on every rank).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import pytest

from syncnorm import nn
from syncnorm.nn.lazy import is_lazy

pytestmark = pytest.mark.usefixtures("kernel_engine")  # numpy and numba kernels

F = np.float32


def gen():
    return np.random.default_rng(0)


@dataclass
class Spec:
    """A layer and what it must say about each kind of bad input (None: it accepts that input)."""
    make: Callable[[], nn.Module]
    shape: tuple[int, ...]
    ndim_bad: list[tuple[tuple[int, ...], str]]
    channels: str | None  # message for one channel too many
    zero: str | None  # message for zero channels
    chan_axis: int = 1
    checks_dtype: bool = True
    name: str = ""
    kw: dict = field(default_factory=dict)


def _bn_chan(name, C, shape):
    return rf"{name}: expected input with {C} channels \(shape \(N, {C}, \.\.\.\)\), got input of shape " \
           + re.escape(str(shape))


def _bn_zero(name, shape):
    return rf"{name}: number of input channels should be non-zero, got input of shape " + re.escape(str(shape))


ND = r"expected {} input \(got {}D input\)"
CNN_ND = r"{}: expected 3D or 4D input \(N, C, H, W\) or \(C, H, W\), got {}D input of shape"


def _sync_from(cls):
    return lambda: nn.convert_sync_batchnorm(nn.Sequential(cls(3)))[0]


SPECS = {
    "BatchNorm1d": Spec(lambda: nn.BatchNorm1d(3), (4, 3, 5),
                        [((4, 3, 5, 2), ND.format("2D or 3D", 4)), ((12,), ND.format("2D or 3D", 1))],
                        _bn_chan("BatchNorm1d", 3, (4, 4, 5)), _bn_zero("BatchNorm1d", (4, 0, 5))),
    "BatchNorm2d": Spec(lambda: nn.BatchNorm2d(3), (4, 3, 2, 2),
                        [((4, 3, 2), ND.format("4D", 3)), ((4, 3, 2, 2, 1), ND.format("4D", 5))],
                        _bn_chan("BatchNorm2d", 3, (4, 4, 2, 2)), _bn_zero("BatchNorm2d", (4, 0, 2, 2))),
    "BatchNorm3d": Spec(lambda: nn.BatchNorm3d(3), (2, 3, 2, 2, 2),
                        [((2, 3, 2, 2), ND.format("5D", 4)), ((2, 3, 2, 2, 2, 1), ND.format("5D", 6))],
                        _bn_chan("BatchNorm3d", 3, (2, 4, 2, 2, 2)), _bn_zero("BatchNorm3d", (2, 0, 2, 2, 2))),
    "SyncBatchNorm": Spec(lambda: nn.SyncBatchNorm(3), (4, 3, 5),
                          [((12,), r"expected at least 2D input \(got 1D input\)"),
                           ((), r"expected at least 2D input \(got 0D input\)")],
                          _bn_chan("SyncBatchNorm", 3, (4, 4, 5)), _bn_zero("SyncBatchNorm", (4, 0, 5))),
    "SyncBatchNorm(from BatchNorm2d)": Spec(_sync_from(nn.BatchNorm2d), (4, 3, 2, 2),
                                            [((4, 3, 2), ND.format("4D", 3))],
                                            _bn_chan("SyncBatchNorm", 3, (4, 4, 2, 2)),
                                            _bn_zero("SyncBatchNorm", (4, 0, 2, 2))),
    "InstanceNorm1d": Spec(lambda: nn.InstanceNorm1d(3, affine=True), (4, 3, 5),
                           [((4, 3, 5, 2), ND.format("2D or 3D", 4)), ((5,), ND.format("2D or 3D", 1))],
                           r"expected input's size at dim=1 to match num_features \(3\), but got: 4\.",
                           r"expected input's size at dim=1 to match num_features \(3\), but got: 0\."),
    "InstanceNorm2d": Spec(lambda: nn.InstanceNorm2d(3, affine=True, track_running_stats=True),
                           (4, 3, 2, 2), [((4, 3, 2, 2, 2), ND.format("3D or 4D", 5)),
                                          ((2, 2), ND.format("3D or 4D", 2))],
                           r"match num_features \(3\), but got: 4\.", r"but got: 0\."),
    "InstanceNorm3d": Spec(lambda: nn.InstanceNorm3d(3, track_running_stats=True), (2, 3, 2, 2, 2),
                           [((2, 3, 2, 2, 2, 2), ND.format("4D or 5D", 6)), ((2, 2, 2), ND.format("4D or 5D", 3))],
                           r"InstanceNorm3d: expected input's size at dim=1 to match num_features \(3\), "
                           r"the size of the running statistics, but got: 4 \(input of shape \(2, 4, 2, 2, 2\)\)",
                           r"the size of the running statistics, but got: 0"),
    "GroupNorm": Spec(lambda: nn.GroupNorm(1, 3), (4, 3, 5),
                      [((5,), r"GroupNorm: expected input of at least 2 dimensions \(N, C, \*\), got 1D "
                              r"input of shape \(5,\)")],
                      r"GroupNorm: expected input with 3 channels \(the size of weight\), got input of "
                      r"shape \(4, 4, 5\)", r"GroupNorm: expected input with 3 channels"),
    "LayerNorm": Spec(lambda: nn.LayerNorm([3, 5]), (4, 3, 5),
                      [((5,), r"LayerNorm: given normalized_shape=\[3, 5\], expected input with shape "
                              r"\[\*, 3, 5\], but got input of shape \[5\]")],
                      r"but got input of shape \[4, 4, 5\]", r"but got input of shape \[4, 0, 5\]"),
    "LocalResponseNorm": Spec(lambda: nn.LocalResponseNorm(2), (4, 3, 5),
                              [((4, 3), r"LocalResponseNorm: expected 3D or higher dimensionality input "
                                        r"\(N, C, \*\), got 2D input of shape \(4, 3\)")], None, None),
    "LazyBatchNorm1d": Spec(lambda: nn.LazyBatchNorm1d(), (4, 3, 5),
                            [((4, 3, 5, 2), ND.format("2D or 3D", 4))], None,
                            r"LazyBatchNorm1d: cannot infer num_features from an input with 0 channels "
                            r"\(dim=1 of input of shape \(4, 0, 5\)\)"),
    "LazyBatchNorm2d": Spec(lambda: nn.LazyBatchNorm2d(), (4, 3, 2, 2), [((4, 3, 2), ND.format("4D", 3))],
                            None, r"LazyBatchNorm2d: cannot infer num_features"),
    "LazyBatchNorm3d": Spec(lambda: nn.LazyBatchNorm3d(), (2, 3, 2, 2, 2),
                            [((2, 3, 2, 2), ND.format("5D", 4))], None, r"LazyBatchNorm3d: cannot infer"),
    "LazyInstanceNorm1d": Spec(lambda: nn.LazyInstanceNorm1d(), (4, 3, 5),
                               [((4, 3, 5, 2), ND.format("2D or 3D", 4))], None,
                               r"LazyInstanceNorm1d: cannot infer num_features"),
    "LazyInstanceNorm2d": Spec(lambda: nn.LazyInstanceNorm2d(), (4, 3, 2, 2),
                               [((4, 3, 2, 2, 2), ND.format("3D or 4D", 5))], None,
                               r"LazyInstanceNorm2d: cannot infer num_features"),
    "LazyInstanceNorm3d": Spec(lambda: nn.LazyInstanceNorm3d(), (2, 3, 2, 2, 2),
                               [((2, 3), ND.format("4D or 5D", 2))], None,
                               r"LazyInstanceNorm3d: cannot infer num_features"),
    "Linear": Spec(lambda: nn.Linear(5, 2, generator=gen()), (4, 3, 5),
                   [((), r"Linear: expected input of shape \(\*, 5\), got \(\)")],
                   r"Linear: expected input of shape \(\*, 5\), got \(4, 3, 6\)",
                   r"Linear: expected input of shape \(\*, 5\), got \(4, 3, 0\)", chan_axis=-1),
    "Conv2d": Spec(lambda: nn.Conv2d(3, 2, 2, padding=1, generator=gen()), (4, 3, 3, 3),
                   [((4, 3, 3, 3, 1), CNN_ND.format("Conv2d", 5)), ((3, 3), CNN_ND.format("Conv2d", 2))],
                   r"Conv2d: expected input with 3 channels, got input of shape \(4, 4, 3, 3\)",
                   r"Conv2d: expected input with 3 channels, got input of shape \(4, 0, 3, 3\)"),
    "MaxPool2d": Spec(lambda: nn.MaxPool2d(2), (4, 3, 4, 4),
                      [((4, 3, 4, 4, 1), CNN_ND.format("MaxPool2d", 5)), ((4, 4), CNN_ND.format("MaxPool2d", 2))],
                      None, None),
    "AvgPool2d": Spec(lambda: nn.AvgPool2d(2, padding=1), (4, 3, 4, 4),
                      [((4,), CNN_ND.format("AvgPool2d", 1))], None, None),
    "AdaptiveAvgPool2d": Spec(lambda: nn.AdaptiveAvgPool2d((2, 1)), (4, 3, 4, 3),
                              [((4, 3, 4, 3, 2), CNN_ND.format("AdaptiveAvgPool2d", 5))], None, None),
    "ReLU": Spec(lambda: nn.ReLU(), (4, 3, 5), [], None, None),
    "Dropout": Spec(lambda: nn.Dropout(0.3, generator=gen()), (4, 3, 5), [], None, None),
    "Flatten": Spec(lambda: nn.Flatten(), (4, 3, 5),
                    [((3,), r"Flatten: dimension out of range \(start_dim=1, end_dim=-1\) for input of "
                            r"shape \(3,\)")], None, None, checks_dtype=False),
}
for _k, _s in SPECS.items():
    _s.name = _k
IDS = list(SPECS)
TYPED = [k for k in IDS if SPECS[k].checks_dtype]  # Flatten only reshapes (torch's too, any dtype)
KINDS = ["too many or too few dimensions", "one channel too many", "zero channels", "int64 dtype",
         "bool dtype", "complex dtype", "object dtype", "not an array", "empty batch",
         "strided view", "Fortran-order view", "negative-stride view", "NaN", "Inf",
         "backward before forward", "backward twice", "grad_output of the wrong shape",
         "grad_output of an integer dtype", "a refused input changes nothing"]


def data(shape, seed=0, dtype=F):
    return (np.random.default_rng(seed).normal(size=shape) * 2 + 0.5).astype(dtype)


def snapshot(m: nn.Module) -> dict:
    if any(is_lazy(v) for v in list(m._parameters.values()) + list(m._buffers.values())):
        return {"lazy": type(m).__name__}
    return {k: v.copy() for k, v in m.state_dict().items()}


def same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def refused(spec: Spec, x, exc, msg: str) -> None:
    """x is refused with `exc` matching `msg`, the layer is unchanged, and it still works."""
    m = spec.make()
    before = snapshot(m)
    with pytest.raises(exc, match=msg):
        m(x)
    assert same(snapshot(m), before), f"{spec.name}: a refused input changed the layer"
    y = m(data(spec.shape))
    m.backward(np.ones_like(y))


def with_axis(shape, axis, size):
    s = list(shape)
    s[axis] = size
    return tuple(s)


# ------------------------------------------------------------------------- shapes and channels
@pytest.mark.parametrize("name", IDS)
def test_wrong_number_of_dimensions(name):
    spec = SPECS[name]
    for shape, msg in spec.ndim_bad:
        refused(spec, data(shape), (ValueError, IndexError), msg)


@pytest.mark.parametrize("name", IDS)
def test_wrong_and_zero_channel_counts(name):
    spec = SPECS[name]
    C = spec.shape[spec.chan_axis]
    for size, msg in ((C + 1, spec.channels), (0, spec.zero)):
        x = data(with_axis(spec.shape, spec.chan_axis, size))
        if msg is None:  # accepted, as in torch: the output is shaped like the input's batch
            m = spec.make()
            y = m(x)
            assert y.shape[0] == x.shape[0] and np.all(np.isfinite(y))
            dx = m.backward(np.ones_like(y))
            assert dx.shape == x.shape and np.all(np.isfinite(dx))
        else:
            refused(spec, x, ValueError, msg)


def test_a_layer_built_for_zero_channels_says_so():
    """torch builds BatchNorm1d(0) and then refuses every input; so does syncnorm, clearly."""
    m = nn.BatchNorm1d(0)
    with pytest.raises(ValueError, match=r"BatchNorm1d: number of input channels should be non-zero, "
                                         r"got input of shape \(4, 0, 5\)"):
        m(data((4, 0, 5)))
    with pytest.raises(ValueError, match=r"expected input with 0 channels \(shape \(N, 0, \.\.\.\)\), "
                                         r"got input of shape \(4, 1, 5\)"):
        m(data((4, 1, 5)))


# ------------------------------------------------------------------------- dtypes
@pytest.mark.parametrize("dtype", [np.int64, np.bool_, np.complex64, object])
@pytest.mark.parametrize("name", TYPED)
def test_non_floating_dtypes_are_refused(name, dtype):
    spec = SPECS[name]
    who = type(spec.make()).__name__
    refused(spec, data(spec.shape).astype(dtype), TypeError,
            rf"{who}: expected a floating-point input \(float16, float32 or float64\), got dtype "
            + re.escape(str(np.dtype(dtype))))


@pytest.mark.parametrize("name", TYPED)
def test_something_that_is_not_an_array(name):
    spec = SPECS[name]
    refused(spec, "a string", TypeError, r"expected a numpy array, got str")


# ------------------------------------------------------------------------- empty batch, views
@pytest.mark.parametrize("name", IDS)
def test_empty_batch(name):
    spec = SPECS[name]
    m = spec.make()
    x = data(with_axis(spec.shape, 0, 0))
    y = m(x)
    assert y.shape[0] == 0 and y.dtype == x.dtype
    before = snapshot(m)
    dx = m.backward(np.zeros_like(y))
    assert dx.shape == x.shape
    for p in m.parameters():
        assert p.grad is not None and np.all(p.grad == 0), f"{name}: {p.grad}"
    assert same(snapshot(m), before)


VIEWS = {
    "strided view": lambda a: np.repeat(a, 2, axis=-1)[..., ::2],
    "Fortran-order view": np.asfortranarray,
    "negative-stride view": lambda a: np.ascontiguousarray(a[::-1])[::-1],
}


@pytest.mark.parametrize("view", list(VIEWS))
@pytest.mark.parametrize("name", IDS)
def test_non_contiguous_views_are_accepted_and_bitwise_equal(name, view):
    spec = SPECS[name]
    base = data(spec.shape)
    v = VIEWS[view](base)
    assert np.array_equal(v, base) and (not v.flags.c_contiguous or v.size <= 1)
    # bitwise for the normalization layers (they read rows in one fixed order whatever the
    # layout); Conv2d and AvgPool2d sum in memory order, so a Fortran-order input may round
    # differently in the last place
    if name in ("Conv2d", "AvgPool2d"):
        def equal(a, b, err_msg=""):
            np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6, err_msg=err_msg)
    else:
        equal = np.testing.assert_array_equal
    a, b = spec.make(), spec.make()
    ya, yb = a(v), b(base)
    equal(ya, yb)
    dy = data(ya.shape, seed=1)
    equal(a.backward(VIEWS[view](dy)), b.backward(dy))
    for (n, p), (_, q) in zip(a.named_parameters(), b.named_parameters()):
        equal(p.grad, q.grad, err_msg=n)
    assert np.array_equal(v, base), "the input was modified"


# ------------------------------------------------------------------------- NaN / Inf
@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # numpy's "invalid value" on inf - inf
@pytest.mark.parametrize("value", [np.nan, np.inf])
@pytest.mark.parametrize("name", IDS)
def test_nan_and_inf_propagate_without_raising(name, value):
    spec = SPECS[name]
    x = data(spec.shape)
    x.flat[0] = value
    m = spec.make()
    y = m(x)
    assert not np.all(np.isfinite(y)), f"{name}: {value} vanished from the output"
    if np.isnan(value):
        assert np.any(np.isnan(y))
    dx = m.backward(np.ones_like(y))
    assert dx.shape == x.shape


# ------------------------------------------------------------------------- backward protocol
@pytest.mark.parametrize("name", IDS)
def test_backward_protocol(name):
    spec = SPECS[name]
    m = spec.make()
    who = type(m).__name__
    with pytest.raises(RuntimeError, match=rf"{who}\.backward\(\) called without a forward\(\) before it"):
        m.backward(data(spec.shape))
    y = m(data(spec.shape))
    who = type(m).__name__  # a lazy layer has become its concrete class
    bad = y.shape[:-1] + (y.shape[-1] + 1,)
    msg = rf"{who}\.backward: expected grad_output of shape {re.escape(str(tuple(y.shape)))} .*, got " \
          + re.escape(str(bad))
    if spec.checks_dtype:
        with pytest.raises(TypeError, match=rf"{who}\.backward: expected a floating-point input .* got "
                                            r"dtype int64"):
            m.backward(np.ones(y.shape, np.int64))
        y = m(data(spec.shape))
    with pytest.raises(ValueError, match=msg):
        m.backward(np.ones(bad, F))
    y = m(data(spec.shape))
    m.backward(np.ones_like(y))
    with pytest.raises(RuntimeError, match=r"or twice for one forward"):
        m.backward(np.ones_like(y))


# ------------------------------------------------------------------------- the loss
@pytest.mark.parametrize("logits,target,exc,msg", [
    (np.zeros((2, 3), np.int64), np.array([0, 1]), TypeError, r"CrossEntropyLoss: expected a floating-point"),
    (np.zeros((2, 3), np.complex64), np.array([0, 1]), TypeError, r"got dtype complex64"),
    (np.array(1.0, F), np.array(0), ValueError, r"expected logits of shape \(C,\), \(N, C\) or"),
    (np.zeros((2, 3), F), np.array([0, 1, 2]), ValueError, r"expected class-index target of shape \(2,\) "
                                                           r"for logits of shape \(2, 3\), got \(3,\)"),
    (np.zeros((2, 3), F), np.zeros((2, 4), F), ValueError, r"probability targets must have the logits' "
                                                           r"shape \(2, 3\), got \(2, 4\)"),
    (np.zeros((2, 3), F), np.array([True, False]), TypeError, r"target must hold class indices"),
    (np.zeros((2, 3), F), np.array([0, 3]), IndexError, r"Target 3 is out of bounds"),
    (np.zeros((2, 3), F), np.array([-1, 0]), IndexError, r"Target -1 is out of bounds"),
])
def test_cross_entropy_bad_input(logits, target, exc, msg):
    with pytest.raises(exc, match=msg):
        nn.CrossEntropyLoss()(logits, target)


def test_cross_entropy_protocol_nan_and_empty_batch():
    c = nn.CrossEntropyLoss()
    with pytest.raises(RuntimeError, match="without a forward"):
        c.backward()
    z = data((3, 4))
    z[1, 2] = np.nan
    loss = c(z, np.array([0, 1, 2]))
    assert np.isnan(loss)
    g = c.backward()
    assert np.isnan(g[1]).all() and np.isfinite(g[[0, 2]]).all()
    with pytest.raises(RuntimeError, match="or twice"):
        c.backward()
    cs = nn.CrossEntropyLoss(reduction="sum")
    assert cs(np.zeros((0, 4), F), np.zeros(0, np.int64)) == 0
    assert cs.backward().shape == (0, 4)
    c(z, np.array([0, 1, 2]))
    with pytest.raises(ValueError, match=r"grad_output must be a scalar or of the loss's shape \(\), got \(2,\)"):
        c.backward(np.ones(2))


def test_the_kinds_listed_are_the_kinds_tested():
    """KINDS is what the report counts; keep it in step with the tests above."""
    assert len(KINDS) == 19 and len(set(KINDS)) == len(KINDS)
    assert set(VIEWS) <= set(KINDS)
