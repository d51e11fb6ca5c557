"""`syncnorm-bench` (also `python -m syncnorm.bench`): syncnorm's normalization layers against a
textbook numpy implementation, torch and the memory-bandwidth floor; SyncBatchNorm's communication
counted under MPI and projected to 1024 ranks; peak memory.

    syncnorm-bench [--quick] [--out DIR] [--rounds R] [--block B] [--clock cpu|wall]
                   [--no-torch] [--no-mpi] [--nprocs 1 2 4] [--replot DIR/bench.json]

Writes DIR/bench.json, DIR/bench_tables.md and (with matplotlib) DIR/bench_*.png, and prints the
tables. `--quick` runs tiny shapes with few repetitions (seconds; for tests). One thread
throughout: OMP/OPENBLAS/MKL_NUM_THREADS=1 before numpy loads, torch.set_num_threads(1); with
SYNCNORM_NUM_THREADS=n the compiled kernels and torch both get n threads (time them with
--clock wall: the CPU clock counts the main thread only). The kernel engine is printed; with the
compiled one the numpy kernels are timed beside it.
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

from .timing import ensure_single_thread

__all__ = ["main", "run"]

PASS_NAMES = ("forward", "backward", "both")
COMM_PROJECTION_P = [2, 4, 8, 16, 32, 64, 128, 256, 512, 1024]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="syncnorm-bench", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="tiny shapes, few repetitions (for tests)")
    p.add_argument("--out", default="syncnorm-bench-results",
                   help="output directory (default: ./syncnorm-bench-results; the docs use "
                        "docs/performance)")
    p.add_argument("--rounds", type=int, help="interleaved rounds (default 10, quick 2)")
    p.add_argument("--block", type=int, help="repetitions per candidate and round, the first "
                   "one a warm-up (default 4, quick 2)")
    p.add_argument("--clock", choices=("cpu", "wall"), default="cpu",
                   help="primary clock: the main thread's CPU time (default; robust to other "
                        "processes) or the wall clock. Both are in the JSON")
    p.add_argument("--layers", nargs="*", help="only layers whose name contains one of these")
    p.add_argument("--no-torch", action="store_true", help="skip torch even when installed")
    p.add_argument("--no-mpi", action="store_true", help="skip the MPI communication runs")
    p.add_argument("--no-memory", action="store_true", help="skip the tracemalloc measurements")
    p.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    p.add_argument("--nprocs", type=int, nargs="*", default=[1, 2, 4],
                   help="rank counts of the MPI runs (default 1 2 4)")
    p.add_argument("--mpi-timeout", type=float, help="seconds per MPI run (default 600, quick 180)")
    p.add_argument("--replot", metavar="JSON", help="redraw tables and plots from a saved run")
    return p


def _shape_text(shape: tuple[int, ...]) -> str:
    return "x".join(map(str, shape))


# ------------------------------------------------------------------------------------ candidates
def _ours(m: Any, x: Any, dy: Any) -> dict:
    from .timing import timed
    return {"forward": timed(None, lambda _: m(x)),
            "backward": timed(lambda: m(x), lambda _: m.backward(dy)),
            "both": timed(None, lambda _: (m(x), m.backward(dy)))}


def _ours_numpy(m: Any, x: Any, dy: Any) -> dict:
    """The layer with the numpy kernels (the reference engine), beside the compiled ones."""
    from syncnorm.functional import engine

    def on_numpy(f: Any) -> Any:
        def run(*arg: Any) -> Any:
            with engine.use("numpy"):
                return f(*arg)
        return run
    from .timing import timed
    return {"forward": timed(None, on_numpy(lambda _: m(x))),
            "backward": timed(on_numpy(lambda: m(x)), on_numpy(lambda _: m.backward(dy))),
            "both": timed(None, on_numpy(lambda _: (m(x), m.backward(dy))))}


def _torch(t: Any, m: Any, x: Any, dy: Any) -> dict:
    from .timing import timed
    xt = t.from_numpy(x).requires_grad_(True)
    dyt = t.from_numpy(dy)

    def clear() -> None:
        xt.grad = None
        m.zero_grad(set_to_none=True)

    def fwd_prep() -> None:
        clear()

    def bwd_prep() -> Any:
        clear()
        return m(xt)

    return {"forward": timed(fwd_prep, lambda _: m(xt)),
            "backward": timed(bwd_prep, lambda y: y.backward(dyt)),
            "both": timed(fwd_prep, lambda _: m(xt).backward(dyt))}


def time_layers(specs: list, torch: Any, rounds: int, block: int, clock: str,
                copy_bytes: int, log) -> tuple[list[dict], list[float]]:
    """Time every layer (three passes, three implementations, and the copy) in interleaved
    rounds, one group per layer. Returns the table entries and each group's copy bandwidth."""
    import numpy as np

    from . import floor
    from .timing import Candidate, measure

    from syncnorm.functional import engine

    copy, moved = floor.copy_candidate(copy_bytes)
    entries, bandwidths = [], []
    for spec in specs:
        rng = np.random.default_rng(0)
        x = rng.normal(0.5, 2.0, spec.shape).astype(np.float32)
        dy = rng.normal(0.0, 1.0, spec.shape).astype(np.float32)
        impls: dict[str, dict] = {"syncnorm": _ours(spec.ours(), x, dy)}
        if engine.name() != "numpy":  # the compiled engine runs: time the numpy kernels too
            impls["numpy-kernels"] = _ours_numpy(spec.ours(), x, dy)
        tb = spec.textbook()
        impls["textbook"] = _ours(_Callable(tb), x, dy)
        if torch is not None:
            impls["torch"] = _torch(torch, spec.torch(torch), x, dy)
        cands = [copy] + [Candidate(f"{impl}/{p}", fns[p]) for impl, fns in impls.items()
                          for p in PASS_NAMES]
        t0 = time.perf_counter()
        stats = measure(cands, rounds, block)
        bw = moved / stats["copy"][clock].median
        bandwidths.append(bw)
        log(f"  {spec.label} {_shape_text(spec.shape)}: {time.perf_counter() - t0:.1f} s, "
            f"copy {bw / 1e9:.1f} GB/s")
        for p in PASS_NAMES:
            fl = floor.floor_seconds(p, x.nbytes, bw)
            cand = {impl: ({k: s.to_json() for k, s in stats[f"{impl}/{p}"].items()}
                           if impl in impls else None)
                    for impl in ("syncnorm", "numpy-kernels", "textbook", "torch")}
            med = {impl: (c[clock]["median_s"] if c else None) for impl, c in cand.items()}
            ratios = {f"{impl}/floor": (m / fl if m else None) for impl, m in med.items()}
            ratios["syncnorm/torch"] = med["syncnorm"] / med["torch"] if med["torch"] else None
            ratios["textbook/torch"] = med["textbook"] / med["torch"] if med["torch"] else None
            nk = med["numpy-kernels"]
            ratios["numpy-kernels/torch"] = nk / med["torch"] if nk and med["torch"] else None
            entries.append({"key": spec.key, "layer": spec.layer, "label": spec.label,
                            "shape": list(spec.shape), "shape_text": _shape_text(spec.shape),
                            "dtype": "float32", "pass": p, "input_bytes": x.nbytes,
                            "bytes_moved": floor.PASS_BYTES[p] * x.nbytes,
                            "copy_bandwidth_Bps": bw, "floor_s": fl,
                            "candidates": cand, "ratios": ratios})
    return entries, bandwidths


