"""`python -m syncnorm.demo`: the README's main job.

Launches `python -m mpi4py -m syncnorm.train` on 4 MPI ranks (oversubscribed when the machine has
fewer cores) through `syncnorm-launch`: a small CNN with SyncBatchNorm trained data-parallel on the
shipped UCI digits. It first checks on a few steps that the 4-rank run follows the same trajectory
as one process with the 4x larger batch, then trains, shows progress, and prints the test accuracy,
loss and throughput. Extra arguments go to `syncnorm.train` (see `python -m syncnorm.train -h`).

`python -m syncnorm.check` (the quick layer-level check of SyncBatchNorm against single-process
BatchNorm) still runs on its own: `syncnorm-launch -n 4 -- python -m mpi4py -m syncnorm.check`.
"""
from __future__ import annotations

import argparse
import os
import sys

from .. import launch

#: what the demo passes to syncnorm.train unless the user overrides it
DEFAULT_TRAIN_ARGS = ["--epochs", "15", "--batch-size", "32", "--check-equivalence", "5"]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m syncnorm.demo", description=__doc__.split("\n\n")[0])
    p.add_argument("-n", "--nprocs", type=int, default=4, help="number of ranks (default 4)")
    p.add_argument("--timeout", type=float, default=600, help="seconds before the job is aborted")
    args, rest = p.parse_known_args(argv)
    given = {a.split("=")[0] for a in rest if a.startswith("--")}
    train_args = []
    for i in range(0, len(DEFAULT_TRAIN_ARGS), 2):
        if DEFAULT_TRAIN_ARGS[i] not in given:
            train_args += DEFAULT_TRAIN_ARGS[i:i + 2]
    if "--progress" not in given:
        train_args += ["--progress", "tty" if sys.stdout.isatty() else "lines"]
    # ranks share the cores: one BLAS thread each (more only thrash when oversubscribed)
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(var, "1")
    cmd = [sys.executable, "-m", "mpi4py", "-m", "syncnorm.train", *train_args, *rest]
    return launch.main(["-n", str(args.nprocs), "--timeout", str(args.timeout), "--", *cmd])


if __name__ == "__main__":
    sys.exit(main())
