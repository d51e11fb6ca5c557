"""Generate tests/data/family_refs.npz: torch 2.13 CPU reference results for the normalization
family other than BatchNorm: InstanceNorm1d/2d/3d, GroupNorm, LayerNorm, LocalResponseNorm and the
lazy classes LazyBatchNorm1d/2d/3d, LazyInstanceNorm1d/2d/3d.

Run with torch installed (`pip install torch==2.13.0`):  python tests/reference/make_family_refs.py
The tests only read the .npz; torch is not needed to run them.

Protocol of one case NAME: build torch.nn.<cls>(*args, **kw) with parameters in `param_dtype`;
when the layer has affine parameters they are set to random values (for lazy classes: after the
first step, which materializes them). Then `steps` training steps s = 0..steps-1 and, when `eval`,
one step "e" in eval mode. Each step zeroes the parameter gradients, runs forward on x and backward
with dy. Keys:
  NAME/s{s}/x, NAME/s{s}/dy            input and upstream gradient (in the case's dtype)
  NAME/s{s}/y, NAME/s{s}/dx            output and input gradient
  NAME/s{s}/dweight, NAME/s{s}/dbias   parameter gradients of that step (when present)
  NAME/s{s}/running_mean, running_var  buffers after the step (when tracked)
  NAME/init/weight, NAME/init/bias     the random parameters set before step number `init_at`
                                       (0 for every class but the lazy ones, which set them after
                                       the first step has materialized them)
  NAME/state/<key>                     torch's state_dict after the run
and `cases` = a JSON list describing the cases.

float16 cases: torch's CPU kernels compute half inputs in float32 with float32 parameters; the
reference runs the float16-rounded input through the float32 module and stores float32 results
(the tests compare at float16 tolerance).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

OUT = Path(__file__).resolve().parent.parent / "data" / "family_refs.npz"

#: (name, class, args, kwargs, input shape, dtype, training steps, eval step, mean, std)
CASES = [
    # ---------------------------------------------------------------- InstanceNorm
    ("in1d", "InstanceNorm1d", [3], {}, (2, 3, 5), "float32", 1, True, 1.0, 2.0),
    ("in1d_affine_track", "InstanceNorm1d", [3], {"affine": True, "track_running_stats": True},
     (3, 3, 4), "float64", 3, True, 2.0, 3.0),
    ("in1d_unbatched", "InstanceNorm1d", [3], {"affine": True, "track_running_stats": True},
     (3, 6), "float32", 2, True, -1.0, 2.0),
    ("in2d", "InstanceNorm2d", [3], {}, (2, 3, 3, 4), "float64", 1, True, 0.5, 1.5),
    ("in2d_affine", "InstanceNorm2d", [4], {"affine": True}, (2, 4, 3, 3), "float32", 2, True,
     3.0, 0.5),
    ("in2d_track", "InstanceNorm2d", [3], {"track_running_stats": True, "momentum": 0.3},
     (2, 3, 3, 3), "float64", 3, True, 1.0, 2.0),
    ("in2d_affine_track", "InstanceNorm2d", [3], {"affine": True, "track_running_stats": True,
                                                  "eps": 1e-3}, (2, 3, 2, 4), "float32", 3, True,
     -2.0, 1.0),
    ("in2d_nobias", "InstanceNorm2d", [3], {"affine": True, "bias": False}, (2, 3, 3, 3),
     "float64", 1, True, 0.0, 1.0),
    ("in2d_unbatched", "InstanceNorm2d", [2], {"affine": True}, (2, 3, 4), "float64", 1, True,
     1.0, 1.0),
    ("in2d_f16", "InstanceNorm2d", [3], {"affine": True, "track_running_stats": True},
     (2, 3, 3, 3), "float16", 2, True, 1.0, 2.0),
    ("in3d", "InstanceNorm3d", [2], {"affine": True, "track_running_stats": True},
     (2, 2, 2, 3, 2), "float64", 2, True, 0.0, 2.0),
    ("in3d_unbatched", "InstanceNorm3d", [2], {}, (2, 2, 2, 3), "float32", 1, True, 1.0, 1.0),
    # ---------------------------------------------------------------- GroupNorm
    ("gn_2d_input", "GroupNorm", [3, 6], {}, (4, 6), "float64", 1, True, 1.0, 2.0),
    ("gn_3d", "GroupNorm", [2, 4], {}, (2, 4, 5), "float32", 1, True, -1.0, 3.0),
    ("gn_4d", "GroupNorm", [2, 6], {"eps": 1e-3}, (2, 6, 2, 3), "float64", 1, True, 2.0, 0.5),
    ("gn_4d_one_group", "GroupNorm", [1, 4], {}, (2, 4, 3, 2), "float64", 1, False, 0.0, 1.0),
    ("gn_4d_instance", "GroupNorm", [4, 4], {}, (2, 4, 3, 2), "float64", 1, False, 0.0, 1.0),
    ("gn_5d", "GroupNorm", [3, 6], {}, (2, 6, 2, 2, 2), "float32", 1, False, 1.0, 1.0),
    ("gn_no_affine", "GroupNorm", [2, 4], {"affine": False}, (3, 4, 4), "float64", 1, False,
     5.0, 2.0),
    ("gn_nobias", "GroupNorm", [2, 4], {"bias": False}, (2, 4, 3), "float64", 1, False, 0.0, 1.0),
    ("gn_f16", "GroupNorm", [2, 4], {}, (2, 4, 3, 3), "float16", 1, True, 1.0, 2.0),
    # ---------------------------------------------------------------- LayerNorm
    ("ln_last", "LayerNorm", [5], {}, (3, 5), "float64", 1, True, 1.0, 2.0),
    ("ln_1d_input", "LayerNorm", [6], {}, (6,), "float64", 1, False, 0.0, 1.0),
    ("ln_2dims", "LayerNorm", [[3, 4]], {"eps": 1e-3}, (2, 2, 3, 4), "float32", 1, True, -2.0, 1.0),
    ("ln_all", "LayerNorm", [[2, 3, 2]], {}, (2, 3, 2), "float64", 1, False, 3.0, 0.5),
    ("ln_no_affine", "LayerNorm", [4], {"elementwise_affine": False}, (3, 2, 4), "float64", 1,
     False, 1.0, 1.0),
    ("ln_nobias", "LayerNorm", [4], {"bias": False}, (3, 4), "float32", 1, False, 0.0, 2.0),
    ("ln_f16", "LayerNorm", [[3, 4]], {}, (2, 3, 4), "float16", 1, True, 1.0, 2.0),
    # ---------------------------------------------------------------- LocalResponseNorm
    ("lrn_3d", "LocalResponseNorm", [2], {}, (2, 5, 4), "float64", 1, True, 0.0, 1.0),
    ("lrn_4d", "LocalResponseNorm", [3], {"alpha": 0.1, "beta": 0.75, "k": 2.0}, (2, 6, 3, 2),
     "float64", 1, False, 0.0, 2.0),
    ("lrn_5d", "LocalResponseNorm", [4], {"alpha": 0.5, "beta": 0.5, "k": 1.0}, (2, 5, 2, 2, 2),
     "float64", 1, False, 1.0, 1.0),
    ("lrn_6d", "LocalResponseNorm", [5], {"alpha": 0.2}, (1, 4, 2, 2, 2, 2), "float32", 1, False,
     0.0, 2.0),
    ("lrn_size1", "LocalResponseNorm", [1], {"alpha": 0.3, "beta": 1.5}, (2, 3, 4), "float64", 1,
     False, 0.0, 1.0),
    ("lrn_size_gt_c", "LocalResponseNorm", [9], {"alpha": 0.4, "k": 0.5}, (2, 3, 2, 2), "float64",
     1, False, 0.0, 1.5),
    ("lrn_f32", "LocalResponseNorm", [3], {"alpha": 0.05}, (2, 6, 5), "float32", 1, False, 0.0, 3.0),
    ("lrn_f16", "LocalResponseNorm", [3], {"alpha": 0.05}, (2, 4, 5), "float16", 1, False, 0.0, 2.0),
    # ---------------------------------------------------------------- lazy classes
    ("lazy_bn1d", "LazyBatchNorm1d", [], {}, (5, 3, 2), "float32", 3, True, 2.0, 3.0),
    ("lazy_bn2d", "LazyBatchNorm2d", [], {"momentum": None}, (3, 2, 3, 2), "float64", 3, True,
     1.0, 2.0),
    ("lazy_bn3d", "LazyBatchNorm3d", [], {"affine": False}, (2, 3, 2, 2, 2), "float64", 2, True,
     0.0, 1.0),
    ("lazy_in1d", "LazyInstanceNorm1d", [], {}, (2, 3, 4), "float64", 2, True, 1.0, 2.0),
    ("lazy_in2d", "LazyInstanceNorm2d", [], {}, (2, 3, 2, 3), "float32", 3, True, -1.0, 2.0),
    ("lazy_in3d", "LazyInstanceNorm3d", [], {"track_running_stats": False}, (2, 2, 2, 2, 3),
     "float64", 1, True, 0.0, 1.0),
]


def _randomize(m: torch.nn.Module, rng: np.random.Generator, out: dict, name: str) -> None:
    for pname, lo, hi in (("weight", 0.5, 1.5), ("bias", -0.5, 0.5)):
        p = getattr(m, pname, None)
        if p is None:
            continue
        with torch.no_grad():
            p.copy_(torch.from_numpy(rng.uniform(lo, hi, tuple(p.shape))).to(p.dtype))
        out[f"{name}/init/{pname}"] = p.detach().numpy().copy()


def main() -> None:
    torch.manual_seed(0)
    rng = np.random.default_rng(20260427)
    out: dict[str, np.ndarray] = {}
    meta = []
    for name, cls, args, kw, shape, dtype, steps, has_eval, mu, sd in CASES:
        pdtype = torch.float32 if dtype == "float16" else getattr(torch, dtype)
        tdtype = torch.float32 if dtype == "float16" else getattr(torch, dtype)
        m = getattr(torch.nn, cls)(*args, **kw).to(pdtype)
        lazy = cls.startswith("Lazy")
        init_at = 1 if lazy else 0
        if not lazy:
            _randomize(m, rng, out, name)
        labels = list(range(steps)) + (["e"] if has_eval else [])
        for i, s in enumerate(labels):
            if lazy and i == init_at:
                _randomize(m, rng, out, name)
            m.train(s != "e")
            x = rng.normal(mu, sd, shape).astype(dtype)
            dy = rng.normal(0.0, 1.0, shape).astype(dtype)
            xt = torch.from_numpy(x).to(tdtype).requires_grad_(True)
            for p in m.parameters():
                p.grad = None
            y = m(xt)
            y.backward(torch.from_numpy(dy).to(tdtype))
            k = f"{name}/s{s}"
            out[k + "/x"], out[k + "/dy"] = x, dy
            out[k + "/y"] = y.detach().numpy().copy()
            out[k + "/dx"] = xt.grad.numpy().copy()
            for pname in ("weight", "bias"):
                p = getattr(m, pname, None)
                if isinstance(p, torch.nn.Parameter) and p.grad is not None:
                    out[k + f"/d{pname}"] = p.grad.numpy().copy()
            if getattr(m, "track_running_stats", False) and s != "e":
                out[k + "/running_mean"] = m.running_mean.numpy().copy()
                out[k + "/running_var"] = m.running_var.numpy().copy()
        for key, v in m.state_dict().items():
            out[f"{name}/state/{key}"] = v.numpy().copy()
        meta.append({"name": name, "cls": cls, "args": args, "kw": kw, "shape": list(shape),
                     "dtype": dtype, "param_dtype": str(pdtype).replace("torch.", ""),
                     "steps": steps, "eval": has_eval, "init_at": init_at,
                     "became": type(m).__name__})
    out["cases"] = np.array(json.dumps(meta))
    out["torch_version"] = np.array(torch.__version__)
    np.savez_compressed(OUT, **out)
    print(f"wrote {OUT} ({OUT.stat().st_size} bytes, {len(meta)} cases, torch {torch.__version__})")


if __name__ == "__main__":
    main()