class _Callable:
    """Gives a TextbookNorm the layer call interface (layer(x), layer.backward(dy))."""

    def __init__(self, tb: Any) -> None:
        self.tb = tb

    def __call__(self, x: Any) -> Any:
        return self.tb.forward(x)

    def backward(self, dy: Any) -> Any:
        return self.tb.backward(dy)


def measure_memory(specs: list) -> list[dict]:
    import numpy as np

    from .memory import peak_extra
    out = []
    for spec in specs:
        rng = np.random.default_rng(0)
        x = rng.normal(0.5, 2.0, spec.shape).astype(np.float32)
        dy = rng.normal(0.0, 1.0, spec.shape).astype(np.float32)
        for impl, layer in (("syncnorm", spec.ours()), ("textbook", _Callable(spec.textbook()))):
            d = peak_extra(layer, x, dy)
            d.update({"key": spec.key, "layer": spec.layer, "label": spec.label,
                      "shape": list(spec.shape), "shape_text": _shape_text(spec.shape),
                      "impl": impl})
            out.append(d)
    return out


# ----------------------------------------------------------------------------------------- comm
def measure_comm(nprocs: list[int], quick: bool, timeout: float, clock: str, log) -> dict:
    from . import commmodel as CM
    from .mpirun import run_worker

    shape = [4, 8, 8, 8] if quick else [32, 64, 32, 32]
    wargs = ["--shape", *map(str, shape)]
    if quick:
        wargs += ["--steps", "2", "--rounds", "2", "--block", "2", "--allreduce-reps", "5",
                  "--sizes", "8", "4096", "262144"]
    C = shape[1]
    measured, notes, runs = [], [], {}
    for P in nprocs:
        t0 = time.perf_counter()
        data, note = run_worker(P, wargs, timeout)
        log(f"  MPI P={P}: {time.perf_counter() - t0:.1f} s" + ("" if data else f" ({note})"))
        if data is None:
            notes.append(note)
            continue
        runs[P] = data
        c = data["counts"]
        ag = CM.allgather_design(C, P)
        st = data["step_time"]
        measured.append({
            "P": P, "collectives_per_step": c["collectives_per_step"],
            "by_call": c["by_call"], "bytes_per_rank_per_step": c["bytes_per_rank_per_step"],
            "forward_bytes": c["forward"]["bytes"], "backward_bytes": c["backward"]["bytes"],
            "eval_step": c["eval_step"],
            "allgather_collectives_per_step": ag["collectives_per_step"],
            "allgather_bytes": ag["bytes_per_rank_per_step"],
            "step_time": st, "sync_over_local": st["ratio_wall"],
            "sync_over_local_q1": st.get("ratio_wall_q1"),
            "sync_over_local_min": st.get("ratio_wall_min"),
            "sync_over_local_cpu": st["ratio_cpu"],
            "sync_over_local_outside_collectives_cpu": st.get("ratio_outside_collectives_cpu"),
            "allreduce_step_s": st.get("allreduce_step_s"),
            "oversubscribed": P > (os.cpu_count() or 1)})
    out: dict[str, Any] = {"channels": C, "shape_per_rank": shape, "measured": measured,
                           "notes": notes}
    fit_run = next((runs[P] for P in sorted(runs) if P >= 2 and "allreduce" in runs[P]), None)
    if fit_run is not None:
        ar = fit_run["allreduce"]
        # the fastest quarter of the repetitions: what the interconnect does when no other
        # process delays a rank (this machine is shared)
        alpha, beta = CM.fit_alpha_beta(ar["sizes_bytes"], ar["q1_s"], fit_run["P"])
        out["allreduce"] = dict(ar, P=fit_run["P"])
        out["model"] = {"alpha_s": alpha, "beta_s_per_byte": beta, "fit_P": fit_run["P"],
                        "text": CM.MODEL_TEXT}
        ref = next(m for m in measured if m["P"] == fit_run["P"])
        out["projection"] = CM.projection(COMM_PROJECTION_P, C, ref["forward_bytes"],
                                          ref["backward_bytes"], alpha, beta)
    elif measured:
        notes.append("no Allreduce timings at P >= 2: no alpha-beta model")
    return out


