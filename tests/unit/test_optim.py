"""SGD against torch 2.13's update rule (reference vectors), its state dict, and its errors."""
import json
from pathlib import Path

import numpy as np
import pytest

from syncnorm.nn import Linear, Parameter
from syncnorm.optim import SGD

REF = np.load(Path(__file__).resolve().parents[1] / "data" / "layer_refs.npz", allow_pickle=False)
CASES = json.loads(str(REF["cases"]))
NAMES = sorted({k.split("/")[1] for k in REF.files if k.startswith("sgd/")})


@pytest.mark.parametrize("name", NAMES)
def test_sgd_matches_torch(name):
    p = f"sgd/{name}/"
    w = Parameter(REF[p + "p0"].copy())
    opt = SGD([w], **CASES[p])
    for g in REF[p + "grads"]:
        w.grad = g.copy()
        opt.step()
    np.testing.assert_allclose(w.data, REF[p + "p"], rtol=1e-14, atol=1e-14)
    if p + "momentum_buffer" in REF.files:
        np.testing.assert_allclose(opt.state[w]["momentum_buffer"], REF[p + "momentum_buffer"],
                                   rtol=1e-14, atol=1e-14)
    else:
        assert "momentum_buffer" not in opt.state.get(w, {})


def test_parameters_without_grad_are_skipped_and_float32_stays_float32():
    a = Parameter(np.ones(3, np.float32))
    b = Parameter(np.ones(2, np.float32))
    opt = SGD([a, b], lr=0.5, momentum=0.9, weight_decay=0.1)
    a.grad = np.full(3, 2.0, np.float32)
    opt.step()
    assert a.data.dtype == np.float32 and np.allclose(a.data, 1 - 0.5 * (2.0 + 0.1))
    assert np.array_equal(b.data, np.ones(2, np.float32)) and b not in opt.state


def test_state_dict_round_trip_continues_bitwise():
    rng = np.random.default_rng(0)
    grads = rng.standard_normal((6, 2, 3)).astype(np.float32)

    def run(split):
        lin = Linear(3, 2, generator=np.random.default_rng(1))
        opt = SGD(lin.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3, nesterov=True)
        for i, g in enumerate(grads):
            if i == split:
                sd, params = opt.state_dict(), lin.state_dict()
                lin = Linear(3, 2, generator=np.random.default_rng(99))
                lin.load_state_dict(params)
                opt = SGD(lin.parameters(), lr=1.0)
                opt.load_state_dict(sd)
            lin.weight.grad = g
            lin.bias.grad = g[:, 0].copy()
            opt.step()
        return lin.weight.data, opt.param_groups[0]["lr"]

    w_full, _ = run(None)
    w_resumed, lr = run(3)
    assert lr == 0.1 and np.array_equal(w_full, w_resumed)


def test_param_groups_and_state_dict_layout_like_torch():
    a, b = Parameter(np.zeros(2)), Parameter(np.zeros(3))
    opt = SGD([{"params": [a]}, {"params": [b], "lr": 0.5}], lr=0.1, momentum=0.9)
    a.grad, b.grad = np.ones(2), np.ones(3)
    opt.step()
    sd = opt.state_dict()
    assert [g["params"] for g in sd["param_groups"]] == [[0], [1]]
    assert [g["lr"] for g in sd["param_groups"]] == [0.1, 0.5]
    assert set(sd["state"]) == {0, 1} and sd["state"][1]["momentum_buffer"].shape == (3,)
    sd["state"][1]["momentum_buffer"][...] = 7  # a copy: the optimizer is not affected
    assert np.all(opt.state[b]["momentum_buffer"] == 1)
    opt.zero_grad()
    assert a.grad is None and b.grad is None


def test_errors_like_torch():
    p = [Parameter(np.zeros(2))]
    with pytest.raises(ValueError, match="Invalid learning rate: -1"):
        SGD(p, lr=-1)
    with pytest.raises(ValueError, match="Invalid momentum value"):
        SGD(p, lr=0.1, momentum=-0.5)
    with pytest.raises(ValueError, match="Invalid weight_decay value"):
        SGD(p, lr=0.1, weight_decay=-1)
    with pytest.raises(ValueError, match="Nesterov momentum requires a momentum and zero dampening"):
        SGD(p, lr=0.1, nesterov=True)
    with pytest.raises(ValueError, match="empty parameter list"):
        SGD([], lr=0.1)
    with pytest.raises(ValueError, match="more than one parameter group"):
        SGD([{"params": p}, {"params": p}], lr=0.1)
    opt = SGD(p, lr=0.1, momentum=0.9)
    with pytest.raises(ValueError, match="shape"):
        opt.load_state_dict({"state": {0: {"momentum_buffer": np.zeros(5)}},
                             "param_groups": [{"lr": 0.2, "momentum": 0.9, "dampening": 0,
                                               "weight_decay": 0, "nesterov": False, "maximize": False,
                                               "params": [0]}]})
    assert opt.param_groups[0]["lr"] == 0.1 and not opt.state  # nothing changed


def test_load_state_dict_refuses_what_the_cast_would_not_keep_and_loads_nothing():
    p = Parameter(np.ones(2, np.float32))
    opt = SGD([p], lr=0.1, momentum=0.9)
    p.grad = np.ones(2, np.float32)
    opt.step()
    good = opt.state_dict()
    before = opt.state[p]["momentum_buffer"].copy()
    for buf, msg in [(np.array(["a", "b"]), "optimizer state 'momentum_buffer' of parameter 0: "
                      "expected a real numeric array, got dtype <U1"),
                     (np.array([1.0, 1e39]), r"optimizer state 'momentum_buffer' of parameter 0: "
                      r"finite values up to 1e\+39 in magnitude would become inf in float32")]:
        bad = dict(good, state={0: {"momentum_buffer": buf}},
                   param_groups=[dict(good["param_groups"][0], lr=0.5)])
        with pytest.raises(ValueError, match=msg):
            opt.load_state_dict(bad)
        np.testing.assert_array_equal(opt.state[p]["momentum_buffer"], before)
        assert opt.param_groups[0]["lr"] == 0.1
    opt.load_state_dict(dict(good, state={0: {"momentum_buffer": np.array([np.inf, 2.0])}}))
    assert opt.state[p]["momentum_buffer"].dtype == np.float32
