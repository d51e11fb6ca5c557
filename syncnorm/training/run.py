"""What the steps of syncnorm-train share: the run (arguments, ranks, data), the model being
trained, the position in the training, and how a step ends the job or reports a failure once."""
from __future__ import annotations

import argparse
import sys
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .. import nn
from ..data import Digits
from ..distributed import all_gather
from ..distributed.group import ProcessGroup
from ..optim import SGD
from ..parallel import DistributedDataParallel, DistributedSampler
from .trainer import ModelConfig

__all__ = ["CHECKPOINT_NAME", "Run", "Model", "Position", "Tally", "Stop", "exit_together",
           "report_once", "model_config", "run_identity"]

CHECKPOINT_NAME = "checkpoint.npz"


@dataclass
class Run:
    """What the steps of a run share: its arguments, its ranks and groups, and its data."""

    args: argparse.Namespace
    world: ProcessGroup
    bn_group: ProcessGroup | None  # None: local BatchNorm
    bn: str  # how the BatchNorm layers synchronize, for the messages
    data: Digits
    x_train: np.ndarray  # (n_train, 1, 8, 8)
    y_train: np.ndarray  # (n_train,)
    numerics: list[dict[str, Any]]  # every rank's numerical environment (see numerics.py)

    @property
    def ckpt(self) -> Path | None:
        """DIR/checkpoint.npz, or None without --checkpoint-dir."""
        d = self.args.checkpoint_dir
        return d / CHECKPOINT_NAME if d is not None else None

    def say(self, *parts: Any) -> None:
        """Print on rank 0 only."""
        if self.world.rank == 0:
            print(*parts, flush=True)


@dataclass
class Model:
    """The model being trained and what updates it."""

    model: nn.Module
    opt: SGD
    crit: nn.CrossEntropyLoss
    sampler: DistributedSampler
    steps_per_epoch: int
    total_steps: int
    net: DistributedDataParallel | None = None  # the DDP wrapper, once the state is final


@dataclass
class Position:
    """Where the run is: what a checkpoint must carry besides the model and the optimizer."""

    epoch: int = 0
    step_in_epoch: int = 0
    global_step: int = 0
    epoch_loss: np.ndarray = field(default_factory=lambda: np.zeros(2))  # this rank's loss sum, count


@dataclass
class Tally:
    """What the epoch loop measured, for the final report."""

    t_train: float = 0.0
    samples_done: int = 0
    steps_run: int = 0
    last_epoch_loss: float = float("nan")
    collectives: tuple[int, int] = (0, 0)  # DDP, SyncBatchNorm collectives issued by the loop
    stopped: bool = False

    @property
    def rate(self) -> float:
        """Training samples per second, all ranks together."""
        return self.samples_done / max(self.t_train, 1e-9)


class Stop(Exception):
    """Ends the job with exit status `code`; what went wrong was printed already."""

    def __init__(self, code: int) -> None:
        super().__init__(code)
        self.code = code


def exit_together() -> None:
    """Wait for every rank (one tiny Allreduce) before leaving with a failure status: a rank that
    ended first would make the launcher or mpi4py end the job, possibly before the rank that
    prints the message has printed it."""
    from ..distributed import all_reduce, get_world_group
    all_reduce(np.zeros(1), get_world_group(), label="exit together Allreduce")


def report_once(world: ProcessGroup, message: str | None, line: str = "{}") -> bool:
    """Collective: whether any rank has a `message` (a failure). Each distinct message is printed
    to stderr once, formatted by `line`, by the lowest rank that has it."""
    code = (zlib.crc32(message.encode()) | 1) if message is not None else 0
    codes = all_gather(np.array([code], np.int64), world, label="failure report Allgather")[:, 0]
    if message is not None and code not in codes[:world.rank]:
        print(line.format(message, rank=world.rank), file=sys.stderr, flush=True)
    return bool(np.any(codes))


def model_config(args: argparse.Namespace) -> ModelConfig:
    """What decides the model and its updates, from the options."""
    return ModelConfig(width=args.width, dropout=args.dropout, dtype=args.dtype, seed=args.seed,
                       lr=args.lr, momentum=args.momentum, weight_decay=args.weight_decay,
                       nesterov=args.nesterov)


def run_identity(args: argparse.Namespace, world: ProcessGroup, n_train: int) -> dict[str, Any]:
    """What must match for a checkpoint to be resumed bitwise."""
    return {"world_size": world.size, "batch_size": args.batch_size, "epochs": args.epochs,
            "n_train": n_train, "sync_group_size": args.sync_group_size, "lr_schedule": args.lr_schedule,
            **{k: v for k, v in vars(model_config(args)).items() if k != "lr"}, "lr": args.lr}
