"""`python -m syncnorm.check`: SyncBatchNorm across the ranks of this job against single-process
BatchNorm on the whole batch.

Every rank draws the same global batch (same seed) and keeps an uneven shard of it (one rank may
hold none). A small model with BatchNorm layers is converted with `convert_sync_batchnorm`; each
rank runs forward and backward on its shard, and compares its outputs, input gradients, summed
parameter gradients and running statistics with one process running the plain model on the whole
batch. Rank 0 prints the largest differences; the exit code is 1 when one exceeds the tolerance.
"""
from __future__ import annotations

import argparse
import sys

import numpy as np

from .. import nn
from ..distributed import all_reduce, get_world_group


def shard_sizes(total: int, parts: int, rng: np.random.Generator) -> list[int]:
    """Uneven sizes summing to `total`; with 3+ parts one of them is 0."""
    cuts = np.sort(rng.integers(0, total + 1, parts - 1))
    sizes = np.diff(np.concatenate([[0], cuts, [total]])).astype(int).tolist()
    if parts >= 3:
        sizes[1], sizes[0] = 0, sizes[0] + sizes[1]
    return sizes


def make_model(channels: int) -> nn.Module:
    return nn.Sequential(nn.BatchNorm2d(channels), nn.BatchNorm2d(channels, momentum=None),
                         nn.BatchNorm2d(channels, affine=False))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m syncnorm.check", description=__doc__.split("\n\n")[0])
    p.add_argument("--batch", type=int, default=24, help="global batch size")
    p.add_argument("--channels", type=int, default=8)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tol", type=float, default=1e-5)
    args = p.parse_args(argv)

    world = get_world_group()
    P, r = world.size, world.rank
    rng = np.random.default_rng(args.seed)
    sizes = shard_sizes(args.batch, P, rng)
    lo = sum(sizes[:r])
    ref = make_model(args.channels)
    sync = nn.convert_sync_batchnorm(make_model(args.channels))
    worst = np.zeros(4)  # output, input grad, param grads, running stats
    for _ in range(args.steps):
        x = (rng.standard_normal((args.batch, args.channels, 6, 5)) * 3 + 50).astype(np.float32)
        dy = rng.standard_normal(x.shape).astype(np.float32)
        mine = slice(lo, lo + sizes[r])
        for m in (ref, sync):
            m.zero_grad()
        y_ref, y = ref(x), sync(x[mine])
        dx_ref, dx = ref.backward(dy), sync.backward(dy[mine])
        worst[0] = max(worst[0], float(np.abs(y - y_ref[mine]).max(initial=0)))
        worst[1] = max(worst[1], float(np.abs(dx - dx_ref[mine]).max(initial=0)))
        grads = np.concatenate([p_.grad.astype(np.float64) for p_ in sync.parameters()])
        grads = all_reduce(grads, world, label="check: parameter gradients")
        grads_ref = np.concatenate([p_.grad for p_ in ref.parameters()])
        worst[2] = max(worst[2], float(np.abs(grads - grads_ref).max() / (1 + np.abs(grads_ref).max())))
    for (_, a), (_, b) in zip(ref.named_buffers(), sync.named_buffers()):
        worst[3] = max(worst[3], float(np.abs(a.astype(np.float64) - b).max()))
    worst = all_reduce(worst, world, op="max", label="check: largest differences")
    ok = bool(np.all(worst <= args.tol))
    if r == 0:
        print(f"SyncBatchNorm on {P} rank(s), shards {sizes} of a batch of {args.batch}, "
              f"{args.steps} steps, vs single-process BatchNorm on the whole batch:")
        for name, v in zip(("outputs", "input gradients", "parameter gradients (relative)",
                            "running statistics"), worst):
            print(f"  max |difference| in {name:32s} {v:.2e}")
        print("MATCH" if ok else f"MISMATCH (tolerance {args.tol:g})")
        print_kernels()
    return 0 if ok else 1


def print_kernels() -> None:
    """The kernel engine the check ran with (SYNCNORM_KERNELS; docs/performance.md)."""
    from ..functional import engine
    print(f"kernels: {engine.describe()}")


if __name__ == "__main__":
    sys.exit(main())
