"""GroupNorm, LayerNorm and InstanceNorm2d training steps (forward + backward) vs torch 2.13 CPU.

    python benchmarks/bench_family.py [--shape 32 256 28 28] [--reps 30] [--rounds 3] [--profile]

One thread on both sides (OMP/MKL/OPENBLAS_NUM_THREADS=1, torch.set_num_threads(1)). For each layer
and round, a block of `--reps` syncnorm steps and a block of torch steps run back to back (which one
first alternates between rounds); the figure is the ratio of the two medians, syncnorm / torch,
and the median of that ratio over `--rounds` rounds (their spread shows the noise); the ratio of
the fastest steps is printed too. Times are the main thread's CPU time (time.thread_time):
processes competing for the cores do not inflate it, and neither do idle helper threads of torch
(whose spinning process_time would count against torch); both libraries compute on the main
thread. `--wall` uses the wall clock instead. `--profile` also prints the fastest times of the
statistics, forward and forward+backward of each layer and of torch, in ms and in units of one
numpy elementwise pass over the input (the cost floor of an unfused numpy step).
Needs torch (`pip install syncnorm[torch]`); syncnorm itself does not.
"""
from __future__ import annotations

import argparse
import os
import time

for _v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_v] = "1"

import numpy as np  # noqa: E402
import torch  # noqa: E402

from syncnorm import nn  # noqa: E402

torch.set_num_threads(1)


def layers(C: int, HW: tuple[int, int]):
    return [
        ("GroupNorm(32, C)", lambda: nn.GroupNorm(32, C), lambda: torch.nn.GroupNorm(32, C)),
        ("LayerNorm([C, H, W])", lambda: nn.LayerNorm([C, *HW]),
         lambda: torch.nn.LayerNorm([C, *HW])),
        ("InstanceNorm2d(C)", lambda: nn.InstanceNorm2d(C), lambda: torch.nn.InstanceNorm2d(C)),
    ]


def step_syncnorm(m, x, dy):
    m(x)
    m.backward(dy)


def step_torch(m, xt, dyt):
    xt.grad = None
    m.zero_grad(set_to_none=True)
    m(xt).backward(dyt)


def _block(step, args, reps: int, clock) -> list[float]:
    """Times of `reps` consecutive steps after two warm-up steps."""
    for _ in range(2):
        step(*args)
    ts = []
    for _ in range(reps):
        t = clock()
        step(*args)
        ts.append(clock() - t)
    return ts


def measure(ours, theirs, x, dy, reps: int, clock,
            torch_first: bool) -> tuple[list[float], list[float]]:
    """(syncnorm, torch) step times of one round: a block of steps of each library.

    Blocks, not alternate steps: each library runs in its own steady state (alternating single
    steps makes glibc hand torch fresh pages for its 25 MB gradient every step, ~6000 page faults).
    Even in blocks some torch steps take those faults (its allocator returns the gradient's memory
    to the system now and then), which is why the ratio of the fastest steps is printed too."""
    xt = torch.from_numpy(x).requires_grad_(True)
    dyt = torch.from_numpy(dy)
    blocks = [(step_syncnorm, (ours, x, dy)), (step_torch, (theirs, xt, dyt))]
    if torch_first:
        blocks.reverse()
    out = {id(f): _block(f, a, reps, clock) for f, a in blocks}
    return out[id(step_syncnorm)], out[id(step_torch)]


def _time(f, reps: int, clock) -> float:
    f()
    ts = []
    for _ in range(reps):
        t = clock()
        f()
        ts.append(clock() - t)
    return float(np.min(ts))


