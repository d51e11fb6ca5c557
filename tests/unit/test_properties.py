"""Property tests for every normalization layer, against float64 formulas written here from torch's
documented definitions (not syncnorm's kernels).

For random shapes (empty batches included), dtypes (float16/32/64), modes (train/eval, affine,
running statistics, momentum None), groups, normalized shapes, LRN windows and input offsets:

* finite input gives a finite output of the input's shape and dtype, equal to the float64 formula;
* the running statistics move as torch's formula says (or not at all for an empty batch);
* the input and parameter gradients equal those of the same layer in float64, and in float64 they
  equal central finite differences of sum(y * dy) (directional derivatives along random directions).

Every run draws 50 derandomized examples per property (the same ones each time, so CI is stable);
`SYNCNORM_SLOW=1` (or --runslow) adds 1,000 fresh random examples per property.
"""
from __future__ import annotations

import copy
import warnings
from dataclasses import dataclass, field

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from syncnorm import nn
from syncnorm.nn.lazy import is_lazy

pytestmark = pytest.mark.usefixtures("kernel_engine")  # numpy and numba kernels

NORMAL = settings(max_examples=50, deadline=None, derandomize=True, database=None,
                  suppress_health_check=list(HealthCheck))
SLOW = settings(max_examples=1000, deadline=None, database=None,
                suppress_health_check=list(HealthCheck))
KINDS = ["BatchNorm1d", "BatchNorm2d", "BatchNorm3d", "SyncBatchNorm", "InstanceNorm1d",
         "InstanceNorm2d", "InstanceNorm3d", "GroupNorm", "LayerNorm", "LocalResponseNorm",
         "LazyBatchNorm1d", "LazyBatchNorm2d", "LazyBatchNorm3d", "LazyInstanceNorm1d",
         "LazyInstanceNorm2d", "LazyInstanceNorm3d"]
BN_NDIM = {"BatchNorm1d": (2, 3), "BatchNorm2d": (4,), "BatchNorm3d": (5,), "SyncBatchNorm": (2, 3, 4, 5)}
IN_NB = {"InstanceNorm1d": 2, "InstanceNorm2d": 3, "InstanceNorm3d": 4}


@dataclass
class Case:
    kind: str
    shape: tuple[int, ...]
    dtype: str
    kw: dict
    training: bool
    offset: float
    scale: float
    seed: int
    extra: dict = field(default_factory=dict)

    @property
    def base(self) -> str:
        return self.kind.replace("Lazy", "")


@st.composite
def cases(draw) -> Case:
    kind = draw(st.sampled_from(KINDS))
    base = kind.replace("Lazy", "")
    dtype = draw(st.sampled_from(["float16", "float32", "float64"]))
    N = draw(st.integers(0, 4))
    C = draw(st.integers(1, 5))
    training = draw(st.booleans())
    kw: dict = {}
    extra: dict = {}
    if base in BN_NDIM:
        ndim = draw(st.sampled_from(BN_NDIM[base]))
        shape = (N, C) + tuple(draw(st.integers(1, 3)) for _ in range(ndim - 2))
        kw = dict(momentum=draw(st.sampled_from([0.1, None, 0.8])), affine=draw(st.booleans()),
                  track_running_stats=draw(st.booleans()), eps=draw(st.sampled_from([1e-5, 1e-3])))
    elif base in IN_NB:
        nb = IN_NB[base]
        spatial = tuple(draw(st.integers(1, 3)) for _ in range(nb - 1))
        unbatched = draw(st.booleans())
        shape = ((C,) if unbatched else (N, C)) + spatial
        kw = dict(momentum=draw(st.sampled_from([0.1, None])), affine=draw(st.booleans()),
                  track_running_stats=draw(st.booleans()))
    elif base == "GroupNorm":
        G = draw(st.sampled_from([g for g in range(1, C + 1) if C % g == 0]))
        shape = (N, C) + tuple(draw(st.integers(1, 3)) for _ in range(draw(st.integers(0, 2))))
        kw = dict(num_groups=G, num_channels=C, affine=draw(st.booleans()), eps=draw(st.sampled_from([1e-5, 1e-2])))
    elif base == "LayerNorm":
        shape = (N,) + tuple(draw(st.integers(1, 4)) for _ in range(draw(st.integers(1, 3))))
        k = draw(st.integers(1, len(shape) - 1))
        kw = dict(normalized_shape=shape[len(shape) - k:], elementwise_affine=draw(st.booleans()),
                  bias=draw(st.booleans()))
    else:  # LocalResponseNorm
        shape = (N, C) + tuple(draw(st.integers(1, 3)) for _ in range(draw(st.integers(1, 2))))
        kw = dict(size=draw(st.integers(1, 6)), alpha=draw(st.sampled_from([1e-4, 0.1, 1.0])),
                  beta=draw(st.sampled_from([0.75, 0.5, 1.3])), k=draw(st.sampled_from([1.0, 2.0])))
    if kind.startswith("Lazy"):
        kw.pop("momentum", None) if draw(st.booleans()) else None
    offset = draw(st.sampled_from([0.0, 3.0, -40.0, 1000.0]))
    scale = draw(st.sampled_from([0.01, 0.1, 1.0, 5.0]))
    if dtype == "float16":
        offset, scale = offset / 10, max(scale, 1.0)  # keep float16 inputs meaningful
    return Case(kind, shape, dtype, kw, training, offset, scale, draw(st.integers(0, 2**31 - 1)), extra)


