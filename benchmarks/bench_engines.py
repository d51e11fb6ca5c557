"""Both kernel engines (numpy, numba) beside torch for the normalization layers: one run, the three
alternating step by step, thread CPU time, float32, one thread; median ms per forward + backward
and ratios to torch. torch's CPU allocator hands large outputs back to the system and takes fresh
pages (page faults, counted per step) more often than numpy does, so its time moves between runs;
the last columns compare the medians over the steps in which each candidate took no page fault
(the kernels without the allocator's share).

    python benchmarks/bench_engines.py [NAME-SUBSTRING ...] [--reps N] [--threads N]

--threads N gives the compiled kernels (SYNCNORM_NUM_THREADS) and torch N threads and times wall
clock instead (the thread CPU time of the main thread would miss the other threads' work).
"""
import os, resource, sys, time
args = sys.argv[1:]
THREADS = int(args[args.index("--threads") + 1]) if "--threads" in args else 1
os.environ["SYNCNORM_NUM_THREADS"] = str(THREADS)  # read when syncnorm is imported
import numpy as np, torch
import syncnorm
from syncnorm.functional import engine
torch.set_num_threads(THREADS)
clock = time.thread_time if THREADS == 1 else time.perf_counter
rng = np.random.default_rng(0)
CASES = [
    ("BatchNorm2d", (32, 256, 28, 28), lambda: syncnorm.nn.BatchNorm2d(256), lambda: torch.nn.BatchNorm2d(256)),
    ("GroupNorm(32,256)", (32, 256, 28, 28), lambda: syncnorm.nn.GroupNorm(32, 256), lambda: torch.nn.GroupNorm(32, 256)),
    ("LayerNorm([256,28,28])", (32, 256, 28, 28), lambda: syncnorm.nn.LayerNorm([256, 28, 28]), lambda: torch.nn.LayerNorm([256, 28, 28])),
    ("InstanceNorm2d(256)", (32, 256, 28, 28), lambda: syncnorm.nn.InstanceNorm2d(256), lambda: torch.nn.InstanceNorm2d(256)),
    ("BatchNorm1d (4096,256)", (4096, 256), lambda: syncnorm.nn.BatchNorm1d(256), lambda: torch.nn.BatchNorm1d(256)),
    ("BatchNorm1d (1024,512)", (1024, 512), lambda: syncnorm.nn.BatchNorm1d(512), lambda: torch.nn.BatchNorm1d(512)),
    ("LocalResponseNorm(5)", (32, 256, 28, 28), lambda: syncnorm.nn.LocalResponseNorm(5), lambda: torch.nn.LocalResponseNorm(5)),
    ("BatchNorm2d small (8,16,4,4)", (8, 16, 4, 4), lambda: syncnorm.nn.BatchNorm2d(16), lambda: torch.nn.BatchNorm2d(16)),
]
REPS = int(args[args.index("--reps") + 1]) if "--reps" in args else None
OPTS = ("--reps", "--threads")
WANT = [a for i, a in enumerate(args) if a not in OPTS and (i == 0 or args[i - 1] not in OPTS)]
print(f"threads {THREADS}, clock {'thread CPU time' if THREADS == 1 else 'wall'}; "
      f"kernels: {engine.describe()}", flush=True)
for name, shape, mk, mkt in CASES:
    if WANT and not any(w.lower() in name.lower() for w in WANT):
        continue
    x = rng.standard_normal(shape).astype(np.float32); dy = rng.standard_normal(shape).astype(np.float32)
    layers = {}
    for eng in ("numpy", "numba"):
        with engine.use(eng):
            layers[eng] = mk()
    tl = mkt(); xt = torch.from_numpy(x).requires_grad_(); dyt = torch.from_numpy(dy)
    def run(eng):
        if eng == "torch":
            xt.grad = None; tl.zero_grad(set_to_none=True); tl(xt).backward(dyt); return
        with engine.use(eng):
            l = layers[eng]; l(x); l.backward(dy)
    order = ["numpy", "numba", "torch"]
    for e in order: run(e)
    reps = REPS or (5 if x.size > 1e6 else 200)
    t = {e: [] for e in order}
    faults = {e: [] for e in order}
    for r in range(reps):
        for e in order[r % 3:] + order[:r % 3]:
            f = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            c = clock(); run(e); t[e].append(clock() - c)
            faults[e].append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f)
    med = {e: np.median(v) * 1e3 for e, v in t.items()}
    clean = {e: [v for v, f in zip(t[e], faults[e]) if f == 0] for e in order}
    cmed = {e: np.median(v) * 1e3 if v else float("nan") for e, v in clean.items()}
    print(f"{name:30s} all steps: torch {med['torch']:8.3f} ms | numpy {med['numpy'] / med['torch']:.2f}x "
          f"| numba {med['numba']:8.3f} ms {med['numba'] / med['torch']:.2f}x || steps without page "
          f"faults (torch {len(clean['torch'])}/{reps}, numba {len(clean['numba'])}/{reps}): torch "
          f"{cmed['torch']:8.3f} ms | numba {cmed['numba']:8.3f} ms {cmed['numba'] / cmed['torch']:.2f}x",
          flush=True)