def pass_costs(x, dy, reps: int, clock) -> dict[str, float]:
    """What one numpy pass over the whole input costs (fastest of `reps`): the unit in which the
    profile counts. Both read x (and dy) from memory and write a fresh array, like the layers."""
    out = np.empty_like(x)
    rows = x.reshape(-1, x.shape[-1] * x.shape[-2])
    ones = np.ones(rows.shape[1], x.dtype)
    return {"elementwise x * dy -> out": _time(lambda: np.multiply(x, dy, out=out), reps, clock),
            "BLAS row sums x @ ones": _time(lambda: rows @ ones, reps, clock)}


def profile(name: str, m, theirs, x, dy, reps: int, clock, unit: float) -> None:
    """Fastest times of the parts of one syncnorm step and of torch's forward and backward, also
    in units of one elementwise pass over the input (`pass_costs`)."""
    from syncnorm.functional.moments import moments

    N, C = x.shape[:2]
    G = 1 if isinstance(m, nn.LayerNorm) else (m.num_groups if isinstance(m, nn.GroupNorm) else C)
    rows = x.reshape(1, N * G, x[0].size // G)
    xt = torch.from_numpy(x).requires_grad_(True)
    dyt = torch.from_numpy(dy)

    def torch_fwd():
        with torch.no_grad():
            theirs(xt)

    parts = {"statistics (moments)": _time(lambda: moments(rows, rows[0, :, 0].astype(np.float64)),
                                           reps, clock),
             "forward": _time(lambda: m(x), reps, clock),
             "forward+backward": _time(lambda: (m(x), m.backward(dy)), reps, clock),
             "torch forward": _time(torch_fwd, reps, clock),
             "torch forward+backward": _time(lambda: step_torch(theirs, xt, dyt), reps, clock)}
    print(f"  profile {name} (fastest, ms and elementwise passes): " + ", ".join(
        f"{k} {v * 1e3:.2f} ({v / unit:.1f})" for k, v in parts.items()))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shape", type=int, nargs=4, default=[32, 256, 28, 28])
    p.add_argument("--reps", type=int, default=30)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--profile", action="store_true")
    p.add_argument("--wall", action="store_true",
                   help="time with the wall clock instead of the main thread's CPU time")
    args = p.parse_args()
    clock = time.perf_counter if args.wall else time.thread_time
    N, C, H, W = args.shape
    rng = np.random.default_rng(0)
    x = rng.normal(0.5, 2.0, args.shape).astype(np.float32)
    dy = rng.normal(0.0, 1.0, args.shape).astype(np.float32)
    print(f"float32 input {tuple(args.shape)}, training forward + backward, 1 thread, torch "
          f"{torch.__version__}, numpy {np.__version__}; median of {args.reps} steps per block, "
          f"{args.rounds} rounds, {'wall-clock' if args.wall else 'main-thread CPU'} time")
    if args.profile:
        costs = pass_costs(x, dy, args.reps, clock)
        unit = costs["elementwise x * dy -> out"]
        print("one pass over the input: " + ", ".join(f"{k} {v * 1e3:.2f} ms"
                                                     for k, v in costs.items()))
    for name, make_ours, make_theirs in layers(C, (H, W)):
        ours, theirs = make_ours(), make_theirs()
        ratios, all_a, all_b = [], [], []
        for r in range(args.rounds):
            a, b = measure(ours, theirs, x, dy, args.reps, clock, torch_first=r % 2 == 1)
            ratios.append(np.median(a) / np.median(b))
            all_a += a
            all_b += b
        print(f"{name:22s} syncnorm/torch = {np.median(ratios):5.2f}x median (rounds: "
              + " ".join(f"{q:.2f}" for q in ratios)
              + f"; {np.median(all_a) * 1e3:.1f} ms vs {np.median(all_b) * 1e3:.1f} ms),  "
              f"{min(all_a) / min(all_b):5.2f}x fastest steps ({min(all_a) * 1e3:.1f} ms vs "
              f"{min(all_b) * 1e3:.1f} ms)")
        if args.profile:
            profile(name, ours, theirs, x, dy, max(5, args.reps // 2), clock, unit)


if __name__ == "__main__":
    main()
