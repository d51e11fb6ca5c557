"""`syncnorm-train` / `python -m syncnorm.train`: data-parallel training of a small CNN on the
shipped UCI digits, with its BatchNorm layers converted to SyncBatchNorm.

Run it on P ranks with an MPI launcher, e.g. `syncnorm-launch -n 4 -- python -m mpi4py -m
syncnorm.train` (a plain `python -m syncnorm.train` is one rank). Each rank trains on its share of
every epoch (DistributedSampler) with a per-rank batch of --batch-size; DistributedDataParallel
averages the gradients (one Allreduce per bucket); SyncBatchNorm makes the batch statistics span
the ranks of each --sync-group-size group (0: plain local BatchNorm, for comparison). Rank 0 shows
progress and prints a final table; --check-equivalence K first checks on K steps that the P-rank
run follows the same trajectory as one process with batch P*B.

Checkpoints (--checkpoint-dir): rank 0 writes DIR/checkpoint.npz atomically at every epoch end,
every --checkpoint-every steps and at the end; --resume makes every rank continue from it (model,
momentum buffers, running statistics, epoch and step), bitwise as if never interrupted.
Set OPENBLAS_NUM_THREADS=1 (the demo does) when ranks share cores.
"""
from __future__ import annotations

import argparse
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .. import nn
from ..checkpoint import CheckpointError, load_training_checkpoint, save_training_checkpoint
from ..data import Digits, load_digits
from ..distributed import all_gather
from ..distributed.env import launcher_info
from ..distributed.group import ProcessGroup, get_world_group
from ..nn.sync_batchnorm import SyncBatchNorm
from ..optim import SGD
from ..parallel import DistributedDataParallel, DistributedSampler
from .progress import Progress, format_table
from .trainer import (ModelConfig, allreduce, build_model, describe_bn, evaluate, lr_at,
                      make_optimizer, rank_batch, sync_group, train_step, wrap)

__all__ = ["main", "parse_args"]

CHECKPOINT_NAME = "checkpoint.npz"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="syncnorm-train", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--batch-size", type=int, default=32, help="samples per rank per step")
    p.add_argument("--epochs", type=int, default=15)
    p.add_argument("--lr", type=float, default=0.1, help="peak learning rate (SGD)")
    p.add_argument("--lr-schedule", choices=("cosine", "constant"), default="cosine")
    p.add_argument("--momentum", type=float, default=0.9)
    p.add_argument("--weight-decay", type=float, default=5e-4)
    p.add_argument("--nesterov", action="store_true")
    p.add_argument("--seed", type=int, default=0, help="initialisation, shuffling and dropout")
    p.add_argument("--width", type=int, default=16, help="channels of the first convolution")
    p.add_argument("--dropout", type=float, default=0.1)
    p.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    p.add_argument("--sync-group-size", type=int, default=None,
                   help="ranks per SyncBatchNorm group (default: all ranks; 0: local BatchNorm)")
    p.add_argument("--bucket-cap-mb", type=float, default=25.0, help="DDP gradient bucket cap")
    p.add_argument("--max-train", type=int, default=None, help="use only the first N training images")
    p.add_argument("--checkpoint-dir", type=Path, default=None)
    p.add_argument("--checkpoint-every", type=int, default=0, help="also save every N steps (0: epochs only)")
    p.add_argument("--resume", action="store_true", help="continue from CHECKPOINT_DIR/checkpoint.npz")
    p.add_argument("--stop-after-step", type=int, default=None,
                   help="save a checkpoint and stop after this many steps (simulates an interruption)")
    p.add_argument("--check-equivalence", type=int, default=0, metavar="K",
                   help="first compare K steps against one process with batch P*B (0: skip)")
    p.add_argument("--require-accuracy", type=float, default=None,
                   help="exit with status 1 when the test accuracy (0..1) ends below this")
    p.add_argument("--progress", choices=("auto", "tty", "lines", "none"), default="auto",
                   help="rank 0's progress display: a redrawn bar (tty), a line every ~10%% of the "
                        "steps and per epoch (lines), or none; auto picks tty only for a terminal "
                        "outside an MPI launcher (launchers may hand ranks a pseudo-terminal even "
                        "when the job's output goes to a file)")
    args = p.parse_args(argv)
    if args.batch_size < 1 or args.epochs < 0:
        p.error("--batch-size must be >= 1 and --epochs >= 0")
    if args.resume and args.checkpoint_dir is None:
        p.error("--resume needs --checkpoint-dir")
    return args



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


