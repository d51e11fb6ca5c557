"""The kernel engine switch (SYNCNORM_KERNELS, SYNCNORM_NUM_THREADS) and what only the compiled
engine has: lazy import, fused passes equal to the separate ones bit for bit, repeatable results,
NaN/Inf propagation, the 16-bit storage conversions, the same results with several threads."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from syncnorm.functional import engine

numba = pytest.importorskip("numba", reason="the compiled engine needs numba (syncnorm[fast])")

from syncnorm.functional.compiled import batch_norm as CB  # noqa: E402
from syncnorm.functional.compiled import bn_kernels  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _run(code: str, **env: str) -> str:
    e = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""), **env)
    r = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=e, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    return r.stdout


def test_env_choice_and_errors(monkeypatch):
    monkeypatch.setenv("SYNCNORM_KERNELS", "bogus")
    with pytest.raises(ValueError, match="SYNCNORM_KERNELS must be one of numpy, numba, auto"):
        engine.requested()
    monkeypatch.setenv("SYNCNORM_NUM_THREADS", "0")
    with pytest.raises(ValueError, match="SYNCNORM_NUM_THREADS must be a positive integer"):
        engine.num_threads()
    monkeypatch.delenv("SYNCNORM_NUM_THREADS")
    with pytest.raises(ValueError, match="engine must be one of"):
        with engine.use("fortran"):
            pass
    with engine.use("numpy"):
        assert engine.name() == "numpy" and engine.kernels() is None
        assert engine.describe().startswith("numpy")
    with engine.use("numba"):
        assert engine.name() == "numba" and engine.kernels() is not None
        assert engine.describe().startswith("numba ")


def test_numba_is_imported_only_when_a_kernel_runs():
    out = _run("""
        import sys
        import syncnorm, syncnorm.nn, syncnorm.functional
        print("numba" in sys.modules)
        import numpy as np
        syncnorm.nn.BatchNorm1d(3)(np.ones((4, 3), np.float32))
        print("numba" in sys.modules)
    """, SYNCNORM_KERNELS="auto")
    assert out.split() == ["False", "True"]
    out = _run("""
        import sys, numpy as np, syncnorm.nn
        syncnorm.nn.BatchNorm1d(3)(np.ones((4, 3), np.float32))
        print("numba" in sys.modules)
    """, SYNCNORM_KERNELS="numpy")
    assert out.split() == ["False"]


def test_reshift_ratio_matches_the_numpy_kernels():
    from syncnorm.functional.moments import RESHIFT_RATIO
    assert bn_kernels.RESHIFT_RATIO == RESHIFT_RATIO


SHAPES = [(4, 3, 20), (8, 6, 49), (3, 5, 1), (300, 7, 1), (64, 9, 3), (2, 4, 1000)]


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16])
def test_fused_passes_equal_separate_passes_bitwise(shape, dtype):
    rng = np.random.default_rng(3)
    x = (5 + 2 * rng.standard_normal(shape)).astype(dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    C = shape[1]
    K = np.full(C, 4.0)
    w, b = rng.standard_normal(C), rng.standard_normal(C)
    y = np.empty_like(x)
    mean, var, invstd = CB.forward_local(x, K, w, b, 1e-5, y)
    s1, s2 = CB.moments(x, K)
    n = shape[0] * shape[2]
    d = s1 / n
    np.testing.assert_array_equal(mean, K + d)
    np.testing.assert_array_equal(var, np.maximum(s2 / n - d * d, 0.0))
    np.testing.assert_array_equal(invstd, 1.0 / np.sqrt(var + 1e-5))
    np.testing.assert_array_equal(y, CB.normalize(x, mean, invstd, w, b))
    dx = np.empty_like(x)
    g, h = CB.backward_local(dy, x, mean, invstd, w, dx)
    g2, h2 = CB.backward_reduce(dy, x, mean)
    np.testing.assert_array_equal(g, g2)
    np.testing.assert_array_equal(h, h2)
    np.testing.assert_array_equal(dx, CB.backward_elemt(dy, x, mean, invstd, w, g, h, n))
    # and again: the same bits
    y2 = np.empty_like(x)
    CB.forward_local(x, K, w, b, 1e-5, y2)
    np.testing.assert_array_equal(y, y2)


def test_poorly_shifted_channel_falls_back_to_the_statistics_step():
    from syncnorm import nn
    rng = np.random.default_rng(4)
    x = (1e4 + 1e-2 * rng.standard_normal((16, 3, 50))).astype(np.float64)
    assert CB.forward_local(x, np.zeros(3), None, None, 1e-5, np.empty_like(x)) is None
    m = nn.BatchNorm1d(3, eps=0.0, dtype="float64", affine=False, track_running_stats=False)
    y = m(x)
    ref = (x - x.mean(axis=(0, 2), keepdims=True)) / x.std(axis=(0, 2), keepdims=True)
    np.testing.assert_allclose(y, ref, atol=1e-7)


@pytest.mark.parametrize("shape", [(4, 3, 20), (40, 3, 1)], ids=str)
def test_nan_and_inf_propagate(shape):
    x = np.ones(shape, np.float32)
    x[1, 1, 0] = np.nan
    x[2, 2, 0] = np.inf
    y = np.empty_like(x)
    # (shift 1: a constant channel's shift must be its mean, else the step sums again)
    mean, var, invstd = CB.forward_local(x, np.ones(3), None, None, 1e-5, y)
    assert np.isnan(mean[1]) and np.isnan(y[:, 1]).all()
    assert not np.isfinite(mean[2]) and np.isnan(y[:, 2]).all()
    assert mean[0] == 1.0 and (y[:, 0] == 0).all()


def test_float16_and_bfloat16_bits_round_like_numpy_and_torch():
    rng = np.random.default_rng(5)
    vals = np.concatenate([rng.standard_normal(2000) * 10.0 ** rng.integers(-9, 6, 2000),
                           [0.0, -0.0, np.inf, -np.inf, 65504.0, 65520.0, 6e-8, 1e-8, 2.9e-8]])
    f32 = vals.astype(np.float32)
    with np.errstate(over="ignore"):
        half = f32.astype(np.float16)
    x = f32.reshape(1, 1, -1)
    # y = (x - 0) * 1 + (-0): x itself, -0.0 included
    eye = (np.zeros(1, np.float32), np.ones(1, np.float32), np.full(1, -0.0, np.float32))
    out = np.empty(x.shape, np.uint16)
    bn_kernels.row_affine(x, out, *eye)
    np.testing.assert_array_equal(out.view(np.float16).ravel(), half)
    back = np.empty(x.shape, np.float32)
    bn_kernels.row_affine(half.view(np.uint16).reshape(x.shape), back, *eye)
    np.testing.assert_array_equal(back.ravel(), half.astype(np.float32))
    nan = np.empty((1, 1, 1), np.uint16)
    bn_kernels.row_affine(np.full((1, 1, 1), np.nan, np.float32), nan, *eye)
    assert np.isnan(nan.view(np.float16)[0, 0, 0])
    torch = pytest.importorskip("torch")
    tb = torch.from_numpy(f32).to(torch.bfloat16)
    bits = np.empty(x.shape, np.int16)
    bn_kernels.row_affine(x, bits, *eye)
    np.testing.assert_array_equal(bits.ravel(), tb.view(torch.int16).numpy())
    back = np.empty(x.shape, np.float32)
    bn_kernels.row_affine(bits, back, *eye)
    np.testing.assert_array_equal(back.ravel(), tb.float().numpy())


def test_two_threads_give_the_same_bits():
    code = """
        import numpy as np
        from syncnorm.functional import engine
        B = engine.kernels().batch_norm
        rng = np.random.default_rng(6)
        out = []
        for shape in [(8, 40, 30), (3000, 200, 1)]:
            x = rng.standard_normal(shape).astype(np.float32)
            y = np.empty_like(x)
            m, v, i = B.forward_local(x, np.zeros(shape[1]), None, None, 1e-5, y)
            dx = np.empty_like(x)
            g, h = B.backward_local(x, x, m, i, None, dx)
            out += [m, v, y, g, h, dx]
        import hashlib
        print(hashlib.sha256(b"".join(a.tobytes() for a in out)).hexdigest(),
              engine.describe())
    """
    one = _run(code, SYNCNORM_NUM_THREADS="1", SYNCNORM_KERNELS="numba").split()
    two = _run(code, SYNCNORM_NUM_THREADS="2", SYNCNORM_KERNELS="numba").split()
    assert one[0] == two[0]
    assert "2 threads" in " ".join(two) or numba.config.NUMBA_NUM_THREADS < 2


@pytest.mark.parametrize("shape,groups", [((3, 8, 20), 4), ((2, 6, 5), 6), ((4, 3, 1000), 1)],
                         ids=str)
@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_fused_row_norms_equal_separate_passes(shape, groups, dtype):
    from syncnorm.functional import norms
    rng = np.random.default_rng(7)
    x = (3 + rng.standard_normal(shape)).astype(dtype)
    C = shape[1]
    w, b = rng.standard_normal(C), rng.standard_normal(C)
    with engine.use("numba"):
        y, mean, var, invstd = norms.channel_step(x, groups, 1e-5, w, b)
        m2, v2 = norms.row_stats(x.reshape(1, shape[0] * groups, -1))
        # the float32 piece sums are vectorized where they are inlined: equal to float32 rounding
        np.testing.assert_allclose(mean, m2, rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(var, v2, rtol=1e-5, atol=1e-7)
        # the normalize pass is strict IEEE: the same bits from the same statistics
        np.testing.assert_array_equal(y, norms.channel_forward(x, groups, mean, invstd, w, b))
        y_again = norms.channel_step(x, groups, 1e-5, w, b)[0]
        np.testing.assert_array_equal(y, y_again)
        x2 = x.reshape(shape[0], -1)
        D = x2.shape[1]
        w2, b2 = rng.standard_normal(D), rng.standard_normal(D)
        y2, mean, var, invstd = norms.element_step(x2, 1e-5, w2, b2)
    with engine.use("numpy"):  # LayerNorm: the numpy pass rounds differently; close, not equal
        yr, mr, vr, ir = norms.element_step(x2, 1e-5, w2, b2)
    np.testing.assert_allclose(mean, mr, rtol=1e-6, atol=1e-6)
    tol = 2e-5 if dtype == np.float32 else 2e-2
    np.testing.assert_allclose(y2.astype(np.float64), yr.astype(np.float64), rtol=tol, atol=tol)


@pytest.mark.parametrize("beta", [0.5, 0.75, 1.0, 0.6])
@pytest.mark.parametrize("dtype", [np.float64, np.float32, np.float16])
def test_lrn_short_powers_compiled_others_numpy(beta, dtype, monkeypatch):
    """LocalResponseNorm runs compiled for beta 0.5, 0.75 and 1 (square roots, a division), the
    numpy kernel otherwise; both agree (float64 to 1e-12 of the largest value: only the power's
    rounding differs, the input gradient's two terms can cancel, and k < 0 puts some D near 0;
    16-bit and float32 results to one unit in the last place: the compiled kernels round float64
    to float32, then to float16) and zeros, negative and infinite denominators give numpy's inf
    and NaN."""
    from syncnorm import nn
    from syncnorm.functional.compiled import lrn as compiled_lrn
    calls = []
    real = compiled_lrn.forward
    monkeypatch.setattr(compiled_lrn, "forward", lambda *a: calls.append(1) or real(*a))
    rng = np.random.default_rng(5)
    x = (3 * rng.standard_normal((2, 9, 70))).astype(dtype)
    x[0, :, 0] = 0.0  # with k = 0: D = 0 there, y = 0 * inf = NaN
    x[1, 2, 3] = np.inf
    dy = rng.standard_normal(x.shape).astype(dtype)
    out = {}
    for eng, k in (("numpy", 0.0), ("numba", 0.0), ("numpy", -0.5), ("numba", -0.5)):
        with engine.use(eng), np.errstate(all="ignore"):
            layer = nn.LocalResponseNorm(4, alpha=0.4, beta=beta, k=k)
            out[eng, k] = layer(x), layer.backward(dy)
    assert len(calls) == (2 if beta != 0.6 else 0)
    ulp = float(np.finfo(dtype).eps)
    for k in (0.0, -0.5):
        for a, b in zip(out["numba", k], out["numpy", k]):
            a, b = a.astype(np.float64), b.astype(np.float64)
            np.testing.assert_array_equal(np.isnan(a), np.isnan(b))
            if dtype == np.float64:
                np.testing.assert_allclose(a, b, rtol=0, atol=1e-12 * np.nanmax(np.abs(b[np.isfinite(b)])))
            else:
                np.testing.assert_allclose(a, b, rtol=ulp, atol=0)


def test_checkpoints_record_the_engine_that_ran(monkeypatch):
    """The training checkpoint's numerics name the engine the layers ran, whatever the variable
    says (unset means auto: numba here)."""
    from syncnorm.training.numerics import kernel_engine
    monkeypatch.delenv("SYNCNORM_KERNELS", raising=False)
    for eng in ("numba", "numpy"):
        with engine.use(eng):
            assert kernel_engine() == eng
