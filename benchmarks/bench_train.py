"""Benchmark: the cost of SyncBatchNorm in a training step, and the demo's time to accuracy.

    python benchmarks/bench_train.py [--nprocs 2] [--batch-sizes 32,64] [--rounds 15]

Part 1 (launched on --nprocs ranks, one per core by default): the demo CNN's full training step
(forward, loss, backward, DDP gradient Allreduce, SGD) with SyncBatchNorm over all ranks against the
same step with local BatchNorm, measured in the same job, interleaved in blocks so that machine noise
hits both alike. Each block's time is the slowest rank's. Reports the median step times, their
ratio (target <= 1.03x), and the collectives per step counted by a proxy communicator.
Both runs use broadcast_buffers=False, so the difference is SyncBatchNorm alone (torch's default for
local BatchNorm would add one Bcast per step).

Part 2: `syncnorm.train` with its defaults on --nprocs ranks, timed from launch to exit: the test
accuracy it reaches and the wall time (target >= 95 % in under 2 minutes at P = 2).
No timing here is asserted; the numbers are printed.
"""
from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

# the communicator wrapper syncnorm-bench counts with
from syncnorm.bench.mpi_worker import CountingComm  # noqa: E402


def worker(batch_sizes: list[int], rounds: int, block: int) -> None:
    from mpi4py import MPI

    from syncnorm import nn
    from syncnorm.data import load_digits
    from syncnorm.distributed import comm as C
    from syncnorm.distributed import get_world_group
    from syncnorm.optim import SGD
    from syncnorm.parallel import DistributedDataParallel, DistributedSampler
    from syncnorm.training.models import digits_cnn

    world = get_world_group()
    P, rank = world.size, world.rank
    data = load_digits()
    say = print if rank == 0 else (lambda *a, **k: None)
    if P > 1:  # the fixed cost of one synchronized statistics exchange, against a bare Allreduce
        from syncnorm.distributed.exchange import StatsExchange
        ex = StatsExchange(world, 10 ** 6, 32, "bench")
        buf, s1, s2 = np.zeros(2 * 32 + 6), np.zeros(32), np.zeros(32)
        best = {"bare": np.inf, "exchange": np.inf}
        for _ in range(5):
            for name in best:
                C.allreduce_sum(np.zeros(1), world.comm)
                t0 = time.perf_counter()
                for _ in range(500):
                    if name == "bare":
                        C.allreduce_sum(buf, world.comm)
                    else:
                        ex.forward(64.0, s1, s2, ("float32", s1.tobytes()))
                best[name] = min(best[name], (time.perf_counter() - t0) / 500)
        say(f"part 0: one SyncBatchNorm statistics exchange (32 channels) {best['exchange'] * 1e6:.1f} us, "
            f"a bare Allreduce of the same size {best['bare'] * 1e6:.1f} us (best of 5 x 500)")
    say(f"part 1: one training step of the demo CNN (width 16) on {P} rank(s), "
        f"{rounds} rounds x {block} steps per variant, interleaved")
    for B in batch_sizes:
        runs = {}
        for name in ("sync", "local"):
            counting = CountingComm(MPI.COMM_WORLD)
            model = digits_cnn(generator=np.random.default_rng(0))
            if name == "sync":
                model = nn.convert_sync_batchnorm(model, counting)
            ddp = DistributedDataParallel(model, counting, broadcast_buffers=False)
            opt = SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
            runs[name] = (model, ddp, opt, counting, [])
        sampler = DistributedSampler(len(data.train_y), P, rank, seed=0)
        idx = sampler.indices()
        crit = nn.CrossEntropyLoss()
        step = 0

        def one(name: str) -> None:
            nonlocal step
            model, ddp, opt, _, _ = runs[name]
            b = idx[(step * B) % (len(idx) - B):][:B]
            step += 1
            nn.set_dropout_keys(model, b, step, 0)
            opt.zero_grad()
            crit(ddp(data.train_x[b]), data.train_y[b])
            ddp.backward(crit.backward())
            opt.step()

        sync_point = np.zeros(1)
        for name in runs:  # warm-up
            for _ in range(3):
                one(name)
        for name in runs:
            runs[name][3].reset()
        for r in range(rounds):
            order = ("sync", "local") if r % 2 == 0 else ("local", "sync")
            for name in order:
                if P > 1:
                    C.allreduce_sum(sync_point, world.comm)  # start the block together
                t0 = time.perf_counter()
                for _ in range(block):
                    one(name)
                dt = np.array([(time.perf_counter() - t0) / block])
                if P > 1:
                    C.allreduce_sum(dt, world.comm, op="max")
                runs[name][4].append(float(dt[0]))
        # the sync_point/max Allreduces above go to the world comm directly, not the counting proxies
        med = {n: float(np.median(v[4])) for n, v in runs.items()}
        per_step = {n: {k: c / (rounds * block) for k, c in v[3].calls.items()} for n, v in runs.items()}
        ratio = med["sync"] / med["local"]
        paired = float(np.median(np.array(runs["sync"][4]) / np.array(runs["local"][4])))
        best = min(runs["sync"][4]) / min(runs["local"][4])
        say(f"  batch {B}/rank: SyncBatchNorm {med['sync'] * 1e3:7.2f} ms/step, local BatchNorm "
            f"{med['local'] * 1e3:7.2f} ms/step (medians of {rounds} blocks) -> ratio {ratio:.3f}x "
            f"(target <= 1.03x); median of paired-block ratios {paired:.3f}x; fastest blocks "
            f"{best:.3f}x")
        say(f"    collectives per step: SyncBatchNorm {fmt(per_step['sync'])}; local {fmt(per_step['local'])}")
        coll = {n: v[3].seconds / (rounds * block) for n, v in runs.items()}
        mean = {n: float(np.mean(v[4])) for n, v in runs.items()}
        say(f"    time inside collectives (latency + waiting for the other rank): sync "
            f"{coll['sync'] * 1e3:.2f} ms/step, local {coll['local'] * 1e3:.2f} ms/step; mean step "
            f"minus that: sync {(mean['sync'] - coll['sync']) * 1e3:.2f} ms, local "
            f"{(mean['local'] - coll['local']) * 1e3:.2f} ms -> ratio "
            f"{(mean['sync'] - coll['sync']) / (mean['local'] - coll['local']):.3f}x (this rank)")
        q = {n: np.percentile(v[4], [25, 75]) * 1e3 for n, v in runs.items()}
        say(f"    interquartile ranges: sync {q['sync'][0]:.2f}-{q['sync'][1]:.2f} ms, local "
            f"{q['local'][0]:.2f}-{q['local'][1]:.2f} ms")
        sys.stdout.flush()