class ResumeRefused(Exception):
    """The checkpoint cannot be resumed; the message says why (printed by every rank, exit 2)."""


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    run = set_up(args)
    status = check_equivalence_first(run)
    m = build_model_and_optimizer(run)
    try:
        pos = resume(run, m) if args.resume else Position()
    except ResumeRefused as e:
        print(f"rank {run.world.rank}: {e}", file=sys.stderr, flush=True)
        return 2
    m.net = wrap(m.model, run.world, run.bn_group, args.bucket_cap_mb)
    tally = train_epochs(run, m, pos)
    if tally.stopped:
        run.say(f"stopped after step {pos.global_step} as asked (--stop-after-step); checkpoint in "
                f"{run.ckpt}")
        return status
    return max(status, final_report(run, m, tally))


def set_up(args: argparse.Namespace) -> Run:
    """The world, the SyncBatchNorm group and the data; rank 0 prints what the run is."""
    world = get_world_group()
    data = load_digits(np.dtype(args.dtype))
    x_train, y_train = data.train_x, data.train_y
    if args.max_train is not None:
        x_train, y_train = x_train[:args.max_train], y_train[:args.max_train]
    bn_group = sync_group(args.sync_group_size, world)
    run = Run(args, world, bn_group, describe_bn(bn_group, world), data, x_train, y_train)
    P = world.size
    run.say(f"syncnorm-train: digits CNN (width {args.width}), {P} rank(s), {run.bn}, batch "
            f"{args.batch_size} per rank ({args.batch_size * P} global), {len(y_train)} train / "
            f"{len(data.test_y)} test images")
    return run


def check_equivalence_first(run: Run) -> int:
    """--check-equivalence K: K steps on the P ranks against one process with batch P*B. Returns 1
    when SyncBatchNorm over all ranks did not follow the single process, else 0."""
    args, world, bn_group = run.args, run.world, run.bn_group
    if args.check_equivalence <= 0:
        return 0
    from .equivalence import check_equivalence
    res = check_equivalence(_config(args), run.x_train, run.y_train, args.check_equivalence,
                            args.batch_size, world, bn_group, args.bucket_cap_mb)
    run.say(res.line(run.bn))
    run.say(f"EQUIVALENCE ranks={world.size} bn={'sync' if bn_group is not None else 'local'} "
            f"group={bn_group.size if bn_group is not None else 0} loss_diff={res.loss_diff:.3e} "
            f"param_diff={res.param_diff:.3e} buffer_diff={res.buffer_diff:.3e} match={int(res.match)}")
    return int(not res.match and bn_group is not None and bn_group.size == world.size)


def build_model_and_optimizer(run: Run) -> Model:
    """The model (SyncBatchNorm over the run's group), SGD, the loss and this rank's sampler."""
    args, world = run.args, run.world
    cfg = _config(args)
    model = build_model(cfg, run.bn_group)
    sampler = DistributedSampler(len(run.y_train), world.size, world.rank, shuffle=True, seed=args.seed)
    steps_per_epoch = math.ceil(len(sampler) / args.batch_size)
    return Model(model, make_optimizer(model, cfg), nn.CrossEntropyLoss(), sampler, steps_per_epoch,
                 steps_per_epoch * args.epochs)


