"""Output of `syncnorm-bench`: the terminal table, Markdown tables, the JSON file and PNG plots.

Plots need matplotlib (the optional extra `plot`: pip install syncnorm[plot]); without it they are
skipped with a note. Every figure is drawn from the result dictionary alone, so
`syncnorm-bench --replot results.json` redraws them from a saved run.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

__all__ = ["terminal_tables", "markdown_tables", "write_json", "plot_all", "CANDIDATE_LABELS"]

CANDIDATE_LABELS = {"syncnorm": "syncnorm", "textbook": "numpy textbook", "torch": "torch 1-thread"}
#: the numpy kernels, timed beside the compiled ones (when those run)
ENGINE_LABEL = "numpy-kernels"
PASSES = ("forward", "backward", "both")


def _ms(s: float | None) -> str:
    return "-" if s is None else f"{s * 1e3:.2f}"


def _x(r: float | None) -> str:
    return "-" if r is None else f"{r:.2f}x"


def _row_values(entry: dict, clock: str) -> dict:
    c = entry["candidates"]
    out = {}
    for name in CANDIDATE_LABELS:
        st = c.get(name)
        out[name] = None if st is None else st[clock]
    return out


def _engine_rows(res: dict, clock: str, markdown: bool) -> list[str]:
    """Both kernel engines side by side (when the compiled one ran): ms and ratio to torch."""
    rows = [e for e in res["layers"] if (e["candidates"].get(ENGINE_LABEL) or {}).get(clock)]
    if not rows:
        return []
    if markdown:
        out = ["", f"Kernel engines ({res['meta'].get('kernels')} vs the numpy kernels):", "",
               "| layer | input | pass | compiled ms | numpy kernels ms | torch ms | "
               "compiled / torch | numpy kernels / torch | compiled / floor |",
               "|---|---|---|---|---|---|---|---|---|"]
    else:
        out = ["", f"kernel engines: {res['meta'].get('kernels')} vs the numpy kernels",
               f"{'layer':34s} {'pass':8s} {'compiled ms':>11s} {'numpy ms':>9s} {'torch ms':>9s} "
               f"{'comp/torch':>10s} {'np/torch':>9s} {'comp/floor':>10s}"]
    for e in rows:
        c = e["candidates"]
        med = [None if c.get(k) is None else c[k][clock]["median_s"]
               for k in ("syncnorm", ENGINE_LABEL, "torch")]
        r = e["ratios"]
        vals = [_ms(m) if m is not None else "-" for m in med]
        rats = [_x(r.get("syncnorm/torch")), _x(r.get(f"{ENGINE_LABEL}/torch")),
                _x(r.get("syncnorm/floor"))]
        if markdown:
            out.append(f"| {e['label']} | {e['shape_text']} | {e['pass']} | "
                       + " | ".join(vals + rats) + " |")
        else:
            out.append(f"{e['label'] + ' ' + e['shape_text']:34s} {e['pass']:8s} {vals[0]:>11s} "
                       f"{vals[1]:>9s} {vals[2]:>9s} {rats[0]:>10s} {rats[1]:>9s} {rats[2]:>10s}")
    return out


def terminal_tables(res: dict) -> str:
    """Plain-text tables: times (median and IQR, ms) per layer and pass, ratios to the floor and
    to torch; communication; memory."""
    clock = res["meta"]["clock"]
    lines = [f"syncnorm-bench ({'quick' if res['meta']['quick'] else 'full'}), "
             f"{res['meta']['cpu']}, numpy {res['meta']['numpy']}, {res['meta']['torch_note']}",
             f"times: median [IQR] of {res['meta']['reps_per_candidate']} reps, "
             f"{res['meta']['clock_text']}; floor: {res['floor']['bandwidth_GBps']:.1f} GB/s copy "
             f"({res['floor']['array_MiB']:.0f} MiB arrays); load average (1/5/15 min) at start "
             f"{res['meta'].get('load_average_start')}, end {res['meta'].get('load_average_end')} "
             f"on {res['meta']['cores']} cores",
             f"kernels: {res['meta'].get('kernels', 'numpy')}", ""]
    hdr = (f"{'layer':34s} {'pass':8s} {'syncnorm ms':>17s} {'textbook ms':>17s} "
           f"{'torch ms':>17s} {'floor ms':>8s} {'ours/floor':>10s} {'ours/torch':>10s} "
           f"{'text/floor':>10s} {'torch/floor':>11s}")
    lines += [hdr, "-" * len(hdr)]
    for e in res["layers"]:
        v = _row_values(e, clock)
        cells = []
        for name in CANDIDATE_LABELS:
            s = v[name]
            cells.append("-".rjust(17) if s is None else
                         f"{_ms(s['median_s']):>7s} [{_ms(s['q1_s'])}-{_ms(s['q3_s'])}]".rjust(17))
        r = e["ratios"]
        lines.append(f"{e['label'] + ' ' + e['shape_text']:34s} {e['pass']:8s} {' '.join(cells)} "
                     f"{_ms(e['floor_s']):>8s} {_x(r.get('syncnorm/floor')):>10s} "
                     f"{_x(r.get('syncnorm/torch')):>10s} {_x(r.get('textbook/floor')):>10s} "
                     f"{_x(r.get('torch/floor')):>11s}")
    lines += _engine_rows(res, clock, markdown=False)
    comm = res.get("comm") or {}
    if comm.get("measured"):
        lines += ["", "SyncBatchNorm communication per step and rank (measured by a counting "
                  "communicator) vs the all-gather design (computed):",
                  f"{'P':>4s} {'collectives':>11s} {'bytes':>9s} {'all-gather bytes':>17s} "
                  f"{'sync/local step: median':>24s} {'q1':>7s} {'min':>7s} "
                  f"{'cpu outside coll.':>17s} {'2 Allreduce us':>14s}"]
        for m in comm["measured"]:
            st = [m.get(k) for k in ("sync_over_local", "sync_over_local_q1", "sync_over_local_min",
                                     "sync_over_local_outside_collectives_cpu")]
            st = ["-" if v is None else f"{v:.3f}x" for v in st]
            ar = m.get("allreduce_step_s")
            lines.append(f"{m['P']:>4d} {m['collectives_per_step']:>11g} "
                         f"{m['bytes_per_rank_per_step']:>9.0f} {m['allgather_bytes']:>17.0f} "
                         f"{st[0]:>24s} {st[1]:>7s} {st[2]:>7s} {st[3]:>17s} "
                         f"{'-' if ar is None else f'{ar * 1e6:.1f}':>14s}"
                         + ("  (oversubscribed)" if m.get("oversubscribed") else ""))
        if comm.get("model"):
            mo = comm["model"]
            lines.append(f"alpha = {mo['alpha_s'] * 1e6:.2f} us, beta = {mo['beta_s_per_byte'] * 1e9:.3f}"
                         f" ns/byte ({1 / mo['beta_s_per_byte'] / 1e9:.2f} GB/s); {mo['text']}")
    for note in comm.get("notes", []):
        lines.append(f"note: {note}")
    if res.get("memory"):
        lines += ["", "Peak extra memory per call, in input-sized buffers (tracemalloc; the "
                  "output counts as one):",
                  f"{'layer':34s} {'impl':10s} {'input MiB':>9s} {'forward':>8s} {'backward':>8s}"]
        for m in res["memory"]:
            lines.append(f"{m['label'] + ' ' + m['shape_text']:34s} {m['impl']:10s} "
                         f"{m['input_bytes'] / 2**20:>9.1f} {m['forward_buffers']:>8.2f} "
                         f"{m['backward_buffers']:>8.2f}")
    for note in res.get("notes", []):
        lines.append(f"note: {note}")
    return "\n".join(lines)


def markdown_tables(res: dict) -> str:
    """The same tables in Markdown (for docs/performance.md)."""
    clock = res["meta"]["clock"]
    out = ["| layer | input | pass | syncnorm ms | numpy textbook ms | torch ms | floor ms | "
           "syncnorm / floor | syncnorm / torch | textbook / floor | torch / floor |",
           "|---|---|---|---|---|---|---|---|---|---|---|"]
    for e in res["layers"]:
        v = _row_values(e, clock)
        cells = []
        for name in CANDIDATE_LABELS:
            s = v[name]
            cells.append("-" if s is None else
                         f"{_ms(s['median_s'])} [{_ms(s['q1_s'])}-{_ms(s['q3_s'])}]")
        r = e["ratios"]
        out.append(f"| {e['label']} | {e['shape_text']} | {e['pass']} | " + " | ".join(cells)
                   + f" | {_ms(e['floor_s'])} | {_x(r.get('syncnorm/floor'))} | "
                   f"{_x(r.get('syncnorm/torch'))} | {_x(r.get('textbook/floor'))} | "
                   f"{_x(r.get('torch/floor'))} |")
    out += _engine_rows(res, clock, markdown=True)
    comm = res.get("comm") or {}
    if comm.get("measured"):
        out += ["", "| P | collectives / step | bytes / rank / step | all-gather design bytes | "
                "SyncBatchNorm / BatchNorm step (median) | (fastest quarter) | (fastest) | "
                "(CPU outside the collectives) | the 2 Allreduces alone (µs) |",
                "|---|---|---|---|---|---|---|---|---|"]
        for m in comm["measured"]:
            st = [m.get(k) for k in ("sync_over_local", "sync_over_local_q1", "sync_over_local_min",
                                     "sync_over_local_outside_collectives_cpu")]
            st = ["-" if v is None else f"{v:.3f}x" for v in st]
            ar = m.get("allreduce_step_s")
            out.append(f"| {m['P']}{' (oversubscribed)' if m.get('oversubscribed') else ''} | "
                       f"{m['collectives_per_step']:g} | {m['bytes_per_rank_per_step']:.0f} | "
                       f"{m['allgather_bytes']:.0f} | {st[0]} | {st[1]} | {st[2]} | {st[3]} | "
                       f"{'-' if ar is None else f'{ar * 1e6:.1f}'} |")
    if res.get("memory"):
        out += ["", "| layer | input | implementation | input MiB | forward (input buffers) | "
                "backward (input buffers) |", "|---|---|---|---|---|---|"]
        for m in res["memory"]:
            out.append(f"| {m['label']} | {m['shape_text']} | {m['impl']} | "
                       f"{m['input_bytes'] / 2**20:.1f} | {m['forward_buffers']:.2f} | "
                       f"{m['backward_buffers']:.2f} |")
    return "\n".join(out) + "\n"


def write_json(res: dict, path: Path) -> None:
    path.write_text(json.dumps(res, indent=1, default=float) + "\n")


# ------------------------------------------------------------------------------------------ plots
def _plt() -> Any:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def plot_times(res: dict, path: Path) -> None:
    """Time per layer as a multiple of the bandwidth floor, syncnorm vs its peers, per pass."""
    plt = _plt()
    clock = res["meta"]["clock"]
    layers = []
    for e in res["layers"]:
        if e["label"] + e["shape_text"] not in [k for k, _ in layers]:
            layers.append((e["label"] + e["shape_text"], f"{e['label']}\n{e['shape_text']}"))
    fig, axes = plt.subplots(1, 3, figsize=(15, 1.1 + 0.75 * len(layers)), sharey=True)
    colors = {"syncnorm": "#3949ab", "textbook": "#9e9e9e", "torch": "#ef6c00"}
    names = [n for n in CANDIDATE_LABELS if any(e["candidates"].get(n) for e in res["layers"])]
    h = 0.8 / max(1, len(names))
    for ax, pname in zip(axes, PASSES):
        for j, name in enumerate(names):
            ys, xs = [], []
            for i, (key, _) in enumerate(layers):
                e = next((e for e in res["layers"]
                          if e["label"] + e["shape_text"] == key and e["pass"] == pname), None)
                if e is None or e["candidates"].get(name) is None:
                    continue
                ys.append(i + (j - (len(names) - 1) / 2) * h)
                xs.append(e["candidates"][name][clock]["median_s"] / e["floor_s"])
            ax.barh(ys, xs, height=h, color=colors[name], label=CANDIDATE_LABELS[name])
            for y, x in zip(ys, xs):
                ax.text(x, y, f" {x:.1f}", va="center", fontsize=7)
        ax.axvline(1.0, color="k", lw=1, ls="--")
        ax.set_title(f"{pname} (training)")
        ax.set_xlabel("time / bandwidth floor (1 = floor)")
        ax.set_yticks(range(len(layers)))
        ax.set_yticklabels([text for _, text in layers], fontsize=8)
        ax.invert_yaxis()
        ax.grid(axis="x", alpha=0.3)
    axes[0].legend(loc="lower right", fontsize=8)
    fig.suptitle(f"syncnorm vs numpy textbook vs torch, 1 thread, float32 "
                 f"(floor: {res['floor']['bandwidth_GBps']:.1f} GB/s copy; "
                 f"{res['meta']['clock_text']})", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_comm_bytes(res: dict, path: Path) -> None:
    """Bytes per rank per step vs P: syncnorm (measured, then flat) vs the all-gather design."""
    plt = _plt()
    comm = res["comm"]
    proj = comm["projection"]
    P = [r["P"] for r in proj]
    fig, ax = plt.subplots(figsize=(7, 4.2))
    ax.loglog(P, [r["syncnorm_bytes"] for r in proj], color="#3949ab",
              label="syncnorm: 2 Allreduce, float64 (size from the measured counts)")
    ax.loglog(P, [r["allgather_bytes"] for r in proj], color="#ef6c00",
              label="all-gather design (PyTorch, Horovod): P(2C+1)+2C float32")
    meas = comm.get("measured", [])
    if meas:
        ax.loglog([m["P"] for m in meas], [m["bytes_per_rank_per_step"] for m in meas], "o",
                  color="#3949ab", label="syncnorm, counted under mpirun")
        ax.loglog([m["P"] for m in meas], [m["allgather_bytes"] for m in meas], "s",
                  color="#ef6c00", mfc="none", label="all-gather design at the same P")
    ax.set_xlabel("ranks P")
    ax.set_ylabel("bytes per rank per step")
    ax.set_title(f"SyncBatchNorm communication per layer and step, C = {comm['channels']}")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_comm_time(res: dict, path: Path) -> None:
    """Modeled communication seconds per layer and step vs P (alpha-beta model)."""
    plt = _plt()
    comm = res["comm"]
    proj = comm["projection"]
    mo = comm["model"]
    P = [r["P"] for r in proj]
    fig, ax = plt.subplots(figsize=(7, 4.2))
    ax.loglog(P, [r["syncnorm_s"] * 1e6 for r in proj], color="#3949ab",
              label="syncnorm (faster of ring / recursive doubling)")
    ax.loglog(P, [r["syncnorm_ring_s"] * 1e6 for r in proj], color="#3949ab", ls=":",
              label="syncnorm, ring Allreduce only")
    ax.loglog(P, [r["allgather_s"] * 1e6 for r in proj], color="#ef6c00",
              label="all-gather design (ring Allgather + Allreduce)")
    ax.set_xlabel("ranks P")
    ax.set_ylabel("modeled microseconds per step")
    ax.set_title(f"alpha = {mo['alpha_s'] * 1e6:.1f} us, beta = {mo['beta_s_per_byte'] * 1e9:.2f} "
                 f"ns/B (fitted at P = 2 on this machine), C = {comm['channels']}", fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_all(res: dict, out_dir: Path) -> tuple[list[str], list[str]]:
    """Write every plot the results allow; returns (written file names, notes)."""
    try:
        _plt()
    except ImportError:
        return [], ["matplotlib is not installed: no plots (pip install syncnorm[plot])"]
    written = []
    jobs = [("bench_time_vs_peers.png", plot_times, bool(res.get("layers")))]
    comm = res.get("comm") or {}
    jobs.append(("bench_comm_bytes.png", plot_comm_bytes, bool(comm.get("projection"))))
    jobs.append(("bench_comm_time.png", plot_comm_time, bool(comm.get("model"))))
    notes = []
    for name, fn, ok in jobs:
        if not ok:
            notes.append(f"{name} not drawn: its measurements are missing")
            continue
        fn(res, out_dir / name)
        written.append(name)
    return written, notes
