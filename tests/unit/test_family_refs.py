"""InstanceNorm, GroupNorm, LayerNorm, LocalResponseNorm and the lazy classes against torch 2.13 CPU
reference vectors (tests/data/family_refs.npz, made by tests/reference/make_family_refs.py)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from syncnorm import nn

pytestmark = pytest.mark.usefixtures("kernel_engine")  # numpy and numba kernels

DATA = np.load(Path(__file__).resolve().parents[1] / "data" / "family_refs.npz", allow_pickle=False)
CASES = json.loads(str(DATA["cases"]))
#: (absolute, relative) tolerance, both times max(1, max |reference|)
TOL = {"float16": (3e-3, 3e-3), "float32": (2e-6, 2e-6), "float64": (1e-12, 1e-12)}


def _close(a, b, dtype, what):
    atol, rtol = TOL[dtype]
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    assert a.shape == b.shape, f"{what}: shape {a.shape} != reference {b.shape}"
    scale = max(1.0, float(np.abs(b).max(initial=0)))
    err = float(np.abs(a - b).max(initial=0))
    assert err <= (atol + rtol) * scale, f"{what}: max |diff| {err:.3g} (scale {scale:.3g})"


def build(case):
    cls = getattr(nn, case["cls"])
    if case["cls"] == "LocalResponseNorm":
        return cls(*case["args"], **case["kw"])
    return cls(*case["args"], dtype=case["param_dtype"], **case["kw"])


def _set_init(m, name):
    for p in ("weight", "bias"):
        key = f"{name}/init/{p}"
        if key in DATA.files:
            getattr(m, p).data[...] = DATA[key]


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_against_torch(case):
    name, dtype = case["name"], case["dtype"]
    m = build(case)
    labels = list(range(case["steps"])) + (["e"] if case["eval"] else [])
    for i, s in enumerate(labels):
        if i == case["init_at"]:
            _set_init(m, name)
        k = f"{name}/s{s}"
        m.train(s != "e")
        m.zero_grad()
        y = m(DATA[k + "/x"])
        assert y.dtype == np.dtype(dtype) and y.shape == tuple(case["shape"])
        _close(y, DATA[k + "/y"], dtype, f"{k} output")
        dx = m.backward(DATA[k + "/dy"])
        assert dx.dtype == np.dtype(dtype) and dx.shape == tuple(case["shape"])
        _close(dx, DATA[k + "/dx"], dtype, f"{k} input grad")
        for p in ("weight", "bias"):
            ref = DATA[k + f"/d{p}"] if k + f"/d{p}" in DATA.files else None
            param = getattr(m, p, None)
            assert (ref is None) == (param is None), f"{k}: {p} present in one of the two only"
            if ref is not None:
                _close(param.grad, ref, dtype, f"{k} {p} grad")
        if k + "/running_mean" in DATA.files:
            _close(m.running_mean, DATA[k + "/running_mean"], dtype, f"{k} running_mean")
            _close(m.running_var, DATA[k + "/running_var"], dtype, f"{k} running_var")
    assert type(m).__name__ == case["became"]
    # the state_dict has torch's keys and values (InstanceNorm counts its steps, torch does not)
    sd = m.state_dict()
    prefix = f"{name}/state/"
    torch_keys = [k[len(prefix):] for k in DATA.files if k.startswith(prefix)]
    assert sorted(sd) == sorted(torch_keys)
    for key in torch_keys:
        if key == "num_batches_tracked" and isinstance(m, nn.instancenorm._InstanceNorm):
            assert int(sd[key]) == case["steps"] and int(DATA[prefix + key]) == 0
            continue
        _close(sd[key], DATA[prefix + key], dtype, f"state {key}")


def test_reference_file_is_small_and_from_torch_2_13():
    path = Path(__file__).resolve().parents[1] / "data" / "family_refs.npz"
    assert path.stat().st_size < 400_000
    assert str(DATA["torch_version"]).startswith("2.13")
    layers = {c["cls"] for c in CASES}
    assert layers >= {"InstanceNorm1d", "InstanceNorm2d", "InstanceNorm3d", "GroupNorm", "LayerNorm",
                      "LocalResponseNorm", "LazyBatchNorm1d", "LazyBatchNorm2d", "LazyBatchNorm3d",
                      "LazyInstanceNorm1d", "LazyInstanceNorm2d", "LazyInstanceNorm3d"}
