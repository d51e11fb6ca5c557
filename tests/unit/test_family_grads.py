"""Finite-difference gradient checks (float64) of every layer of the family, and the blocked kernels
on shapes larger than a cache block against whole-array float64 formulas."""
from __future__ import annotations

import numpy as np
import pytest

from family_reference import (check_gradients, group_norm_ref, instance_norm_ref, layer_norm_ref,
                              lrn_ref, row_backward_ref)
from syncnorm import nn
from syncnorm.functional import norms
from syncnorm.functional.blocks import BLOCK_ELEMS

pytestmark = pytest.mark.usefixtures("kernel_engine")  # numpy and numba kernels

F64 = np.float64


def _randomize(m, rng):
    for p in m.parameters():
        p.data[...] = rng.uniform(0.5, 1.5, p.shape) if p is m.weight else rng.normal(0, 0.5, p.shape)


# shapes with short rows (< 16 values, the whole-array path) and long rows (the blocked path)
FD_CASES = [
    ("in1d_train", lambda: nn.InstanceNorm1d(3, affine=True, dtype=F64), (2, 3, 5), True),
    ("in1d_unbatched", lambda: nn.InstanceNorm1d(2, affine=True, dtype=F64), (2, 7), True),
    ("in2d_long_rows", lambda: nn.InstanceNorm2d(2, affine=True, dtype=F64), (2, 2, 4, 5), True),
    ("in2d_track_train", lambda: nn.InstanceNorm2d(3, affine=True, track_running_stats=True,
                                                   dtype=F64), (2, 3, 2, 3), True),
    ("in2d_track_eval", lambda: nn.InstanceNorm2d(3, affine=True, track_running_stats=True,
                                                  dtype=F64), (2, 3, 2, 3), False),
    ("in3d_nobias", lambda: nn.InstanceNorm3d(2, affine=True, bias=False, dtype=F64),
     (1, 2, 2, 2, 3), True),
    ("in2d_no_affine", lambda: nn.InstanceNorm2d(2, dtype=F64), (2, 2, 3, 3), True),
    ("gn_2d_input", lambda: nn.GroupNorm(2, 4, dtype=F64), (3, 4), True),
    ("gn_3d", lambda: nn.GroupNorm(3, 6, dtype=F64), (2, 6, 3), True),
    ("gn_long_rows", lambda: nn.GroupNorm(2, 4, dtype=F64), (2, 4, 17), True),
    ("gn_nobias", lambda: nn.GroupNorm(2, 4, bias=False, dtype=F64), (2, 4, 2, 2), True),
    ("gn_no_affine", lambda: nn.GroupNorm(1, 3, affine=False, dtype=F64), (2, 3, 2, 3), True),
    ("ln_last", lambda: nn.LayerNorm(6, dtype=F64), (4, 6), True),
    ("ln_long_rows", lambda: nn.LayerNorm([3, 7], dtype=F64), (2, 3, 7), True),
    ("ln_nobias", lambda: nn.LayerNorm(5, bias=False, dtype=F64), (2, 3, 5), True),
    ("ln_no_affine", lambda: nn.LayerNorm([2, 3], elementwise_affine=False, dtype=F64),
     (3, 2, 3), True),
    ("lrn_3d", lambda: nn.LocalResponseNorm(3, alpha=0.3, beta=0.75, k=1.5), (2, 5, 3), True),
    ("lrn_even_size_4d", lambda: nn.LocalResponseNorm(4, alpha=0.5, beta=1.2, k=0.7),
     (2, 5, 2, 2), True),
    ("lrn_size_gt_c_5d", lambda: nn.LocalResponseNorm(7, alpha=0.2), (1, 3, 2, 2, 2), True),
    ("lazy_bn2d", lambda: nn.LazyBatchNorm2d(dtype=F64), (3, 2, 2, 2), True),
    ("lazy_in1d", lambda: nn.LazyInstanceNorm1d(dtype=F64), (2, 3, 4), True),
]


@pytest.mark.parametrize("make,shape,training", [c[1:] for c in FD_CASES],
                         ids=[c[0] for c in FD_CASES])
def test_finite_differences(make, shape, training):
    rng = np.random.default_rng(7)
    m = make()
    x = rng.normal(1.0, 2.0, shape)
    m(x)  # materializes lazy modules; a first step of running statistics
    _randomize(m, rng)
    if getattr(m, "track_running_stats", False):
        m.running_mean[...] = rng.normal(0, 1, m.running_mean.shape)
        m.running_var[...] = rng.uniform(0.5, 2, m.running_var.shape)
    m.train(training)
    check_gradients(m, x, rng)


# ------------------------------------------------------------------ larger than a cache block
def _fwd_bwd(m, x, dy):
    m.zero_grad()
    y = m(x)
    dx = m.backward(dy)
    return y, dx, {n: p.grad for n, p in m.named_parameters()}


@pytest.mark.parametrize("shape,G", [((3, 8, 40, 50), 4), ((2, 6, 7, 3), 3),
                                     ((1, 4, BLOCK_ELEMS + 5), 2)])