def resume(run: Run, m: Model) -> Position:
    """Load the checkpoint into the model and optimizer; the position to go on from. A missing
    checkpoint starts from the beginning; one that cannot be resumed raises ResumeRefused."""
    ckpt = run.ckpt
    assert ckpt is not None  # parse_args requires --checkpoint-dir with --resume
    if not ckpt.exists():
        run.say(f"no checkpoint at {ckpt} yet: starting from the beginning")
        return Position()
    try:
        meta = load_training_checkpoint(ckpt, m.model, m.opt)
    except CheckpointError as e:
        raise ResumeRefused(f"cannot resume: {e}") from None
    missing = [k for k in ("run", "epoch", "step_in_epoch", "global_step", "sampler", "epoch_loss")
               if k not in meta]
    if not missing and not isinstance(meta["run"], dict):
        missing = ["run"]
    if missing:  # a valid checkpoint, but not one syncnorm-train wrote
        raise ResumeRefused(f"cannot resume from {ckpt}: it was not written by syncnorm-train (its "
                            f"metadata lacks {', '.join(missing)})")
    identity = _run_identity(run.args, run.world, len(run.y_train))
    diff = {k: (meta["run"].get(k), v) for k, v in identity.items() if meta["run"].get(k) != v}
    if diff:
        raise ResumeRefused(f"cannot resume from {ckpt}: it was written by a different run (saved vs "
                            f"now: {diff})")
    m.sampler.load_state_dict(meta["sampler"])
    pos = Position(meta["epoch"], meta["step_in_epoch"], meta["global_step"],
                   np.array(meta["epoch_loss"][run.world.rank], dtype=np.float64))
    run.say(f"resumed from {ckpt} at epoch {pos.epoch + 1}, step {pos.global_step}/{m.total_steps}")
    return pos


def save(run: Run, m: Model, pos: Position, tag: str) -> None:
    """Write the checkpoint (collective: every rank's loss sums travel to rank 0, which writes)."""
    if run.ckpt is None:
        return
    losses = all_gather(pos.epoch_loss.astype(np.float64), run.world, label="checkpoint loss Allgather")
    if run.world.rank == 0:
        meta = {"epoch": pos.epoch, "step_in_epoch": pos.step_in_epoch, "global_step": pos.global_step,
                "sampler": m.sampler.state_dict(), "epoch_loss": losses.tolist(),
                "run": _run_identity(run.args, run.world, len(run.y_train)), "tag": tag}
        save_training_checkpoint(run.ckpt, m.model, m.opt, meta)


def _progress(run: Run, m: Model) -> Progress:
    mode = run.args.progress
    if mode == "auto":
        mode = "tty" if sys.stdout.isatty() and launcher_info() is None else "lines"
    return Progress(m.total_steps, run.args.epochs, enabled=(run.world.rank == 0 and mode != "none"),
                    tty=(mode == "tty"))


def train_epochs(run: Run, m: Model, pos: Position) -> Tally:
    """The epoch loop from `pos` (advanced in place): steps, checkpoints, progress, and the stop
    that --stop-after-step asks for."""
    args, P = run.args, run.world.size
    assert m.net is not None
    progress = _progress(run, m)
    tally = Tally()
    coll0 = (m.net.collectives, _sync_collectives(m.model))
    stop_at = args.stop_after_step
    while pos.epoch < args.epochs and not tally.stopped:
        m.sampler.set_epoch(pos.epoch)
        idx = m.sampler.indices()
        while pos.step_in_epoch < m.steps_per_epoch:
            b = rank_batch(idx, pos.step_in_epoch, args.batch_size)
            t0 = time.perf_counter()
            loss = train_step(m.net, m.model, m.crit, m.opt, run.x_train[b], run.y_train[b], b,
                              pos.global_step, args.seed,
                              lr_at(pos.global_step, m.total_steps, args.lr, args.lr_schedule))
            tally.t_train += time.perf_counter() - t0
            tally.samples_done += b.size * P
            tally.steps_run += 1
            pos.epoch_loss += (loss * b.size, b.size)
            pos.step_in_epoch += 1
            pos.global_step += 1
            if pos.step_in_epoch == m.steps_per_epoch:
                break  # the epoch's end reports and saves below
            progress.update(pos.global_step, pos.epoch, pos.epoch_loss[0] / pos.epoch_loss[1], tally.rate)
            if args.checkpoint_every and pos.global_step % args.checkpoint_every == 0:
                save(run, m, pos, "step")
            if stop_at is not None and pos.global_step >= stop_at:
                save(run, m, pos, "interrupted")
                tally.stopped = True
                break
        if tally.stopped:
            break
        tot = allreduce(pos.epoch_loss, run.world)
        tally.last_epoch_loss = tot[0] / tot[1]
        progress.update(pos.global_step, pos.epoch, tally.last_epoch_loss, tally.rate, end_of_epoch=True)
        pos.epoch += 1
        pos.step_in_epoch = 0
        pos.epoch_loss = np.zeros(2)
        save(run, m, pos, "epoch")
        tally.stopped = stop_at is not None and pos.global_step >= stop_at and pos.epoch < args.epochs
    progress.close()
    tally.collectives = (m.net.collectives - coll0[0], _sync_collectives(m.model) - coll0[1])
    return tally