# ------------------------------------------------------------------------------------------ main
def run(args: argparse.Namespace, log=print) -> dict:
    """Everything but writing: the result dictionary (see docs/performance.md for its fields)."""
    import numpy as np

    from . import floor
    from .peers import layer_specs, load_torch
    from .timing import CLOCKS

    quick = args.quick
    rounds = args.rounds or (2 if quick else 10)
    block = args.block or (2 if quick else 4)
    torch, torch_note = (None, "torch skipped (--no-torch)") if args.no_torch else load_torch()
    specs = layer_specs(quick)
    if args.layers:
        specs = [s for s in specs if any(f.lower() in s.label.lower() for f in args.layers)]
    llc, llc_src = floor.last_level_cache()
    copy_bytes = (32 << 20) if quick else floor.copy_array_bytes(llc)
    notes = []
    if torch is None:
        notes.append(torch_note)
    if quick:
        notes.append("quick mode: tiny shapes and few repetitions; the copy (32 MiB arrays) may "
                     "run partly from cache: figures are for testing the bench, not for reading")
    res: dict[str, Any] = {"meta": {
        "tool": "syncnorm-bench", "version": 1, "quick": quick,
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "cpu": floor.cpu_name(), "cores": os.cpu_count(), "python": platform.python_version(),
        "numpy": np.__version__, "torch": getattr(torch, "__version__", None),
        "torch_note": torch_note, "kernels": _engine_line(),
        "threads": {v: os.environ.get(v) for v in
                                              ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS",
                                               "MKL_NUM_THREADS")},
        "clock": args.clock,
        "clock_text": ("main-thread CPU time" if args.clock == "cpu" else "wall-clock time"),
        "clocks": sorted(CLOCKS), "rounds": rounds, "block": block,
        "reps_per_candidate": rounds * (block - 1 if block > 1 else 1),
        "last_level_cache_bytes": llc, "last_level_cache_source": llc_src,
        "load_average_start": _loadavg()}}
    from syncnorm.functional import engine
    n_impl = 2 + (torch is not None) + (engine.name() != "numpy")
    log(f"timing {len(specs)} layers x 3 passes x {n_impl} implementations, "
        f"{rounds} rounds of {block} ...")
    entries, bws = time_layers(specs, torch, rounds, block, args.clock, copy_bytes, log)
    bws_sorted = sorted(bws)
    res["floor"] = {"array_bytes": copy_bytes, "array_MiB": copy_bytes / 2**20,
                    "bytes_per_copy": 2 * copy_bytes,
                    "bandwidth_Bps": bws_sorted[len(bws) // 2] if bws else float("nan"),
                    "bandwidth_GBps": (bws_sorted[len(bws) // 2] / 1e9) if bws else float("nan"),
                    "bandwidth_per_group_Bps": bws, "pass_input_arrays": floor.PASS_BYTES,
                    "rule": "np.copyto of float32 arrays >= 4 x the last-level cache (STREAM), "
                            "bytes read + written per second, timed in each layer's rounds"}
    res["layers"] = entries
    res["memory"] = [] if args.no_memory else measure_memory(specs)
    if args.no_mpi:
        res["comm"] = {"measured": [], "notes": ["MPI runs skipped (--no-mpi)"]}
    else:
        log("MPI runs ...")
        timeout = args.mpi_timeout or (180.0 if quick else 600.0)
        res["comm"] = measure_comm(list(args.nprocs), quick, timeout, args.clock, log)
    res["meta"]["load_average_end"] = _loadavg()
    res["notes"] = notes
    return res


def _engine_line() -> str:
    """The kernel engine syncnorm's layers run (SYNCNORM_KERNELS; the "syncnorm" column)."""
    from syncnorm.functional import engine
    return engine.describe()


def _loadavg() -> list[float] | None:
    """1, 5 and 15-minute load averages (other processes competing for the cores)."""
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except (OSError, AttributeError):
        return None


def write_outputs(res: dict, out_dir: Path, plots: bool = True) -> list[str]:
    from . import report

    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    if plots:
        names, notes = report.plot_all(res, out_dir)
        res["plots"] = names
        res.setdefault("notes", []).extend(n for n in notes if n not in res.get("notes", []))
        written += names
    else:
        res["plots"] = []
    report.write_json(res, out_dir / "bench.json")
    (out_dir / "bench_tables.md").write_text(report.markdown_tables(res))
    return written + ["bench.json", "bench_tables.md"]


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    ensure_single_thread(argv)
    args = _parser().parse_args(argv)
    from . import report

    if args.replot:
        import json
        res = json.loads(Path(args.replot).read_text())
        out_dir = Path(args.out) if "--out" in argv else Path(args.replot).parent
    else:
        out_dir = Path(args.out)
        res = run(args, log=lambda s: print(s, file=sys.stderr, flush=True))
    written = write_outputs(res, out_dir, plots=not args.no_plots)
    print(report.terminal_tables(res))
    print(f"\nwrote {', '.join(str(out_dir / w) for w in written)}")
    return 0