def test_group_norm_blocked_against_formula(shape, G):
    rng = np.random.default_rng(1)
    C = shape[1]
    m = nn.GroupNorm(G, C, dtype=F64)
    _randomize(m, rng)
    x = rng.normal(3.0, 2.0, shape)
    dy = rng.normal(0, 1, shape)
    y, dx, g = _fwd_bwd(m, x, dy)
    w, b = m.weight.data, m.bias.data
    np.testing.assert_allclose(y, group_norm_ref(x, G, w, b, m.eps), rtol=0, atol=1e-12)
    N = shape[0]
    xg, dyg = x.reshape(N, G, -1), (dy * w.reshape((1, C) + (1,) * (x.ndim - 2))).reshape(N, G, -1)
    dx_ref = row_backward_ref(dyg, xg, None, m.eps, (2,)).reshape(shape)
    np.testing.assert_allclose(dx, dx_ref, rtol=0, atol=1e-11)
    xhat = group_norm_ref(x, G, None, None, m.eps)
    axes = (0,) + tuple(range(2, x.ndim))
    np.testing.assert_allclose(g["weight"], (dy * xhat).sum(axis=axes), rtol=1e-11, atol=1e-10)
    np.testing.assert_allclose(g["bias"], dy.sum(axis=axes), rtol=1e-11, atol=1e-10)


@pytest.mark.parametrize("block", [None, 4096], ids=["default_blocks", "small_blocks"])
@pytest.mark.parametrize("shape,k", [((6, 70, 80), 1), ((2, 3, BLOCK_ELEMS // 3 + 7), 2),
                                     ((5000, 12), 1), ((3, 4, 5), 3), ((11, 7001), 1),
                                     ((2, 9, 3, 4000), 2)])
def test_layer_norm_blocked_against_formula(shape, k, block, monkeypatch):
    """Rows shorter than a block, and rows longer than one (pieces of up to 8 rows): with the
    default block and with a small one, so that both layouts meet every shape."""
    if block is not None:
        monkeypatch.setattr(norms, "ELEM_BLOCK", block)
    rng = np.random.default_rng(2)
    m = nn.LayerNorm(shape[len(shape) - k:], dtype=F64)
    _randomize(m, rng)
    x = rng.normal(-2.0, 3.0, shape)
    dy = rng.normal(0, 1, shape)
    y, dx, g = _fwd_bwd(m, x, dy)
    w, b = m.weight.data, m.bias.data
    np.testing.assert_allclose(y, layer_norm_ref(x, k, w, b, m.eps), rtol=0, atol=1e-12)
    axes = tuple(range(x.ndim - k, x.ndim))
    np.testing.assert_allclose(dx, row_backward_ref(dy, x, w, m.eps, axes), rtol=0, atol=1e-11)
    xhat = layer_norm_ref(x, k, None, None, m.eps)
    lead = tuple(range(x.ndim - k))
    np.testing.assert_allclose(g["weight"], (dy * xhat).sum(axis=lead), rtol=1e-11, atol=1e-10)
    np.testing.assert_allclose(g["bias"], dy.sum(axis=lead), rtol=1e-11, atol=1e-10)


def test_instance_norm_blocked_against_formula():
    rng = np.random.default_rng(3)
    shape = (4, 6, 30, 40)
    m = nn.InstanceNorm2d(6, affine=True, dtype=F64)
    _randomize(m, rng)
    x = rng.normal(5.0, 0.5, shape)
    dy = rng.normal(0, 1, shape)
    y, dx, g = _fwd_bwd(m, x, dy)
    w = m.weight.data.reshape(1, 6, 1, 1)
    np.testing.assert_allclose(y, instance_norm_ref(x, m.weight.data, m.bias.data, m.eps), atol=1e-12)
    np.testing.assert_allclose(dx, row_backward_ref(dy, x, w, m.eps, (2, 3)), rtol=0, atol=1e-11)


@pytest.mark.parametrize("shape,size", [((2, 16, 40, 50), 5), ((3, 7, 5000), 2), ((1, 3, 20), 9)])
def test_lrn_blocked_against_formula(shape, size):
    rng = np.random.default_rng(4)
    m = nn.LocalResponseNorm(size, alpha=0.1, beta=0.75, k=1.0)
    x = rng.normal(0.0, 2.0, shape)
    np.testing.assert_allclose(m(x), lrn_ref(x, size, 0.1, 0.75, 1.0), rtol=1e-13, atol=1e-14)
    # backward: directional derivative along a random direction, by central differences
    dy = rng.normal(0, 1, shape)
    dx = m.backward(dy)
    v = rng.normal(0, 1, shape)
    h = 1e-6
    num = (np.sum(lrn_ref(x + h * v, size, 0.1, 0.75, 1.0) * dy)
           - np.sum(lrn_ref(x - h * v, size, 0.1, 0.75, 1.0) * dy)) / (2 * h)
    assert abs(num - np.sum(dx * v)) <= 1e-6 * max(1.0, abs(num))


@pytest.mark.parametrize("dtype,tol", [(np.float16, 3e-3), (np.float32, 3e-6)])
def test_layer_norm_low_precision_long_rows(dtype, tol, monkeypatch):
    """The converting (float16) and direct (float32) paths of the long-row layout."""
    monkeypatch.setattr(norms, "ELEM_BLOCK", 4096)
    rng = np.random.default_rng(5)
    x = rng.normal(1.0, 2.0, (11, 7001)).astype(dtype)
    dy = rng.normal(0, 1, x.shape).astype(dtype)
    m, m64 = nn.LayerNorm(7001), nn.LayerNorm(7001, dtype=F64)
    _randomize(m, rng)
    m64.weight.data[...], m64.bias.data[...] = m.weight.data, m.bias.data
    y, dx, g = _fwd_bwd(m, x, dy)
    y64, dx64, g64 = _fwd_bwd(m64, x.astype(F64), dy.astype(F64))
    assert y.dtype == dtype and dx.dtype == dtype
    for a, b in ((y, y64), (dx, dx64), (g["weight"], g64["weight"]), (g["bias"], g64["bias"])):
        assert np.abs(a.astype(F64) - b).max() <= tol * max(1.0, np.abs(b).max())
