"""Generate tests/data/layer_refs.npz: torch 2.13 CPU results for the CNN layers, the loss and SGD.

Run with torch installed (`pip install torch==2.13.0`):  python tests/reference/make_layer_refs.py
The tests only read the .npz; torch is not needed to run them. Everything is float64 unless a case
says otherwise, so the comparisons can be tight.

Keys (NAME = a case name; `cases` = a JSON string with each case's kind and arguments):
  conv/NAME/{x, weight, bias?, dy, y, dx, dweight, dbias?}       nn.functional.conv2d
  linear/NAME/{x, weight, bias?, dy, y, dx, dweight, dbias?}     nn.functional.linear
  pool/NAME/{x, dy, y, dx}                                       max/avg/adaptive-avg pooling
  ce/NAME/{logits, target, weight?, grad?, loss, dlogits}        nn.functional.cross_entropy
  sgd/NAME/{p0, grads (steps, n), p, momentum_buffer?}           torch.optim.SGD after the steps
  cnn/{state/<key>, x, y_train, dx_train, grad/<key>, y_eval, state_after/<key>}
      the demo CNN (width 4) built as a torch.nn.Sequential with torch's default init (seed 0): its state
      dict, one train-mode forward/backward (dy = ones / N on the logits) and an eval forward
  init/{linear_weight, conv_weight, ...}: torch default-initialised tensors (for the bounds)
  sampler/nN_pP_dropD/rR: torch.utils.data.DistributedSampler(range(N), P, R, shuffle=False,
      drop_last=D) as a list
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

OUT = Path(__file__).resolve().parent.parent / "data" / "layer_refs.npz"

CONV = [
    ("basic", (2, 3, 6, 5), 4, 3, {}, True),
    ("stride_pad", (2, 3, 7, 6), 5, 3, {"stride": 2, "padding": 1}, True),
    ("rect", (1, 2, 7, 8), 3, (3, 2), {"stride": (1, 2), "padding": (2, 1)}, False),
    ("dilation", (2, 2, 8, 7), 3, 3, {"dilation": 2, "padding": 2}, True),
    ("groups", (2, 4, 5, 5), 6, 3, {"groups": 2, "padding": 1}, True),
    ("depthwise", (2, 3, 5, 6), 3, 3, {"groups": 3, "stride": 2}, False),
    ("one_by_one", (3, 5, 4, 4), 2, 1, {}, True),
]
LINEAR = [("basic", (5, 4), 3, True), ("batched3d", (2, 3, 4), 6, True), ("nobias", (4, 7), 2, False)]
POOL = [
    ("max2", "max", (2, 3, 8, 8), {"kernel_size": 2}),
    ("max3s2p1_ceil", "max", (2, 2, 7, 6), {"kernel_size": 3, "stride": 2, "padding": 1, "ceil_mode": True}),
    ("max_dilated", "max", (1, 2, 9, 8), {"kernel_size": (3, 2), "stride": (1, 2), "padding": (1, 1),
                                           "dilation": (2, 1)}),
    ("avg2", "avg", (2, 3, 8, 8), {"kernel_size": 2}),
    ("avg3s2p1", "avg", (2, 2, 7, 6), {"kernel_size": 3, "stride": 2, "padding": 1}),
    ("avg3s2p1_nopad", "avg", (2, 2, 7, 6), {"kernel_size": 3, "stride": 2, "padding": 1,
                                              "count_include_pad": False}),
    ("avg_ceil", "avg", (2, 2, 7, 6), {"kernel_size": 3, "stride": 2, "padding": 1, "ceil_mode": True}),
    ("avg_ceil_nopad", "avg", (2, 2, 7, 6), {"kernel_size": 3, "stride": 2, "padding": 1, "ceil_mode": True,
                                              "count_include_pad": False}),
    ("avg_divisor", "avg", (2, 2, 6, 6), {"kernel_size": 3, "stride": 1, "divisor_override": 5}),
    ("adaptive_1", "adaptive", (2, 3, 5, 7), {"output_size": 1}),
    ("adaptive_3x4", "adaptive", (2, 3, 7, 6), {"output_size": (3, 4)}),
    ("adaptive_none", "adaptive", (2, 3, 7, 6), {"output_size": (None, 2)}),
]
CE = [
    ("mean", (6, 5), {}),
    ("sum", (6, 5), {"reduction": "sum"}),
    ("none", (6, 5), {"reduction": "none"}),
    ("weight", (6, 5), {"weight": True}),
    ("ignore", (6, 5), {"ignore_index": 2}),
    ("smooth", (6, 5), {"label_smoothing": 0.2}),
    ("weight_smooth_ignore", (8, 4), {"weight": True, "label_smoothing": 0.1, "ignore_index": 1}),
    ("weight_smooth_sum", (8, 4), {"weight": True, "label_smoothing": 0.3, "reduction": "sum"}),
    ("spatial", (3, 4, 2, 5), {}),
    ("spatial_weight_none", (3, 4, 2, 5), {"weight": True, "reduction": "none"}),
    ("probs", (5, 4), {"probs": True}),
    ("probs_weight_smooth", (5, 4), {"probs": True, "weight": True, "label_smoothing": 0.25}),
    ("unbatched", (7,), {}),
    ("large_logits", (4, 3), {"scale": 1000.0}),
]
SGD = [
    ("plain", {"lr": 0.1}),
    ("momentum", {"lr": 0.1, "momentum": 0.9}),
    ("momentum_wd", {"lr": 0.05, "momentum": 0.9, "weight_decay": 1e-2}),
    ("dampening", {"lr": 0.1, "momentum": 0.8, "dampening": 0.3}),
    ("nesterov", {"lr": 0.1, "momentum": 0.9, "nesterov": True, "weight_decay": 5e-4}),
    ("maximize", {"lr": 0.02, "momentum": 0.5, "maximize": True}),
]


def t(a: np.ndarray, grad: bool = False) -> torch.Tensor:
    return torch.tensor(a, dtype=torch.float64, requires_grad=grad)


def n(x: torch.Tensor) -> np.ndarray:
    return x.detach().numpy().copy()


def digits_cnn_torch(width: int = 16, dropout: float = 0.1) -> torch.nn.Sequential:
    w1, w2 = width, 2 * width
    nn = torch.nn
    return nn.Sequential(
        nn.Conv2d(1, w1, 3, padding=1, bias=False), nn.BatchNorm2d(w1), nn.ReLU(),
        nn.Conv2d(w1, w2, 3, padding=1, bias=False), nn.BatchNorm2d(w2), nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(w2, w2, 3, padding=1, bias=False), nn.BatchNorm2d(w2), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(dropout), nn.Linear(w2, 10))


def main() -> None:
    torch.manual_seed(0)
    rng = np.random.default_rng(2024)
    out: dict[str, np.ndarray] = {}
    cases: dict[str, dict] = {}

    for name, shape, o, k, kw, bias in CONV:
        c = shape[1]
        ks = (k, k) if isinstance(k, int) else k
        x = t(rng.standard_normal(shape), True)
        w = t(rng.standard_normal((o, c // kw.get("groups", 1)) + ks) * 0.3, True)
        b = t(rng.standard_normal(o), True) if bias else None
        y = F.conv2d(x, w, b, **kw)
        dy = rng.standard_normal(tuple(y.shape))
        y.backward(t(dy))
        p = f"conv/{name}/"
        out.update({p + "x": n(x), p + "weight": n(w), p + "dy": dy, p + "y": n(y), p + "dx": n(x.grad),
                    p + "dweight": n(w.grad)})
        if bias:
            out.update({p + "bias": n(b), p + "dbias": n(b.grad)})
        cases[p] = {"out_channels": o, "kernel_size": k, **kw, "bias": bias}

    for name, shape, o, bias in LINEAR:
        x = t(rng.standard_normal(shape), True)
        w = t(rng.standard_normal((o, shape[-1])), True)
        b = t(rng.standard_normal(o), True) if bias else None
        y = F.linear(x, w, b)
        dy = rng.standard_normal(tuple(y.shape))
        y.backward(t(dy))
        p = f"linear/{name}/"
        out.update({p + "x": n(x), p + "weight": n(w), p + "dy": dy, p + "y": n(y), p + "dx": n(x.grad),
                    p + "dweight": n(w.grad)})
        if bias:
            out.update({p + "bias": n(b), p + "dbias": n(b.grad)})
        cases[p] = {"out_features": o, "bias": bias}

    for name, kind, shape, kw in POOL:
        x = t(rng.standard_normal(shape), True)
        if kind == "max":
            y = F.max_pool2d(x, **kw)
        elif kind == "avg":
            y = F.avg_pool2d(x, **kw)
        else:
            y = F.adaptive_avg_pool2d(x, kw["output_size"])
        dy = rng.standard_normal(tuple(y.shape))
        y.backward(t(dy))
        p = f"pool/{name}/"
        out.update({p + "x": n(x), p + "dy": dy, p + "y": n(y), p + "dx": n(x.grad)})
        cases[p] = {"kind": kind, **{k: (list(v) if isinstance(v, tuple) else v) for k, v in kw.items()}}

    for name, shape, kw in CE:
        kw = dict(kw)
        scale = kw.pop("scale", 3.0)
        c = shape[0] if len(shape) == 1 else shape[1]
        z = t(rng.standard_normal(shape) * scale, True)
        p = f"ce/{name}/"
        if kw.pop("probs", False):
            target = rng.dirichlet(np.ones(c), size=shape[0])
            tt = t(target)
        else:
            tshape = () if len(shape) == 1 else (shape[0],) + shape[2:]
            target = rng.integers(0, c, tshape).astype(np.int64)
            if "ignore_index" in kw:
                target.reshape(-1)[:2] = kw["ignore_index"]
            tt = torch.tensor(target)
        if kw.pop("weight", False):
            wt = rng.uniform(0.2, 2.0, c)
            out[p + "weight"] = wt
            kw["weight"] = t(wt)
        loss = F.cross_entropy(z, tt, **kw)
        grad = rng.standard_normal(tuple(loss.shape)) if loss.dim() else np.array(1.7)
        loss.backward(t(grad))
        out.update({p + "logits": n(z), p + "target": target, p + "grad": grad, p + "loss": n(loss),
                    p + "dlogits": n(z.grad)})
        cases[p] = {k: v for k, v in kw.items() if k != "weight"}

    for name, kw in SGD:
        p0 = rng.standard_normal(7)
        grads = rng.standard_normal((5, 7))
        w = torch.tensor(p0.copy(), requires_grad=True)
        opt = torch.optim.SGD([w], **kw)
        for g in grads:
            w.grad = torch.tensor(g.copy())
            opt.step()
        p = f"sgd/{name}/"
        out.update({p + "p0": p0, p + "grads": grads, p + "p": n(w)})
        buf = opt.state[w].get("momentum_buffer")
        if buf is not None:
            out[p + "momentum_buffer"] = n(buf)
        cases[p] = kw

    # the demo CNN: torch's default init, one train step's gradients, an eval forward
    torch.manual_seed(0)
    m = digits_cnn_torch(width=4).double()
    for k, v in m.state_dict().items():
        out[f"cnn/state/{k}"] = n(v)
    x = t(rng.standard_normal((6, 1, 8, 8)), True)
    m.train()
    m[12].p = 0.0  # dropout off for the comparison (masks are random)
    y = m(x)
    y.backward(torch.ones_like(y) / y.shape[0])
    out.update({"cnn/x": n(x), "cnn/y_train": n(y), "cnn/dx_train": n(x.grad)})
    for k, prm in m.named_parameters():
        out[f"cnn/grad/{k}"] = n(prm.grad)
    for k, v in m.state_dict().items():
        out[f"cnn/state_after/{k}"] = n(v)
    m.eval()
    out["cnn/y_eval"] = n(m(x))

    torch.manual_seed(1)
    out["init/linear_weight"] = n(torch.nn.Linear(50, 40).weight)
    out["init/linear_bias"] = n(torch.nn.Linear(50, 40).bias)
    out["init/conv_weight"] = n(torch.nn.Conv2d(6, 20, 3).weight)
    out["init/conv_bias"] = n(torch.nn.Conv2d(6, 20, 3).bias)

    # DistributedSampler without shuffling (torch's randperm order is torch's own): sizes, padding
    # by wrapping around, dropping the tail, striding
    from torch.utils.data import DistributedSampler
    for size, reps in ((10, 4), (3, 8), (12, 4), (7, 3), (1, 2)):
        for drop in (False, True):
            if drop and size < reps:
                continue
            for r in range(reps):
                idx = list(DistributedSampler(range(size), num_replicas=reps, rank=r, shuffle=False,
                                              drop_last=drop))
                out[f"sampler/n{size}_p{reps}_drop{int(drop)}/r{r}"] = np.array(idx, dtype=np.int64)

    out["cases"] = np.array(json.dumps(cases))
    np.savez_compressed(OUT, **out)
    print(f"wrote {OUT} ({OUT.stat().st_size} bytes, {len(out)} arrays) with torch {torch.__version__}")


if __name__ == "__main__":
    main()
