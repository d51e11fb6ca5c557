"""The property that makes SyncBatchNorm worth having, checked on the real training step.

P ranks, each training on its own batch of B samples with SyncBatchNorm over all ranks and
gradients averaged by DistributedDataParallel, follow the same trajectory (loss per step, parameters
and running statistics after k steps) as ONE process training on the union of those batches (P*B
samples) with plain BatchNorm, up to floating-point rounding. With local BatchNorm each rank
normalizes its B samples alone, and the trajectories differ.

Dropout stays on: its masks are keyed by sample id and step (`nn.set_dropout_keys`), so a sample gets
the same mask on whichever rank it lands, which keeps the comparison fair.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .. import nn
from ..distributed import all_gather, broadcast
from ..distributed.group import ProcessGroup
from ..parallel import DistributedSampler
from .trainer import (ModelConfig, allreduce, build_model, make_optimizer, rank_batch, train_step,
                      wrap)

__all__ = ["EquivalenceResult", "check_equivalence", "TOLERANCE"]

#: largest difference accepted as "the same trajectory", by dtype (relative to 1 + |value|)
TOLERANCE = {"float64": 1e-9, "float32": 2e-4}


@dataclass
class EquivalenceResult:
    steps: int
    ranks: int
    batch: int
    loss_diff: float  # max over steps of |loss_P - loss_1|
    param_diff: float  # max |p_P - p_1| / (1 + max |p_1|) over parameters
    buffer_diff: float  # same for running statistics
    losses: np.ndarray  # the P-rank run's global loss per step
    match: bool

    def line(self, bn: str) -> str:
        verdict = "SAME TRAJECTORY (within float rounding)" if self.match else "DIFFERENT TRAJECTORY"
        return (f"equivalence, {self.steps} steps: {self.ranks} rank(s) x batch {self.batch} with {bn} vs "
                f"1 process x batch {self.ranks * self.batch} with BatchNorm: max |d loss| "
                f"{self.loss_diff:.2e}, max |d param| {self.param_diff:.2e}, max |d running stat| "
                f"{self.buffer_diff:.2e} -> {verdict}")


def _rel(a: np.ndarray, b: np.ndarray) -> float:
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b), initial=0.0) / (1.0 + np.max(np.abs(b), initial=0.0)))


def check_equivalence(cfg: ModelConfig, x: np.ndarray, y: np.ndarray, steps: int, batch_size: int,
                      world: ProcessGroup, bn_group: ProcessGroup | None, bucket_cap_mb: float = 25.0
                      ) -> EquivalenceResult:
    """Train `steps` steps on every rank (collective), then on rank 0 alone the single-process
    reference; every rank returns the result (the verdict is broadcast)."""
    P = world.size
    model = build_model(cfg, bn_group)
    net = wrap(model, world, bn_group, bucket_cap_mb)
    opt = make_optimizer(model, cfg)
    crit = nn.CrossEntropyLoss()
    sampler = DistributedSampler(len(y), P, world.rank, shuffle=True, seed=cfg.seed)
    sampler.set_epoch(0)
    idx = sampler.indices()
    if steps * batch_size > idx.size:
        raise ValueError(f"--check-equivalence {steps} needs {steps * batch_size} samples per rank; a "
                         f"rank has {idx.size}")
    losses = np.zeros(steps)
    for s in range(steps):
        b = rank_batch(idx, s, batch_size)
        losses[s] = train_step(net, model, crit, opt, x[b], y[b], b, s, cfg.seed, cfg.lr)
    losses = allreduce(losses, world) / P  # equal batch sizes: the mean of the rank means
    mine = np.ascontiguousarray(idx[:steps * batch_size])
    all_idx = all_gather(mine, world, label="equivalence sample ids Allgather")  # (P, steps * B)
    result = np.zeros(3)
    if world.rank == 0:
        ref = build_model(cfg, None, convert=False)
        ref_opt = make_optimizer(ref, cfg)
        ref_losses = np.zeros(steps)
        for s in range(steps):
            gb = np.concatenate([rank_batch(all_idx[r], s, batch_size) for r in range(P)])
            ref_losses[s] = train_step(ref, ref, crit, ref_opt, x[gb], y[gb], gb, s, cfg.seed, cfg.lr)
        result[0] = float(np.max(np.abs(losses - ref_losses), initial=0.0))
        result[1] = max((_rel(p.data, q.data) for p, q in zip(model.parameters(), ref.parameters())),
                        default=0.0)
        result[2] = max((_rel(a, b) for (_, a), (_, b) in zip(model.named_buffers(), ref.named_buffers())),
                        default=0.0)
    result = broadcast(result, world, 0, label="equivalence verdict Bcast")
    tol = TOLERANCE[str(np.dtype(cfg.dtype))]
    match = bool(result[0] <= tol * (1 + np.max(np.abs(losses))) and result[1] <= tol and result[2] <= tol)
    return EquivalenceResult(steps, P, batch_size, float(result[0]), float(result[1]), float(result[2]),
                             losses, match)
