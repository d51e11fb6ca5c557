"""`syncnorm-train` / `python -m syncnorm.train`: data-parallel training of a small CNN on the
shipped UCI digits, with its BatchNorm layers converted to SyncBatchNorm.

Run it on P ranks with an MPI launcher, e.g. `syncnorm-launch -n 4 -- python -m mpi4py -m
syncnorm.train` (a plain `python -m syncnorm.train` is one rank). Each rank trains on its share of
every epoch (DistributedSampler) with a per-rank batch of --batch-size; DistributedDataParallel
averages the gradients (one Allreduce per bucket); SyncBatchNorm makes the batch statistics span
the ranks of each --sync-group-size group (0: plain local BatchNorm, for comparison). Rank 0 shows
progress and prints a final table; --check-equivalence K first checks on K steps that the P-rank
run follows the same trajectory as one process with batch P*B.

Checkpoints (--checkpoint-dir, checked before training starts): rank 0 writes DIR/checkpoint.npz
atomically at every epoch end, every --checkpoint-every steps and at the end; --resume makes every
rank continue from it (model, momentum buffers, running statistics, epoch and step), bitwise as if
never interrupted when the numerical environment (kernels, numpy and its BLAS, BLAS threads per
rank) is the one the checkpoint records. Exit status: 0 done, 1 accuracy below
--require-accuracy or equivalence failed, 2 bad arguments or a checkpoint that cannot be resumed,
3 a checkpoint that could not be written.
"""
from __future__ import annotations

import argparse
import math
import sys
import time
import zlib
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
from . import cli, numerics
from .checkpoint_dir import CheckpointDirError, checkpoint_bytes, prepare
from .cli import UsageError
from .progress import Progress, format_table
from .trainer import (ModelConfig, allreduce, build_model, describe_bn, evaluate, lr_at,
                      make_optimizer, rank_batch, sync_group, train_step, wrap)

__all__ = ["main", "parse_args"]