# ------------------------------------------------------------------------------ building
def build(case: Case, dtype: str | None = None) -> nn.Module:
    dt = np.dtype(dtype or case.dtype)
    kw = dict(case.kw)
    if case.kind.startswith("Lazy"):
        m = getattr(nn, case.kind)(dtype=dt, **kw)
    elif case.base == "LocalResponseNorm":
        m = nn.LocalResponseNorm(**kw)
    elif case.base == "GroupNorm":
        m = nn.GroupNorm(kw.pop("num_groups"), kw.pop("num_channels"), dtype=dt, **kw)
    elif case.base == "LayerNorm":
        m = nn.LayerNorm(kw.pop("normalized_shape"), dtype=dt, **kw)
    else:
        C = case.shape[0] if case.base in IN_NB and len(case.shape) == IN_NB[case.base] else case.shape[1]
        m = getattr(nn, case.base)(C, dtype=dt, **kw)
    rng = np.random.default_rng(case.seed + 1)
    if not case.kind.startswith("Lazy"):  # random parameters and running statistics
        for p in m.parameters():
            p.data[...] = rng.uniform(0.5, 1.5, p.shape) if p is m.weight else rng.normal(0, 1, p.shape)
        if getattr(m, "running_mean", None) is not None:
            m.running_mean[...] = case.offset + rng.normal(0, 1, m.running_mean.shape)
            m.running_var[...] = rng.uniform(0.5, 2.0, m.running_var.shape) * case.scale ** 2
            m.num_batches_tracked[...] = 3
    return m.train(case.training)


def same_params(dst: nn.Module, src: nn.Module) -> nn.Module:
    """dst (another dtype) gets src's parameters and buffers, exactly as values."""
    for (_, p), (_, q) in zip(dst.named_parameters(), src.named_parameters()):
        p.data[...] = q.data
    for (_, b), (_, c) in zip(dst.named_buffers(), src.named_buffers()):
        b[...] = c
    return dst


def inputs(case: Case) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(case.seed)
    x = (case.offset + case.scale * rng.normal(size=case.shape)).astype(case.dtype)
    dy = rng.normal(size=case.shape).astype(case.dtype)
    return x, dy


# ------------------------------------------------------------------------------ float64 formulas
def batched(case: Case, x: np.ndarray) -> np.ndarray:
    if case.base in IN_NB and x.ndim == IN_NB[case.base]:
        return x[None]
    return x


def reference(case: Case, m: nn.Module, x: np.ndarray) -> tuple[np.ndarray, dict]:
    """(y, running statistics after the step) in float64 from the definitions, for the layer's
    state before the step (m). An empty batch has NaN statistics that nothing uses: numpy's
    warnings about them are silenced there, and only there."""
    if x.size:
        return _reference(case, m, x)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return _reference(case, m, x)


