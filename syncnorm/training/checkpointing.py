"""syncnorm-train's checkpoints: the directory checked before training, resuming (collective:
every rank refuses together), and saving (rank 0 writes; a failure ends every rank with status 3).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..checkpoint import CheckpointError, load_training_checkpoint, save_training_checkpoint
from ..distributed import all_gather
from . import numerics
from .checkpoint_dir import CheckpointDirError, checkpoint_bytes, prepare
from .run import Model, Position, Run, Stop, model_config, report_once, run_identity
from .trainer import build_model

__all__ = ["SAVE_FAILED", "check_checkpoint_dir", "resume", "save"]

#: exit status of a checkpoint that could not be written
SAVE_FAILED = 3


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
        need = checkpoint_bytes(build_model(model_config(run.args), None, convert=False))
        try:
            removed = prepare(run.ckpt, need)
        except CheckpointDirError as e:
            error = str(e)
    if report_once(run.world, error, "syncnorm-train: error: --checkpoint-dir: {}"):
        raise Stop(2)
    if removed:
        run.say(f"removed {len(removed)} temporary file(s) left by an interrupted save: "
                f"{', '.join(p.name for p in removed)}")


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
    identity = run_identity(run.args, run.world, len(run.y_train))
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
                "run": run_identity(run.args, run.world, len(run.y_train)), "tag": tag,
                "numerics": {"dtype": run.args.dtype, "world_size": run.world.size,
                             "ranks": run.numerics}}
        try:
            save_training_checkpoint(run.ckpt, m.model, m.opt, meta)
        except CheckpointError as e:
            error = str(e)
    if report_once(run.world, error, "syncnorm-train: CheckpointError: {}"):
        raise Stop(SAVE_FAILED)