CHECKPOINT_NAME = "checkpoint.npz"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The options, every value checked (exit 2 with the accepted range on a bad one)."""
    return cli.parse_args(argv, __doc__.split("\n\n")[0])



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


#: exit status of a checkpoint that could not be written
SAVE_FAILED = 3


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        run = set_up(args)
        check_checkpoint_dir(run)
        status = check_equivalence_first(run)
        m = build_model_and_optimizer(run)
        pos = resume(run, m) if args.resume or args.resume_if_exists else Position()
        m.net = wrap(m.model, run.world, run.bn_group, args.bucket_cap_mb)
        tally = train_epochs(run, m, pos)
    except Stop as e:
        return e.code
    if tally.stopped:
        run.say(f"stopped after step {pos.global_step} as asked (--stop-after-step); checkpoint in "
                f"{run.ckpt}")
        return status
    return max(status, final_report(run, m, tally))


def set_up(args: argparse.Namespace) -> Run:
    """The world, the checks that need it, the SyncBatchNorm group, the numerical environment and
    the data; rank 0 prints what the run is."""
    world = get_world_group()
    data = load_digits(np.dtype(args.dtype))
    x_train, y_train = data.train_x, data.train_y
    if args.max_train is not None:
        x_train, y_train = x_train[:args.max_train], y_train[:args.max_train]
    try:  # the same on every rank: rank 0 reports it
        cli.check_against_world(args, world.size, len(DistributedSampler(len(y_train), world.size, 0)))
    except UsageError as e:
        if world.rank == 0:
            print(f"syncnorm-train: error: {e}", file=sys.stderr, flush=True)
        raise Stop(2) from None
    bn_group = sync_group(args.sync_group_size, world)
    run = Run(args, world, bn_group, describe_bn(bn_group, world), data, x_train, y_train,
              numerics.environment(world))
    P = world.size
    run.say(f"syncnorm-train: digits CNN (width {args.width}), {P} rank(s), {run.bn}, batch "
            f"{args.batch_size} per rank ({args.batch_size * P} global), {len(y_train)} train / "
            f"{len(data.test_y)} test images")
    return run


def report_once(world: ProcessGroup, message: str | None, line: str = "{}") -> bool:
    """Collective: whether any rank has a `message` (a failure). Each distinct message is printed
    to stderr once, formatted by `line`, by the lowest rank that has it."""
    code = (zlib.crc32(message.encode()) | 1) if message is not None else 0
    codes = all_gather(np.array([code], np.int64), world, label="failure report Allgather")[:, 0]
    if message is not None and code not in codes[:world.rank]:
        print(line.format(message, rank=world.rank), file=sys.stderr, flush=True)
    return bool(np.any(codes))


def check_checkpoint_dir(run: Run) -> None:
    """--checkpoint-dir, before any training: rank 0 checks the directory (see checkpoint_dir.py)
    and removes temporary files of an interrupted save; exit 2 on every rank when it cannot hold
    checkpoints."""
    if run.ckpt is None:
        return
    missing = _no_checkpoint(run.ckpt) if run.args.resume and not run.ckpt.exists() else None
    if report_once(run.world, missing, "rank {rank}: {}"):  # before anything is created
        raise Stop(2)
    error, removed = None, []
    if run.world.rank == 0:
        need = checkpoint_bytes(build_model(_config(run.args), None, convert=False))
        try:
            removed = prepare(run.ckpt, need)
        except CheckpointDirError as e:
            error = str(e)
    if report_once(run.world, error, "syncnorm-train: error: --checkpoint-dir: {}"):
        raise Stop(2)
    if removed:
        run.say(f"removed {len(removed)} temporary file(s) left by an interrupted save: "
                f"{', '.join(p.name for p in removed)}")


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
    """Load the checkpoint into the model and optimizer; the position to go on from. Collective:
    when any rank cannot resume, every rank exits with status 2 (each distinct reason printed once)."""
    pos, refusal, warning = Position(), None, None
    try:
        pos, warning = _load(run, m)
    except CheckpointError as e:
        refusal = str(e)
    if report_once(run.world, refusal, "rank {rank}: {}"):
        raise Stop(2)
    report_once(run.world, warning, "rank {rank}: {}")
    return pos


def _load(run: Run, m: Model) -> tuple[Position, str | None]:
    """This rank's part of `resume`: the position, and a warning to print (--allow-env-change)."""
    ckpt = run.ckpt
    assert ckpt is not None  # parse_args requires --checkpoint-dir with --resume(-if-exists)
    if not ckpt.exists():
        if run.args.resume:  # it was there when the job started
            raise CheckpointError(_no_checkpoint(ckpt))
        run.say(f"no checkpoint at {ckpt} yet: starting from the beginning (--resume-if-exists)")
        return Position(), None
    try:
        meta = load_training_checkpoint(ckpt, m.model, m.opt)
    except CheckpointError as e:
        raise CheckpointError(f"cannot resume: {e}") from None
    missing = [k for k in ("run", "epoch", "step_in_epoch", "global_step", "sampler", "epoch_loss")
               if k not in meta]
    if not missing and not isinstance(meta["run"], dict):
        missing = ["run"]
    if missing:  # a valid checkpoint, but not one syncnorm-train wrote
        raise CheckpointError(f"cannot resume from {ckpt}: it was not written by syncnorm-train (its "
                              f"metadata lacks {', '.join(missing)})")
    identity = _run_identity(run.args, run.world, len(run.y_train))
    diff = {k: (meta["run"].get(k), v) for k, v in identity.items() if meta["run"].get(k) != v}
    if diff:
        raise CheckpointError(f"cannot resume from {ckpt}: it was written by a different run (saved vs "
                              f"now: {diff})")
    warning = _check_numerics(run, meta.get("numerics"))
    m.sampler.load_state_dict(meta["sampler"])
    pos = Position(meta["epoch"], meta["step_in_epoch"], meta["global_step"],
                   np.array(meta["epoch_loss"][run.world.rank], dtype=np.float64))
    run.say(f"resumed from {ckpt} at epoch {pos.epoch + 1}, step {pos.global_step}/{m.total_steps}")
    return pos, warning


