"""The BatchNorm kernels' code paths against float64 formulas: row pieces, re-summed rows, short
rows, expanded and broadcast constants, long rows, folded and split means, the factored input
gradient and its fallbacks (a zero weight, output sharing dy's memory), float16."""
from __future__ import annotations

import numpy as np
import pytest

import syncnorm.functional.moments  # noqa: F401  (the module, not the function of that name)
from syncnorm.functional import batch_norm as bn
from syncnorm.functional import blocks, elementwise

pytestmark = pytest.mark.usefixtures("kernel_engine")  # numpy and numba kernels

MO = __import__("sys").modules["syncnorm.functional.moments"]


def _ref_stats(x3):
    x = x3.astype(np.float64)
    return x.mean(axis=(0, 2)), x.var(axis=(0, 2))


def _close(a, b, tol):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    scale = max(1.0, float(np.abs(b).max(initial=0)))
    assert np.abs(a - b).max(initial=0) <= tol * scale, float(np.abs(a - b).max(initial=0))


SHAPES = [(4, 3, 20), (8, 5, 16), (3, 2, 7), (8, 6, 49), (2, 3, 800), (5, 4, 300),
          (1, 7, 33), (2, 2, blocks.ROW_PIECE * 2 + 7), (2, 2, blocks.ELEM_BLOCK + 5),
          # short rows (the column kernels): one block, several blocks, a row wider than a block
          (600, 5, 1), (300, 7, 9), (40000, 3, 1), (3, 40000, 1)]


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("loc", [0.5, 300.0])
def test_moments_match_float64(shape, loc):
    rng = np.random.default_rng(0)
    x3 = (loc + 2.0 * rng.standard_normal(shape)).astype(np.float32)
    K0 = np.full(shape[1], 0.25)
    n, s1, s2 = MO.moments(x3, K0)
    mean, var = MO.mean_var(n, s1, s2, K0)
    rm, rv = _ref_stats(x3)
    np.testing.assert_allclose(mean, rm, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(var, rv, rtol=2e-5)


def test_moments_rows_far_from_zero_and_constant_rows():
    """Rows with |mean| >> std are summed again about their mean; constant rows give var 0."""
    rng = np.random.default_rng(1)
    x3 = (1000 + 0.01 * rng.standard_normal((6, 4, 50))).astype(np.float32)
    x3[:, 1] = 0.5 * rng.standard_normal((6, 50))  # a channel near zero: fast path
    x3[:, 2] = 7.0  # constant channel
    n, s1, s2 = MO.moments(x3, np.zeros(4))
    mean, var = MO.mean_var(n, s1, s2, np.zeros(4))
    rm, rv = _ref_stats(x3)
    np.testing.assert_allclose(mean, rm, rtol=1e-9, atol=1e-6)
    np.testing.assert_allclose(var[[0, 1, 3]], rv[[0, 1, 3]], rtol=1e-4)
    assert var[2] == 0.0


def test_moments_float16_sums_in_float32():
    rng = np.random.default_rng(2)
    x3 = rng.standard_normal((4, 3, 200)).astype(np.float16)
    n, s1, s2 = MO.moments(x3)
    mean, var = MO.mean_var(n, s1, s2)
    rm, rv = _ref_stats(x3)
    np.testing.assert_allclose(mean, rm, atol=1e-6)
    np.testing.assert_allclose(var, rv, rtol=1e-5)


def _affine_ref(x3, mean, invstd, w, b):
    sh = (1, -1, 1)
    return (x3.astype(np.float64) - mean.reshape(sh)) * (invstd * w).reshape(sh) + b.reshape(sh)


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("loc,std", [(0.5, 2.0), (1000.0, 0.01)])
def test_normalize_and_backward_match_float64(shape, loc, std):
    rng = np.random.default_rng(3)
    C = shape[1]
    x3 = (loc + std * rng.standard_normal(shape)).astype(np.float32)
    dy3 = rng.standard_normal(shape).astype(np.float32)
    mean, var = _ref_stats(x3)
    invstd = 1 / np.sqrt(var + 1e-5)
    w, b = rng.uniform(0.5, 1.5, C), rng.normal(size=C)
    y = bn.normalize(x3, mean, invstd, w, b)
    _close(y, _affine_ref(x3, mean, invstd, w, b), 2e-6 * (1 + loc * np.max(invstd) * 1e-3))
    # backward sums, with and without the fold
    x64, d64 = x3.astype(np.float64), dy3.astype(np.float64)
    g_ref = d64.sum(axis=(0, 2))
    h_ref = np.einsum("acm,acm->c", d64, x64 - mean[None, :, None])
    # h's error scale: sum |dy * (x - mean)| ~ A*M*std (h itself may be much smaller)
    h_atol = 2e-5 * max(1.0, float(np.sqrt(var).max()) * shape[0] * shape[2])
    for inv in (None, invstd):  # centred, and folded when |mean| <= 4 std
        g, h = bn.backward_reduce(dy3, x3, mean, inv)
        _close(g, g_ref, 1e-5)
        assert np.abs(h - h_ref).max() <= h_atol
    # input gradient against the float64 formula
    n = shape[0] * shape[2]
    k = invstd * w
    dx_ref = k.reshape(1, -1, 1) * (d64 - (g_ref / n).reshape(1, -1, 1) - (x64 - mean.reshape(1, -1, 1))
                                    * (h_ref * invstd ** 2 / n).reshape(1, -1, 1))
    dx = bn.backward_elemt(dy3, x3, mean, invstd, w, g_ref, h_ref, n)
    _close(dx, dx_ref, 5e-5)


def test_backward_elemt_fallbacks_zero_weight_and_output_on_dy():
    rng = np.random.default_rng(4)
    x3 = rng.standard_normal((6, 4, 70)).astype(np.float32)
    dy3 = rng.standard_normal(x3.shape).astype(np.float32)
    mean, var = _ref_stats(x3)
    invstd = 1 / np.sqrt(var + 1e-5)
    w = np.array([1.0, 0.0, 2.0, -1.0])  # k = 0 on one channel: no k-factored form
    g, h = bn.backward_reduce(dy3, x3, mean, invstd)
    n = 6 * 70
    ref = bn.backward_elemt(dy3, x3, mean, invstd, np.ones(4), g, h, n) * w.reshape(1, -1, 1)
    dx = bn.backward_elemt(dy3, x3, mean, invstd, w, g, h, n)
    _close(dx, ref, 1e-5)
    assert np.all(dx[:, 1] == 0)
    # the output may be dy's own memory (dy is read before it is overwritten)
    expect = bn.backward_elemt(dy3, x3, mean, invstd, np.ones(4), g, h, n)
    d2 = dy3.copy()
    bn.backward_elemt(d2, x3, mean, invstd, np.ones(4), g, h, n, out3=d2)
    _close(d2, expect, 1e-6)


def test_float16_io_and_eval_backward():
    rng = np.random.default_rng(5)
    x3 = rng.standard_normal((4, 3, 100)).astype(np.float16)
    mean, var = _ref_stats(x3)
    invstd = 1 / np.sqrt(var + 1e-5)
    y = bn.normalize(x3, mean, invstd, None, None)
    assert y.dtype == np.float16
    _close(y, _affine_ref(x3, mean, invstd, np.ones(3), np.zeros(3)), 2e-3)
    dy = rng.standard_normal(x3.shape).astype(np.float32)
    dx = bn.eval_backward(dy, invstd, np.array([1.0, 2.0, 0.5]))
    _close(dx, dy * (invstd * [1.0, 2.0, 0.5]).reshape(1, -1, 1), 1e-6)


def test_unbuffered_restores_the_buffer_size():
    before = np.getbufsize()
    with elementwise.unbuffered(784):
        assert np.getbufsize() == 784
    with elementwise.unbuffered(None):
        assert np.getbufsize() == before
    assert np.getbufsize() == before
