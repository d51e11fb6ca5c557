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

import numpy as np

from .. import nn
from ..data import load_digits
from ..distributed.env import launcher_info
from ..distributed.group import get_world_group
from ..nn.sync_batchnorm import SyncBatchNorm
from ..parallel import DistributedSampler
from . import cli, numerics
from .checkpointing import check_checkpoint_dir, resume, save
from .cli import UsageError
from .progress import Progress, format_table
from .run import Model, Position, Run, Stop, Tally, exit_together, model_config
from .trainer import (allreduce, build_model, describe_bn, evaluate, lr_at, make_optimizer, rank_batch,
                      sync_group, train_step, wrap)

__all__ = ["main", "parse_args"]

def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The options, every value checked (exit 2 with the accepted range on a bad one)."""
    return cli.parse_args(argv, __doc__.split("\n\n")[0])



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
        exit_together()  # the message is out before any rank ends the job
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


def check_equivalence_first(run: Run) -> int:
    """--check-equivalence K: K steps on the P ranks against one process with batch P*B. Returns 1
    when SyncBatchNorm over all ranks did not follow the single process, else 0."""
    args, world, bn_group = run.args, run.world, run.bn_group
    if args.check_equivalence <= 0:
        return 0
    from .equivalence import check_equivalence
    res = check_equivalence(model_config(args), run.x_train, run.y_train, args.check_equivalence,
                            args.batch_size, world, bn_group, args.bucket_cap_mb)
    run.say(res.line(run.bn))
    run.say(f"EQUIVALENCE ranks={world.size} bn={'sync' if bn_group is not None else 'local'} "
            f"group={bn_group.size if bn_group is not None else 0} loss_diff={res.loss_diff:.3e} "
            f"param_diff={res.param_diff:.3e} buffer_diff={res.buffer_diff:.3e} match={int(res.match)}")
    return int(not res.match and bn_group is not None and bn_group.size == world.size)


def build_model_and_optimizer(run: Run) -> Model:
    """The model (SyncBatchNorm over the run's group), SGD, the loss and this rank's sampler."""
    args, world = run.args, run.world
    cfg = model_config(args)
    model = build_model(cfg, run.bn_group)
    sampler = DistributedSampler(len(run.y_train), world.size, world.rank, shuffle=True, seed=args.seed)
    steps_per_epoch = math.ceil(len(sampler) / args.batch_size)
    return Model(model, make_optimizer(model, cfg), nn.CrossEntropyLoss(), sampler, steps_per_epoch,
                 steps_per_epoch * args.epochs)


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


def _sync_collectives(model: nn.Module) -> int:
    """Allreduces the model's SyncBatchNorm layers have made so far."""
    return sum(m.collective_calls for m in model.modules() if isinstance(m, SyncBatchNorm))


if __name__ == "__main__":
    sys.exit(main())