def final_report(run: Run, m: Model, tally: Tally) -> int:
    """Evaluate on the test set, print the table and the RESULT line (rank 0); 1 when the accuracy
    is below --require-accuracy, else 0."""
    args, world = run.args, run.world
    assert m.net is not None
    if m.net.broadcast_buffers:
        m.net.sync_buffers()  # local BatchNorm: evaluate every rank with rank 0's running statistics
    test_loss, test_acc, n_test = evaluate(m.model, run.data.test_x, run.data.test_y, world)
    ddp, sbn = tally.collectives
    n = tally.steps_run
    per_step = f"{(ddp + sbn) / n:.0f}" if n else "-"
    rows = [("ranks", str(world.size)), ("BatchNorm", run.bn),
            ("batch per rank / global", f"{args.batch_size} / {args.batch_size * world.size}"),
            ("epochs / steps", f"{args.epochs} / {m.total_steps}"),
            ("test accuracy", f"{100 * test_acc:.2f} % ({int(round(test_acc * n_test))}/{n_test})"),
            ("test loss", f"{test_loss:.4f}"),
            ("train loss (last epoch)", f"{tally.last_epoch_loss:.4f}"),
            ("samples/s (training)", f"{tally.rate:.0f}"),
            ("training time", f"{tally.t_train:.1f} s"),
            ("collectives per step", f"{per_step} ({sbn / max(n, 1):.0f} SyncBatchNorm + "
                                     f"{ddp / max(n, 1):.0f} DDP)")]
    run.say(format_table(rows, "syncnorm-train: digits CNN"))
    run.say(f"RESULT test_accuracy={test_acc:.6f} test_loss={test_loss:.6f} "
            f"samples_per_s={tally.rate:.1f} train_time={tally.t_train:.3f}")
    if args.require_accuracy is not None and test_acc < args.require_accuracy:
        run.say(f"test accuracy {test_acc:.4f} is below --require-accuracy {args.require_accuracy}")
        return 1
    return 0


def _config(args: argparse.Namespace) -> ModelConfig:
    return ModelConfig(width=args.width, dropout=args.dropout, dtype=args.dtype, seed=args.seed,
                       lr=args.lr, momentum=args.momentum, weight_decay=args.weight_decay,
                       nesterov=args.nesterov)


def _run_identity(args: argparse.Namespace, world: ProcessGroup, n_train: int) -> dict[str, Any]:
    """What must match for a checkpoint to be resumed bitwise."""
    return {"world_size": world.size, "batch_size": args.batch_size, "epochs": args.epochs,
            "n_train": n_train, "sync_group_size": args.sync_group_size, "lr_schedule": args.lr_schedule,
            **{k: v for k, v in vars(_config(args)).items() if k != "lr"}, "lr": args.lr}


def _sync_collectives(model: nn.Module) -> int:
    """Allreduces the model's SyncBatchNorm layers have made so far."""
    return sum(m.collective_calls for m in model.modules() if isinstance(m, SyncBatchNorm))


if __name__ == "__main__":
    sys.exit(main())
