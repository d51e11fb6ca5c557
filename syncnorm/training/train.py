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
from pathlib import Path
from typing import Any

import numpy as np

from . import nn
from .checkpoint import CheckpointError, load_training_checkpoint, save_training_checkpoint
from .data import load_digits
from .distributed import comm as C
from .distributed.env import launcher_info
from .distributed.group import ProcessGroup, get_world_group
from .nn.sync_batchnorm import SyncBatchNorm
from .parallel import DistributedSampler
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
    n = 0
    for m in model.modules():
        if isinstance(m, SyncBatchNorm) and m._exchange is not None and m._exchange.group.size > 1:
            n += m._exchange.forward_calls + m._exchange.backward_calls
    return n


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    world = get_world_group()
    P, rank = world.size, world.rank
    say = print if rank == 0 else (lambda *a, **k: None)
    data = load_digits(np.dtype(args.dtype))
    x_train, y_train = data.train_x, data.train_y
    if args.max_train is not None:
        x_train, y_train = x_train[:args.max_train], y_train[:args.max_train]
    cfg = _config(args)
    bn_group = sync_group(args.sync_group_size, world)
    bn = describe_bn(bn_group, world)
    say(f"syncnorm-train: digits CNN (width {args.width}), {P} rank(s), {bn}, batch {args.batch_size}"
        f" per rank ({args.batch_size * P} global), {len(y_train)} train / {len(data.test_y)} test images",
        flush=True)

    status = 0
    if args.check_equivalence > 0:
        from .equivalence import check_equivalence
        res = check_equivalence(cfg, x_train, y_train, args.check_equivalence, args.batch_size, world,
                                bn_group, args.bucket_cap_mb)
        say(res.line(bn), flush=True)
        say(f"EQUIVALENCE ranks={P} bn={'sync' if bn_group is not None else 'local'} "
            f"group={bn_group.size if bn_group is not None else 0} loss_diff={res.loss_diff:.3e} "
            f"param_diff={res.param_diff:.3e} buffer_diff={res.buffer_diff:.3e} match={int(res.match)}",
            flush=True)
        if not res.match and bn_group is not None and bn_group.size == P:
            status = 1

    model = build_model(cfg, bn_group)
    opt = make_optimizer(model, cfg)
    crit = nn.CrossEntropyLoss()
    sampler = DistributedSampler(len(y_train), P, rank, shuffle=True, seed=args.seed)
    steps_per_epoch = math.ceil(len(sampler) / args.batch_size)
    total_steps = steps_per_epoch * args.epochs
    identity = _run_identity(args, world, len(y_train))
    epoch, step_in_epoch, global_step = 0, 0, 0
    epoch_loss = np.zeros(2)  # this rank's loss sum and sample count in the current epoch
    ckpt = args.checkpoint_dir / CHECKPOINT_NAME if args.checkpoint_dir is not None else None
    if args.resume and ckpt is not None:
        if ckpt.exists():
            try:
                meta = load_training_checkpoint(ckpt, model, opt)
            except CheckpointError as e:
                print(f"rank {rank}: cannot resume: {e}", file=sys.stderr, flush=True)
                return 2
            missing = [k for k in ("run", "epoch", "step_in_epoch", "global_step", "sampler", "epoch_loss")
                       if k not in meta]
            if not missing and not isinstance(meta["run"], dict):
                missing = ["run"]
            if missing:  # a valid checkpoint, but not one syncnorm-train wrote
                print(f"rank {rank}: cannot resume from {ckpt}: it was not written by syncnorm-train "
                      f"(its metadata lacks {', '.join(missing)})", file=sys.stderr, flush=True)
                return 2
            diff = {k: (meta["run"].get(k), v) for k, v in identity.items() if meta["run"].get(k) != v}
            if diff:
                print(f"rank {rank}: cannot resume from {ckpt}: it was written by a different run "
                      f"(saved vs now: {diff})", file=sys.stderr, flush=True)
                return 2
            epoch, step_in_epoch, global_step = meta["epoch"], meta["step_in_epoch"], meta["global_step"]
            sampler.load_state_dict(meta["sampler"])
            epoch_loss = np.array(meta["epoch_loss"][rank], dtype=np.float64)
            say(f"resumed from {ckpt} at epoch {epoch + 1}, step {global_step}/{total_steps}", flush=True)
        else:
            say(f"no checkpoint at {ckpt} yet: starting from the beginning", flush=True)
    net = wrap(model, world, bn_group, args.bucket_cap_mb)

    def save(tag: str) -> None:
        if ckpt is None:
            return
        losses = allreduce_gather(epoch_loss, world)
        if rank == 0:
            meta = {"epoch": epoch, "step_in_epoch": step_in_epoch, "global_step": global_step,
                    "sampler": sampler.state_dict(), "epoch_loss": losses, "run": identity, "tag": tag}
            save_training_checkpoint(ckpt, model, opt, meta)

    mode = args.progress
    if mode == "auto":
        mode = "tty" if sys.stdout.isatty() and launcher_info() is None else "lines"
    progress = Progress(total_steps, args.epochs, enabled=(rank == 0 and mode != "none"),
                        tty=(mode == "tty"))
    t_train, samples_done = 0.0, 0
    coll0 = (net.collectives, _sync_collectives(model))
    steps_run = 0
    last_epoch_loss = float("nan")
    stopped = False
    while epoch < args.epochs:
        sampler.set_epoch(epoch)
        idx = sampler.indices()
        while step_in_epoch < steps_per_epoch:
            b = rank_batch(idx, step_in_epoch, args.batch_size)
            t0 = time.perf_counter()
            loss = train_step(net, model, crit, opt, x_train[b], y_train[b], b, global_step, args.seed,
                              lr_at(global_step, total_steps, args.lr, args.lr_schedule))
            t_train += time.perf_counter() - t0
            samples_done += b.size * P
            steps_run += 1
            epoch_loss += (loss * b.size, b.size)
            step_in_epoch += 1
            global_step += 1
            end = step_in_epoch == steps_per_epoch
            if not end:
                progress.update(global_step, epoch, epoch_loss[0] / epoch_loss[1],
                                samples_done / max(t_train, 1e-9))
            if args.checkpoint_every and global_step % args.checkpoint_every == 0 and not end:
                save("step")
            if args.stop_after_step is not None and global_step >= args.stop_after_step and not end:
                save("interrupted")
                stopped = True
                break
        if stopped:
            break
        tot = allreduce(epoch_loss, world)
        last_epoch_loss = tot[0] / tot[1]
        progress.update(global_step, epoch, last_epoch_loss, samples_done / max(t_train, 1e-9),
                        end_of_epoch=True)
        epoch += 1
        step_in_epoch = 0
        epoch_loss = np.zeros(2)
        save("epoch")
        if args.stop_after_step is not None and global_step >= args.stop_after_step and epoch < args.epochs:
            stopped = True
            break
    progress.close()
    if stopped:
        say(f"stopped after step {global_step} as asked (--stop-after-step); checkpoint in {ckpt}",
            flush=True)
        return status

    if net.broadcast_buffers:
        net.sync_buffers()  # local BatchNorm: evaluate every rank with rank 0's running statistics
    test_loss, test_acc, n_test = evaluate(model, data.test_x, data.test_y, world)
    coll = (net.collectives - coll0[0], _sync_collectives(model) - coll0[1])
    per_step = f"{(coll[0] + coll[1]) / steps_run:.0f}" if steps_run else "-"
    if rank == 0:
        rows = [("ranks", str(P)), ("BatchNorm", bn),
                ("batch per rank / global", f"{args.batch_size} / {args.batch_size * P}"),
                ("epochs / steps", f"{args.epochs} / {total_steps}"),
                ("test accuracy", f"{100 * test_acc:.2f} % ({int(round(test_acc * n_test))}/{n_test})"),
                ("test loss", f"{test_loss:.4f}"),
                ("train loss (last epoch)", f"{last_epoch_loss:.4f}"),
                ("samples/s (training)", f"{samples_done / max(t_train, 1e-9):.0f}"),
                ("training time", f"{t_train:.1f} s"),
                ("collectives per step", f"{per_step} ({coll[1] / max(steps_run, 1):.0f} SyncBatchNorm + "
                                         f"{coll[0] / max(steps_run, 1):.0f} DDP)")]
        print(format_table(rows, "syncnorm-train: digits CNN"), flush=True)
        print(f"RESULT test_accuracy={test_acc:.6f} test_loss={test_loss:.6f} "
              f"samples_per_s={samples_done / max(t_train, 1e-9):.1f} train_time={t_train:.3f}", flush=True)
    if args.require_accuracy is not None and test_acc < args.require_accuracy:
        say(f"test accuracy {test_acc:.4f} is below --require-accuracy {args.require_accuracy}")
        status = 1
    return status


def allreduce_gather(values: np.ndarray, world: ProcessGroup) -> list[list[float]]:
    """Every rank's small vector, as a list per rank (for the checkpoint's per-rank loss sums)."""
    v = np.ascontiguousarray(values, dtype=np.float64)
    if world.size == 1:
        return [v.tolist()]
    return C.allgather(v, world.comm).tolist()


if __name__ == "__main__":
    sys.exit(main())
