"""Building blocks of the digits training job: model setup, one training step, evaluation.

Shared by `train` (the job) and `equivalence` (the single-process comparison),
so both run exactly the same step.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from .. import nn
from ..distributed import all_reduce
from ..distributed.group import ProcessGroup, new_subgroups
from ..nn.dropout import set_dropout_keys
from ..optim import SGD
from ..parallel import DistributedDataParallel
from .models import digits_cnn

__all__ = ["ModelConfig", "sync_group", "build_model", "make_optimizer", "lr_at", "train_step",
           "evaluate", "allreduce", "rank_batch", "describe_bn"]


@dataclass(frozen=True)
class ModelConfig:
    """What decides the model and its updates (the same on every rank)."""

    width: int = 16
    dropout: float = 0.1
    dtype: str = "float32"
    seed: int = 0
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    nesterov: bool = False


def sync_group(sync_group_size: int | None, world: ProcessGroup) -> ProcessGroup | None:
    """None for plain local BatchNorm (size 0); the world for None or the world's size; else this
    rank's subgroup of `sync_group_size` consecutive ranks (collective over the world)."""
    if sync_group_size == 0:
        return None
    if sync_group_size is None or sync_group_size == world.size:
        return world
    if sync_group_size < 0 or world.size % sync_group_size:
        raise ValueError(f"--sync-group-size {sync_group_size} must divide the number of ranks "
                         f"({world.size}), or be 0 for local BatchNorm")
    mine, _ = new_subgroups(sync_group_size)
    return mine


def build_model(cfg: ModelConfig, bn_group: ProcessGroup | None, convert: bool = True) -> nn.Module:
    """The demo CNN initialised from cfg.seed; BatchNorm2d layers become SyncBatchNorm over
    `bn_group` when `convert` and a group is given."""
    model = digits_cnn(width=cfg.width, dropout=cfg.dropout, dtype=np.dtype(cfg.dtype),
                       generator=np.random.default_rng(cfg.seed))
    if convert and bn_group is not None:
        model = nn.convert_sync_batchnorm(model, bn_group)
    return model


def make_optimizer(model: nn.Module, cfg: ModelConfig) -> SGD:
    return SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay,
               nesterov=cfg.nesterov)


def lr_at(step: int, total: int, base: float, schedule: str) -> float:
    """Learning rate of global step `step` (0-based) of `total`: constant, or cosine to 0."""
    if schedule == "constant" or total <= 1:
        return base
    if schedule == "cosine":
        return base * 0.5 * (1.0 + math.cos(math.pi * step / total))
    raise ValueError(f"unknown learning-rate schedule {schedule!r} (constant or cosine)")


def rank_batch(indices: np.ndarray, step: int, batch_size: int) -> np.ndarray:
    """The `step`-th batch of a rank's epoch indices (the last one may be shorter)."""
    return indices[step * batch_size:(step + 1) * batch_size]


def train_step(net: nn.Module, model: nn.Module, criterion: nn.CrossEntropyLoss, opt: SGD,
               x: np.ndarray, y: np.ndarray, sample_ids: np.ndarray, global_step: int, seed: int,
               lr: float) -> float:
    """One SGD step: forward, loss (mean over this rank's samples), backward (through `net`, the
    DDP wrapper or the model itself), update. Dropout masks are keyed by sample id and step, so they
    do not depend on how the global batch was split. Returns this rank's mean loss."""
    set_dropout_keys(model, sample_ids, global_step, seed)
    for g in opt.param_groups:
        g["lr"] = lr
    opt.zero_grad()
    out = net(x)
    loss = criterion(out, y)
    net.backward(criterion.backward())
    opt.step()
    return float(loss)


def allreduce(values: np.ndarray, world: ProcessGroup, op: str = "sum") -> np.ndarray:
    """A small array (S...) reduced in float64 over the world: a new (S...) array."""
    return all_reduce(np.asarray(values, dtype=np.float64), world, op, label="metrics Allreduce")


def evaluate(model: nn.Module, x: np.ndarray, y: np.ndarray, world: ProcessGroup,
             batch_size: int = 256) -> tuple[float, float, int]:
    """Test loss and accuracy: each rank evaluates every P-th sample in eval mode, then one
    Allreduce. Returns (mean loss, accuracy, count)."""
    was = model.training
    model.eval()
    crit = nn.CrossEntropyLoss(reduction="sum")
    mine = np.arange(world.rank, len(y), world.size)
    tot = np.zeros(3)
    for lo in range(0, mine.size, batch_size):
        b = mine[lo:lo + batch_size]
        out = model(x[b])
        tot[0] += float(crit(out, y[b]))
        tot[1] += int(np.sum(np.argmax(out, axis=1) == y[b]))
        tot[2] += b.size
    model.train(was)
    tot = allreduce(tot, world)
    return tot[0] / tot[2], tot[1] / tot[2], int(tot[2])


def describe_bn(bn_group: ProcessGroup | None, world: ProcessGroup) -> str:
    if bn_group is None:
        return "local BatchNorm (per rank)"
    if bn_group.size == world.size:
        return f"SyncBatchNorm over all {world.size} rank(s)"
    return f"SyncBatchNorm in {world.size // bn_group.size} groups of {bn_group.size}"


def wrap(model: nn.Module, world: ProcessGroup, bn_group: ProcessGroup | None,
         bucket_cap_mb: float, **kw: Any) -> DistributedDataParallel:
    """DDP over the world. Buffers need no per-step broadcast when SyncBatchNorm spans the world
    (they are equal on every rank already); otherwise rank 0's are broadcast, as torch does."""
    synced = bn_group is not None and bn_group.size == world.size
    return DistributedDataParallel(model, world, bucket_cap_mb=bucket_cap_mb,
                                   broadcast_buffers=not synced, **kw)
