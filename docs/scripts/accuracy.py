"""Accuracy of training-mode BatchNorm on float32 data against a float64 computation.

    python docs/scripts/accuracy.py [--shape N C H W] [--seed S]

For float32 inputs with a range of means and standard deviations it runs one training step
(forward, backward with a random upstream gradient, momentum=1 so that running_var becomes the
batch's unbiased variance) of

* syncnorm.nn.BatchNorm2d (the kernels SyncBatchNorm and syncnorm.torch use),
* torch.nn.BatchNorm2d on the CPU (when torch is installed),
* the E[x^2] - E[x]^2 formula in float32 (numpy, pairwise summation; the variance formula of the
  O(C)-communication designs listed in the docs' Comparison page, clamped at 0),

and prints, as a markdown table, the largest absolute error of the output y (whose values are of
order 1), the largest error of the input gradient dx relative to max |dx|, and the largest relative
error of running_var, all against the same step computed in float64 from the same float32 inputs
(two-pass mean and variance). The numbers are measured when you run it; nothing is assumed.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run from a checkout without install

from syncnorm import nn  # noqa: E402

try:
    import torch
except ImportError:  # the table then says n/a for torch
    torch = None

EPS = 1e-5
CASES = [(0.0, 1.0), (1e3, 1.0), (1e4, 1.0), (0.0, 0.01), (1.0, 0.01), (1e3, 0.01), (1e4, 0.01)]


def truth(x: np.ndarray, dy: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(y, dx, unbiased var) of training-mode BatchNorm (weight 1, bias 0) in float64."""
    x, dy = x.astype(np.float64), dy.astype(np.float64)
    axes = (0, 2, 3)
    n = x.size // x.shape[1]
    xc = x - x.mean(axes, keepdims=True)
    var = (xc * xc).mean(axes, keepdims=True)
    inv = 1.0 / np.sqrt(var + EPS)
    g = dy.sum(axes, keepdims=True)
    h = (dy * xc).sum(axes, keepdims=True)
    dx = inv * (dy - g / n - xc * h * inv * inv / n)
    return xc * inv, dx, var.ravel() * n / (n - 1)


def run_syncnorm(x: np.ndarray, dy: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    bn = nn.BatchNorm2d(x.shape[1], momentum=1.0)
    y = bn(x)
    dx = bn.backward(dy)
    return y, dx, bn.running_var


def run_torch(x: np.ndarray, dy: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    bn = torch.nn.BatchNorm2d(x.shape[1], momentum=1.0)
    xt = torch.from_numpy(x).requires_grad_(True)
    y = bn(xt)
    y.backward(torch.from_numpy(dy))
    return y.detach().numpy(), xt.grad.numpy(), bn.running_var.detach().numpy()


def run_naive(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """E[x^2] - E[x]^2 in float32, clamped at 0."""
    axes = (0, 2, 3)
    n = x.size // x.shape[1]
    m = x.mean(axes, dtype=np.float32, keepdims=True)
    var = np.maximum((x * x).mean(axes, dtype=np.float32, keepdims=True) - m * m, np.float32(0))
    y = (x - m) / np.sqrt(var + np.float32(EPS))
    return y, var.ravel() * np.float32(n / (n - 1))


def errors(got: tuple, ref: tuple) -> list[float]:
    """[max |y - y64|, max |dx - dx64| / max |dx64|, max |var - var64| / var64] (None skipped)."""
    y, dx, var = got
    y64, dx64, var64 = ref
    out = [float(np.abs(y.astype(np.float64) - y64).max())]
    if dx is not None:
        out.append(float(np.abs(dx.astype(np.float64) - dx64).max() / np.abs(dx64).max()))
    out.append(float((np.abs(var.astype(np.float64) - var64) / var64).max()))
    return out


def fmt(v: float) -> str:
    return "0" if v == 0 else f"{v:.1e}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shape", type=int, nargs=4, default=[16, 8, 32, 32], metavar=("N", "C", "H", "W"))
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    rng = np.random.default_rng(args.seed)
    tv = torch.__version__ if torch is not None else "not installed"
    print(f"float32 input of shape {tuple(args.shape)}, one training step, errors against float64 "
          f"(numpy {np.__version__}, torch {tv}):\n")
    print("| mean, std of x | syncnorm y | syncnorm dx | syncnorm var | torch CPU y | torch CPU dx "
          "| torch CPU var | E[x²]−E[x]² fp32 y | E[x²]−E[x]² fp32 var |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for mean, std in CASES:
        x = rng.normal(mean, std, args.shape).astype(np.float32)
        dy = rng.standard_normal(args.shape).astype(np.float32)
        ref = truth(x, dy)
        row = errors(run_syncnorm(x, dy), ref)
        row += errors(run_torch(x, dy), ref) if torch is not None else [float("nan")] * 3
        naive_y, naive_var = run_naive(x)
        row += errors((naive_y, None, naive_var), ref)
        cells = ["n/a" if np.isnan(v) else fmt(v) for v in row]
        print(f"| {mean:g}, {std:g} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
