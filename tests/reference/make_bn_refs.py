"""Generate tests/data/bn_refs.npz: reference results of torch 2.13 CPU nn.BatchNorm1d/2d/3d.

Run with torch installed (`pip install torch==2.13.0`):  python tests/reference/make_bn_refs.py
The tests only read the .npz; torch is not needed to run them.

Keys, for each case NAME (train steps s = 0..steps-1, then one eval step "e"):
  NAME/s{s}/x, NAME/s{s}/dy       input and upstream gradient (in the case's dtype)
  NAME/s{s}/y, NAME/s{s}/dx       output and input gradient
  NAME/s{s}/dweight, dbias        parameter gradients of that step (zeroed before each step)
  NAME/s{s}/running_mean, running_var, num_batches_tracked   buffers after the step
  NAME/init/weight, NAME/init/bias   starting parameters (random, so affine is exercised)
  NAME/state/<key>                the module's state_dict after the run (torch's keys)
and `cases` = a JSON string describing each case.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

OUT = Path(__file__).resolve().parent.parent / "data" / "bn_refs.npz"

CASES = [
    # name, class, input shape, kwargs, dtype, steps
    ("bn1d_2d", "BatchNorm1d", (7, 5), {}, "float32", 3),
    ("bn1d_3d", "BatchNorm1d", (4, 3, 6), {}, "float32", 3),
    ("bn2d", "BatchNorm2d", (4, 3, 5, 4), {}, "float32", 3),
    ("bn3d", "BatchNorm3d", (3, 2, 3, 4, 2), {}, "float32", 2),
    ("bn2d_no_affine", "BatchNorm2d", (3, 4, 3, 3), {"affine": False}, "float32", 2),
    ("bn2d_no_stats", "BatchNorm2d", (3, 4, 3, 3), {"track_running_stats": False}, "float32", 2),
    ("bn2d_momentum_none", "BatchNorm2d", (3, 3, 4, 4), {"momentum": None}, "float32", 4),
    ("bn2d_momentum_05", "BatchNorm2d", (3, 3, 2, 5), {"momentum": 0.5, "eps": 1e-3}, "float32", 3),
    ("bn2d_f64", "BatchNorm2d", (4, 3, 3, 3), {}, "float64", 3),
    ("bn2d_f16", "BatchNorm2d", (4, 3, 3, 3), {}, "float16", 2),
    ("bn1d_f64_3d", "BatchNorm1d", (5, 4, 3), {"momentum": None}, "float64", 3),
]


def main() -> None:
    torch.manual_seed(0)
    rng = np.random.default_rng(1234)
    out: dict[str, np.ndarray] = {}
    meta = []
    for name, cls, shape, kw, dtype, steps in CASES:
        C = shape[1]
        # float16 BatchNorm on CPU: torch keeps fp32 parameters and computes in fp32 (mixed)
        pdtype = torch.float32 if dtype == "float16" else getattr(torch, dtype)
        m = getattr(torch.nn, cls)(C, **kw).to(pdtype)
        if m.affine:
            with torch.no_grad():
                m.weight.copy_(torch.from_numpy(rng.uniform(0.5, 1.5, C)).to(pdtype))
                m.bias.copy_(torch.from_numpy(rng.normal(0, 0.5, C)).to(pdtype))
            out[f"{name}/init/weight"] = m.weight.detach().numpy().copy()
            out[f"{name}/init/bias"] = m.bias.detach().numpy().copy()
        for s in list(range(steps)) + ["e"]:
            m.train(s != "e")
            x = (rng.normal(2.0, 3.0, shape)).astype(dtype)
            dy = rng.normal(0, 1, shape).astype(dtype)
            xt = torch.from_numpy(x).requires_grad_(True)
            m.zero_grad(set_to_none=False) if m.affine else None
            if m.affine:
                m.weight.grad = None
                m.bias.grad = None
            y = m(xt)
            y.backward(torch.from_numpy(dy))
            k = f"{name}/s{s}"
            out[k + "/x"], out[k + "/dy"] = x, dy
            out[k + "/y"] = y.detach().numpy().copy()
            out[k + "/dx"] = xt.grad.numpy().copy()
            if m.affine:
                out[k + "/dweight"] = m.weight.grad.numpy().copy()
                out[k + "/dbias"] = m.bias.grad.numpy().copy()
            if m.track_running_stats:
                out[k + "/running_mean"] = m.running_mean.numpy().copy()
                out[k + "/running_var"] = m.running_var.numpy().copy()
                out[k + "/num_batches_tracked"] = m.num_batches_tracked.numpy().copy()
        for key, v in m.state_dict().items():
            out[f"{name}/state/{key}"] = v.numpy().copy()
        meta.append({"name": name, "cls": cls, "shape": shape, "kw": kw, "dtype": dtype,
                     "steps": steps, "param_dtype": str(pdtype).replace("torch.", "")})
    out["cases"] = np.array(json.dumps(meta))
    out["torch_version"] = np.array(torch.__version__)
    np.savez_compressed(OUT, **out)
    print(f"wrote {OUT} ({OUT.stat().st_size} bytes, {len(meta)} cases, torch {torch.__version__})")


if __name__ == "__main__":
    main()
