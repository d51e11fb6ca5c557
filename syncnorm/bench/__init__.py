"""`syncnorm-bench`: the performance suite (times against peers and the memory-bandwidth floor,
SyncBatchNorm communication under MPI and its alpha-beta projection, peak memory, plots).

Modules: `timing` (one thread, interleaved blocks, medians and IQR), `peers` (textbook numpy and
torch), `floor` (copy bandwidth and the bytes each pass must move), `commmodel` (collectives,
bytes and the alpha-beta model), `mpi_worker` / `mpirun` (the counted runs under MPI), `memory`
(tracemalloc peaks), `report` (tables, JSON, plots), `cli` (the command).

Importing this package imports nothing heavy; run it as `syncnorm-bench` or
`python -m syncnorm.bench`. The standalone scripts in a checkout's `benchmarks/` folder are not
part of it (one experiment each; docs/performance.md lists them); two reuse its `CountingComm`.
"""
__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `syncnorm-bench` console script."""
    from .cli import main as _main
    return _main(argv)
