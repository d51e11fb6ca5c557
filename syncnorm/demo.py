"""`python -m syncnorm.demo`: the README's main job.

Launches 4 MPI ranks (oversubscribed when the machine has fewer cores) through `syncnorm-launch`
and runs `syncnorm.check` on them: SyncBatchNorm on a batch sharded unevenly across the ranks
against single-process BatchNorm on the whole batch.
"""
from __future__ import annotations

import argparse
import sys

from . import launch


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m syncnorm.demo", description=__doc__.split("\n\n")[0])
    p.add_argument("-n", "--nprocs", type=int, default=4, help="number of ranks (default 4)")
    p.add_argument("--timeout", type=float, default=600, help="seconds before the job is aborted")
    args, rest = p.parse_known_args(argv)
    cmd = [sys.executable, "-m", "mpi4py", "-m", "syncnorm.check", *rest]
    return launch.main(["-n", str(args.nprocs), "--timeout", str(args.timeout), "--", *cmd])


if __name__ == "__main__":
    sys.exit(main())