def _reference(case: Case, m: nn.Module, x: np.ndarray) -> tuple[np.ndarray, dict]:
    x = x.astype(np.float64)
    lazy = any(is_lazy(v) for v in list(m._parameters.values()) + list(m._buffers.values()))
    state = {} if lazy else {k: np.array(v, dtype=np.float64) for k, v in m.state_dict().items()}
    kw, base = case.kw, case.base
    if base == "LocalResponseNorm":
        size, alpha, beta, k = kw["size"], kw["alpha"], kw["beta"], kw["k"]
        C = x.shape[1]
        sq = x ** 2
        div = np.zeros_like(x)
        for c in range(C):
            lo, hi = max(0, c - size // 2), min(C - 1, c + (size - 1) // 2)
            div[:, c] = sq[:, lo:hi + 1].sum(axis=1) / size
        return x / (k + alpha * div) ** beta, {}
    if base == "LayerNorm":
        k = len(kw["normalized_shape"])
        axes = tuple(range(x.ndim - k, x.ndim))
        mu, var = x.mean(axis=axes, keepdims=True), x.var(axis=axes, keepdims=True)
        y = (x - mu) / np.sqrt(var + 1e-5)
        if kw["elementwise_affine"]:
            y = y * state["weight"] + (state["bias"] if kw["bias"] else 0)
        return y, {}
    C = x.shape[0] if base in IN_NB and x.ndim == IN_NB[base] else x.shape[1]
    cshape = (1, C) + (1,) * (x.ndim - 2)
    w = state.get("weight", np.ones(C)).reshape(cshape) if "weight" in state else 1.0
    b = state.get("bias", np.zeros(C)).reshape(cshape) if "bias" in state else 0.0
    if m.__class__.__name__.startswith("Lazy"):  # materializes with ones / zeros
        w, b = 1.0, 0.0
    if base == "GroupNorm":
        N, G = x.shape[0], kw["num_groups"]
        xg = x.reshape(N, G, x.size // max(N * G, 1))
        mu, var = xg.mean(axis=2, keepdims=True), xg.var(axis=2, keepdims=True)
        y = ((xg - mu) / np.sqrt(var + kw["eps"])).reshape(x.shape)
        return y * w + b, {}
    track = kw.get("track_running_stats", True)
    momentum = kw.get("momentum", 0.1) if "momentum" in kw else 0.1
    eps = kw.get("eps", 1e-5)
    rm = state.get("running_mean", np.zeros(C))
    rv = state.get("running_var", np.ones(C))
    nbt = int(state.get("num_batches_tracked", 0))
    new = {}
    if base in IN_NB:
        xb = batched(case, x)
        N = xb.shape[0]
        cshape = (1, C) + (1,) * (xb.ndim - 2)
        if not np.isscalar(w):
            w, b = w.reshape(cshape), (b if np.isscalar(b) else b.reshape(cshape))
        axes = tuple(range(2, xb.ndim))
        S = int(np.prod(xb.shape[2:]))
        use_input = case.training or not track
        if use_input:
            mu, var = xb.mean(axis=axes, keepdims=True), xb.var(axis=axes, keepdims=True)
            y = (xb - mu) / np.sqrt(var + eps)
            if case.training and track and N * C * S > 0:
                f = 1.0 / (nbt + 1) if momentum is None else momentum
                new = {"running_mean": (1 - f) * rm + f * mu.reshape(N, C).mean(axis=0),
                       "running_var": (1 - f) * rv + f * (var.reshape(N, C) * S / (S - 1)).mean(axis=0),
                       "num_batches_tracked": nbt + 1}
        else:
            y = (xb - rm.reshape(cshape)) / np.sqrt(rv.reshape(cshape) + eps)
        return (y * w + b).reshape(x.shape), new
    # BatchNorm family
    axes = (0,) + tuple(range(2, x.ndim))
    n = x.size // C if C else 0
    use_batch = case.training or not track
    if use_batch:
        mu, var = x.mean(axis=axes, keepdims=True), x.var(axis=axes, keepdims=True)
        if case.training and track and n > 0:
            f = 1.0 / (nbt + 1) if momentum is None else momentum
            new = {"running_mean": (1 - f) * rm + f * mu.reshape(C),
                   "running_var": (1 - f) * rv + f * var.reshape(C) * n / (n - 1),
                   "num_batches_tracked": nbt + 1}
    else:
        mu, var = rm.reshape(cshape), rv.reshape(cshape)
    return (x - mu) / np.sqrt(var + eps) * w + b, new


def refuses(case: Case) -> str | None:
    """The error message the layer must give for this case, or None when it must compute."""
    base, x_shape = case.base, case.shape
    if base in BN_NDIM:
        n = int(np.prod(x_shape)) // x_shape[1]
        if case.training and n == 1:
            return "Expected more than 1 value per channel when training"
    if base in IN_NB:
        xb = x_shape if len(x_shape) == IN_NB[base] + 1 else (1,) + x_shape
        use_input = case.training or not case.kw.get("track_running_stats", True)
        if use_input and int(np.prod(xb[2:])) == 1 and xb[0] * xb[1] > 0:
            return "Expected more than 1 spatial element"
    if base == "GroupNorm" and x_shape[0] > 0:
        per_group = x_shape[1] // case.kw["num_groups"] * int(np.prod(x_shape[2:]))
        if per_group == 1:
            return "GroupNorm: each group holds 1 value"
    return None


# float64: statistics summed about a shift up to 1e4 standard deviations from the mean lose up to
# ~1e-8 of the variance (docs/numerics.md), i.e. ~5e-9 of the output
TOL = {"float64": 2e-8, "float32": 3e-5, "float16": 4e-3}


def close(got: np.ndarray, want: np.ndarray, dtype: str, what: str, case: Case) -> None:
    tol = TOL[dtype]
    scale = 1.0 + (np.abs(want).max() if want.size else 0.0)
    np.testing.assert_allclose(got.astype(np.float64), want, rtol=tol, atol=tol * scale,
                               err_msg=f"{what}: {case}")


# ------------------------------------------------------------------------------ the properties
def check_forward(case: Case) -> None:
    m = build(case)
    x, _ = inputs(case)
    msg = refuses(case)
    if msg is not None:
        with pytest.raises(ValueError, match=msg):
            m(x)
        return
    before = copy.deepcopy(m)
    y = m(x)
    assert y.shape == x.shape and y.dtype == x.dtype, case
    assert np.all(np.isfinite(y)), f"non-finite output for finite input: {case}"
    y_ref, new = reference(case, before, x)
    close(y, y_ref, case.dtype, "output", case)
    sd = m.state_dict() if new or not case.kind.startswith("Lazy") else {}
    for k, v in new.items():
        tol = 1e-9 if case.dtype == "float64" else (2e-6 if case.dtype == "float32" else 2e-3)
        close(np.asarray(sd[k]), np.asarray(v, dtype=np.float64), case.dtype if k != "num_batches_tracked"
              else "float64", k, case) if tol else None
    if not new and "running_mean" in sd and not case.kind.startswith("Lazy"):
        ref_state = before.state_dict()
        for k in ("running_mean", "running_var", "num_batches_tracked"):
            np.testing.assert_array_equal(sd[k], ref_state[k], err_msg=f"{k} moved: {case}")


def loss_and_grads(m: nn.Module, x: np.ndarray, dy: np.ndarray):
    m = copy.deepcopy(m)
    y = m(x)
    dx = m.backward(dy)
    return float(np.sum(y.astype(np.float64) * dy)), dx, [p.grad for p in m.parameters()]


def check_gradients(case: Case) -> None:
    if refuses(case) is not None:
        return
    m = build(case)
    x, dy = inputs(case)
    m64 = build(case, "float64")
    if case.kind.startswith("Lazy"):  # materialize both now (ones and zeros), as a forward would
        m.initialize_parameters(x)
        m64.initialize_parameters(x.astype(np.float64))
    same_params(m64, m)
    _, dx, grads = loss_and_grads(m, x, dy)
    x64, dy64 = x.astype(np.float64), dy.astype(np.float64)
    _, dx64, grads64 = loss_and_grads(m64, x64, dy64)
    assert dx.shape == x.shape and dx.dtype == x.dtype and np.all(np.isfinite(dx)), case
    # another dtype: the same gradients as float64 (to that dtype's rounding, relative to the
    # gradient's size, which can be large when a channel's variance is tiny)
    if case.dtype != "float64":
        tol = {"float32": 1e-4, "float16": 2e-2}[case.dtype]
        for got, want, what in [(dx, dx64, "dx")] + [(g, g64, "param grad") for g, g64 in zip(grads, grads64)]:
            scale = 1.0 + (np.abs(want).max() if want.size else 0.0)
            np.testing.assert_allclose(got.astype(np.float64), want, rtol=tol, atol=tol * scale,
                                       err_msg=f"{what} vs float64: {case}")
        return
    # float64: central differences of L = sum(y * dy) along random directions. No one step suits
    # every case: a large step meets the curvature of an instance with almost no spread, a small
    # one the forward's own rounding (up to ~1e-8 relative for a mean far from the statistics'
    # shift). The analytic value must agree with the differences at one of three steps; a wrong
    # gradient agrees with none.
    rng = np.random.default_rng(case.seed + 7)
    v = rng.normal(size=x.shape)
    an = float(np.sum(dx64 * v))
    tries = []
    for h in (1e-4 * case.scale, 1e-6 * case.scale, 1e-7 * case.scale):
        lp = loss_and_grads(m64, x64 + h * v, dy64)[0]
        lm = loss_and_grads(m64, x64 - h * v, dy64)[0]
        tries.append((lp - lm) / (2 * h))
        if abs(tries[-1] - an) <= 2e-4 * (1 + abs(an) + np.abs(dx64).sum() * 1e-2):
            break
    else:
        raise AssertionError(f"d/dx: analytic {an}, finite differences {tries}: {case}")
    for i, p in enumerate(m64.parameters()):
        u = rng.normal(size=p.shape)
        keep = p.data.copy()
        p.data[...] = keep + 1e-5 * u
        lp = loss_and_grads(m64, x64, dy64)[0]
        p.data[...] = keep - 1e-5 * u
        lm = loss_and_grads(m64, x64, dy64)[0]
        p.data[...] = keep
        fd, an = (lp - lm) / 2e-5, float(np.sum(grads64[i] * u))
        assert abs(fd - an) <= 1e-6 * (1 + abs(an)), (i, fd, an, case)


@NORMAL
@given(cases())
def test_forward_and_running_statistics_match_float64(case):
    check_forward(case)


@NORMAL
@given(cases())
def test_gradients_match_float64_and_finite_differences(case):
    check_gradients(case)


@pytest.mark.slow
@SLOW
@given(cases())
def test_forward_and_running_statistics_match_float64_slow(case):
    check_forward(case)


@pytest.mark.slow
@SLOW
@given(cases())
def test_gradients_match_float64_and_finite_differences_slow(case):
    check_gradients(case)


def test_the_strategy_reaches_every_layer_and_edge():
    """The cases cover what the docstring promises (checked on a fixed draw of 400)."""
    seen = {"kinds": set(), "dtypes": set(), "empty": 0, "unbatched": 0, "eval": 0}

    @settings(max_examples=400, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    @given(cases())
    def look(case):
        seen["kinds"].add(case.kind)
        seen["dtypes"].add(case.dtype)
        seen["empty"] += 0 in case.shape
        seen["unbatched"] += case.base in IN_NB and len(case.shape) == IN_NB[case.base]
        seen["eval"] += not case.training
    look()
    assert seen["kinds"] == set(KINDS) and seen["dtypes"] == {"float16", "float32", "float64"}
    assert seen["empty"] > 20 and seen["unbatched"] > 5 and seen["eval"] > 50, seen
