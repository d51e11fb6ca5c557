"""syncnorm-train's command line: the options, and every value checked before anything runs.

Every rank parses the same arguments, so every rank refuses the same way; only rank 0 (as the
launcher numbered it, before MPI starts) prints the message, and every rank exits with status 2.
"""
from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import Any, Callable, NoReturn

from ..distributed.env import launcher_info

__all__ = ["parse_args", "UsageError", "RANGES"]


class UsageError(Exception):
    """An argument that only the running job can refuse (it depends on the number of ranks or the
    data); reported like an argparse error, exit status 2."""


def _finite(v: float) -> bool:
    return math.isfinite(v)


#: option -> (accepted values in words, test); an option left at None is not checked
RANGES: dict[str, tuple[str, Callable[[Any], bool]]] = {
    "--batch-size": (">= 1", lambda v: v >= 1),
    "--epochs": (">= 0", lambda v: v >= 0),
    "--lr": ("a finite number > 0", lambda v: _finite(v) and v > 0),
    "--momentum": ("a finite number >= 0", lambda v: _finite(v) and v >= 0),
    "--weight-decay": ("a finite number >= 0", lambda v: _finite(v) and v >= 0),
    "--seed": (">= 0", lambda v: v >= 0),
    "--width": (">= 1", lambda v: v >= 1),
    "--dropout": ("in [0, 1)", lambda v: 0 <= v < 1),
    "--sync-group-size": (">= 0 (0: local BatchNorm)", lambda v: v >= 0),
    "--bucket-cap-mb": ("a finite number > 0", lambda v: _finite(v) and v > 0),
    "--max-train": (">= 1", lambda v: v >= 1),
    "--checkpoint-every": (">= 0 (0: only at the end of each epoch)", lambda v: v >= 0),
    "--stop-after-step": (">= 1", lambda v: v >= 1),
    "--check-equivalence": (">= 0 (0: skip)", lambda v: v >= 0),
    "--require-accuracy": ("in [0, 1]", lambda v: 0 <= v <= 1),
}


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # type: ignore[override]
        info = launcher_info()
        if info is None or info.rank == 0:  # every rank parses the same argv: one report
            self.print_usage(sys.stderr)
            sys.stderr.write(f"{self.prog}: error: {message}\n")
            sys.stderr.flush()
        if info is not None and info.size != 1:
            from .run import exit_together  # starts MPI: a rank that left first could end the
            exit_together()                 # job before rank 0 has printed
        raise SystemExit(2)


def build_parser(description: str) -> argparse.ArgumentParser:
    p = _Parser(prog="syncnorm-train", description=description,
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
                   help="ranks per SyncBatchNorm group, a divisor of the number of ranks (default: "
                        "all ranks; 0: local BatchNorm)")
    p.add_argument("--bucket-cap-mb", type=float, default=25.0, help="DDP gradient bucket cap")
    p.add_argument("--max-train", type=int, default=None, help="use only the first N training images")
    p.add_argument("--checkpoint-dir", type=Path, default=None)
    p.add_argument("--checkpoint-every", type=int, default=0,
                   help="also save every N steps (0: only at the end of each epoch)")
    resume = p.add_mutually_exclusive_group()
    resume.add_argument("--resume", action="store_true",
                        help="continue from CHECKPOINT_DIR/checkpoint.npz, which must exist")
    resume.add_argument("--resume-if-exists", action="store_true",
                        help="continue from CHECKPOINT_DIR/checkpoint.npz when it exists, else start "
                             "from the beginning")
    p.add_argument("--allow-env-change", action="store_true",
                   help="resume even when the checkpoint was written in another numerical "
                        "environment (BLAS threads, kernels, numpy); the results then differ from "
                        "an uninterrupted run's")
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
    return p


def parse_args(argv: list[str] | None, description: str = "") -> argparse.Namespace:
    """Parse and check every option that can be checked without the job (exit 2 on a bad one)."""
    p = build_parser(description)
    args = p.parse_args(argv)
    for option, (accepted, ok) in RANGES.items():
        value = getattr(args, option[2:].replace("-", "_"))
        if value is not None and not ok(value):
            p.error(f"{option} must be {accepted}, got {value}")
    if args.checkpoint_dir is None:
        for flag, given in (("--resume", args.resume), ("--resume-if-exists", args.resume_if_exists),
                            ("--stop-after-step", args.stop_after_step is not None),
                            ("--checkpoint-every", args.checkpoint_every > 0)):
            if given:
                p.error(f"{flag} needs --checkpoint-dir")
    if args.nesterov and args.momentum == 0:
        p.error("--nesterov needs --momentum > 0")
    return args


def check_against_world(args: argparse.Namespace, world_size: int, samples_per_rank: int) -> None:
    """The checks that need the number of ranks; raise UsageError (the same on every rank)."""
    g = args.sync_group_size
    if g is not None and g > 0 and world_size % g:
        raise UsageError(f"--sync-group-size {g} must divide the number of ranks ({world_size}), or "
                         "be 0 for local BatchNorm")
    k = args.check_equivalence
    if k > 0 and k * args.batch_size > samples_per_rank:
        raise UsageError(f"--check-equivalence {k} needs {k * args.batch_size} samples per rank; a "
                         f"rank has {samples_per_rank}")