def _no_checkpoint(ckpt: Path) -> str:
    return (f"cannot resume: no checkpoint at {ckpt} (--resume-if-exists starts from the beginning "
            "when there is none)")


def _check_numerics(run: Run, saved: Any) -> str | None:
    """Refuse a checkpoint written in another numerical environment, unless --allow-env-change;
    then return the warning that the results will differ."""
    ckpt, rank = run.ckpt, run.world.rank
    diff = numerics.differences(saved.get("ranks") if isinstance(saved, dict) else None,
                                run.numerics, rank)
    if not diff:
        return None
    allow = run.args.allow_env_change
    if "record" in diff and not allow:
        raise CheckpointError(f"cannot resume from {ckpt}: it does not record the numerical environment "
                              "it was written in (an older syncnorm wrote it), so continuing bitwise "
                              "cannot be checked; pass --allow-env-change to resume anyway")
    if not allow:
        raise CheckpointError(f"cannot resume from {ckpt}: it was written in another numerical "
                              "environment, so the run would not continue bitwise as if never "
                              f"interrupted (saved vs now: {diff}); resume in the environment it "
                              "records, or pass --allow-env-change to accept results that differ")
    what = "no record" if "record" in diff else f"saved vs now: {diff}"
    return (f"resuming from {ckpt} in another numerical environment ({what}) as --allow-env-change "
            "allows: the results will differ from an uninterrupted run's")


def save(run: Run, m: Model, pos: Position, tag: str) -> None:
    """Write the checkpoint (collective: every rank's loss sums travel to rank 0, which writes).
    A failed write ends the job on every rank with status 3, one line from rank 0."""
    if run.ckpt is None:
        return
    losses = all_gather(pos.epoch_loss.astype(np.float64), run.world, label="checkpoint loss Allgather")
    error = None
    if run.world.rank == 0:
        meta = {"epoch": pos.epoch, "step_in_epoch": pos.step_in_epoch, "global_step": pos.global_step,
                "sampler": m.sampler.state_dict(), "epoch_loss": losses.tolist(),
                "run": _run_identity(run.args, run.world, len(run.y_train)), "tag": tag,
                "numerics": {"dtype": run.args.dtype, "world_size": run.world.size,
                             "ranks": run.numerics}}
        try:
            save_training_checkpoint(run.ckpt, m.model, m.opt, meta)
        except CheckpointError as e:
            error = str(e)
    if report_once(run.world, error, "syncnorm-train: CheckpointError: {}"):
        raise Stop(SAVE_FAILED)


def _progress(run: Run, m: Model) -> Progress:
    mode = run.args.progress
    if mode == "auto":
        mode = "tty" if sys.stdout.isatty() and launcher_info() is None else "lines"
    return Progress(m.total_steps, run.args.epochs, enabled=(run.world.rank == 0 and mode != "none"),
                    tty=(mode == "tty"))


def train_epochs(run: Run, m: Model, pos: Position) -> Tally:
    """The epoch loop from `pos` (advanced in place): steps, checkpoints, progress, and the stop
    that --stop-after-step asks for."""
    assert m.net is not None
    progress = _progress(run, m)
    tally = Tally()
    coll0 = (m.net.collectives, _sync_collectives(m.model))
    try:
        _epochs(run, m, pos, progress, tally)
    finally:
        progress.close()
    tally.collectives = (m.net.collectives - coll0[0], _sync_collectives(m.model) - coll0[1])
    return tally


def _epochs(run: Run, m: Model, pos: Position, progress: Progress, tally: Tally) -> None:
    """Steps until the last epoch ends or --stop-after-step stops the run (tally.stopped)."""
    args, P = run.args, run.world.size
    assert m.net is not None
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