def fmt(calls: dict[str, float]) -> str:
    return ", ".join(f"{v:g} {k}" for k, v in sorted(calls.items())) or "none"


def launch(nprocs: int, cmd: list[str], timeout: float) -> tuple[int, str, float]:
    from syncnorm import launch as L
    info = L.detect_mpi()
    line = L.build_command(nprocs, cmd, info)
    env = L.job_env(info)
    env.update({"OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
                "PYTHONPATH": str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")})
    t0 = time.perf_counter()
    proc = subprocess.Popen(line, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        L.kill_session(proc)
        out, _ = proc.communicate()
        return 124, out, time.perf_counter() - t0
    return proc.returncode, out, time.perf_counter() - t0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--nprocs", type=int, default=2)
    p.add_argument("--batch-sizes", default="32,64")
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--block", type=int, default=10)
    p.add_argument("--skip-demo", action="store_true")
    p.add_argument("--yield-when-idle", action="store_true",
                   help="Open MPI: waiting ranks yield the core (OMPI_MCA_mpi_yield_when_idle=1); "
                        "helps when other processes share the cores")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    sizes = [int(s) for s in args.batch_sizes.split(",")]
    if args.yield_when_idle:
        os.environ["OMPI_MCA_mpi_yield_when_idle"] = "1"
    if args.worker:
        worker(sizes, args.rounds, args.block)
        return 0
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"machine: {os.cpu_count()} core(s), load average {load:.2f} at start; ranks: {args.nprocs}; "
          f"one BLAS thread per rank{'; yield when idle' if args.yield_when_idle else ''}")
    rc, out, _ = launch(args.nprocs, [sys.executable, "-m", "mpi4py", __file__, "--worker",
                                      "--batch-sizes", args.batch_sizes, "--rounds", str(args.rounds),
                                      "--block", str(args.block)], timeout=900)
    print(out.rstrip())
    if rc != 0:
        return rc
    if args.skip_demo:
        return 0
    print(f"part 2: `syncnorm.train` with its defaults on {args.nprocs} ranks (launch to exit)")
    rc, out, wall = launch(args.nprocs, [sys.executable, "-m", "mpi4py", "-m", "syncnorm.train",
                                         "--progress", "none"], timeout=600)
    m = re.search(r"RESULT test_accuracy=(\S+) test_loss=(\S+) samples_per_s=(\S+) train_time=(\S+)", out)
    if rc != 0 or not m:
        print(out[-3000:])
        return rc or 1
    acc, loss, sps, ttrain = (float(v) for v in m.groups())
    print(f"  test accuracy {100 * acc:.2f} % (target >= 95 %), test loss {loss:.4f}, "
          f"{sps:.0f} samples/s, training {ttrain:.1f} s, wall time from launch to exit {wall:.1f} s "
          f"(target < 120 s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
