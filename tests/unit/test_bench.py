"""syncnorm-bench: the --quick run's JSON structure (no timed assertions), the communication model's
arithmetic, the timing statistics, and that the textbook peer computes the same BatchNorm."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from syncnorm import nn
from syncnorm.bench import commmodel as CM
from syncnorm.bench import floor as F
from syncnorm.bench.peers import TextbookNorm
from syncnorm.bench.timing import summarize

ROOT = Path(__file__).resolve().parents[2]


# ------------------------------------------------------------------------------ the quick run
def _bench_command() -> list[str]:
    script = Path(sys.executable).parent / "syncnorm-bench"
    if script.exists():
        return [str(script)]
    return [sys.executable, "-m", "syncnorm.bench"]  # not pip-installed: the same entry point


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run([*_bench_command(), "--quick", "--out", str(out)], cwd=out, env=env,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads((out / "bench.json").read_text()), out, proc.stdout


def _stats_ok(s):
    assert set(s) >= {"median_s", "q1_s", "q3_s", "iqr_s", "min_s", "n", "samples_s"}
    assert s["n"] == len(s["samples_s"]) > 0
    assert 0 <= s["min_s"] <= s["q1_s"] <= s["median_s"] <= s["q3_s"]
    assert math.isclose(s["iqr_s"], s["q3_s"] - s["q1_s"], rel_tol=1e-9, abs_tol=1e-15)


def test_quick_run_meta_floor_and_layers(quick_run):
    res, _out, stdout = quick_run
    meta = res["meta"]
    assert meta["quick"] is True and meta["tool"] == "syncnorm-bench"
    assert meta["threads"] == {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1",
                               "MKL_NUM_THREADS": "1"}
    assert meta["clock"] in ("cpu", "wall")
    fl = res["floor"]
    assert fl["bandwidth_Bps"] > 0 and fl["pass_input_arrays"] == {"forward": 3, "backward": 5,
                                                                   "both": 8}
    layers = {(e["layer"], e["shape_text"], e["pass"]) for e in res["layers"]}
    expected = {"BatchNorm2d", "GroupNorm", "LayerNorm", "InstanceNorm2d"}
    assert {e["layer"] for e in res["layers"]} == expected
    assert len({(ly, sh) for ly, sh, _ in layers if ly == "BatchNorm2d"}) == 2  # two BN shapes
    assert len(layers) == len(res["layers"]) == 5 * 3
    torch_there = res["meta"]["torch"] is not None
    for e in res["layers"]:
        assert e["pass"] in ("forward", "backward", "both")
        assert e["bytes_moved"] == F.PASS_BYTES[e["pass"]] * e["input_bytes"]
        assert math.isclose(e["floor_s"], e["bytes_moved"] / e["copy_bandwidth_Bps"], rel_tol=1e-9)
        for impl in ("syncnorm", "textbook"):
            for clock in ("cpu", "wall"):
                _stats_ok(e["candidates"][impl][clock])
        assert (e["candidates"]["torch"] is not None) == torch_there
        r = e["ratios"]
        med = e["candidates"]["syncnorm"][meta["clock"]]["median_s"]
        assert math.isclose(r["syncnorm/floor"], med / e["floor_s"], rel_tol=1e-9)
        if torch_there:
            tmed = e["candidates"]["torch"][meta["clock"]]["median_s"]
            assert math.isclose(r["syncnorm/torch"], med / tmed, rel_tol=1e-9)
        else:
            assert r["syncnorm/torch"] is None
    assert "ours/floor" in stdout  # the terminal table


def test_quick_run_memory_and_outputs(quick_run):
    res, out, _ = quick_run
    impls = {(m["layer"], m["shape_text"], m["impl"]) for m in res["memory"]}
    assert len(impls) == 5 * 2
    for m in res["memory"]:
        assert m["input_bytes"] > 0 and m["forward_peak_bytes"] > 0
        # the output itself is one input-sized buffer
        assert m["forward_buffers"] >= 0.99 and m["backward_buffers"] >= 0.99
        assert math.isclose(m["forward_buffers"], m["forward_peak_bytes"] / m["input_bytes"])
    assert (out / "bench_tables.md").read_text().startswith("| layer |")
    try:
        import matplotlib  # noqa: F401
        plots = True
    except ImportError:
        plots = False
    if plots:
        assert set(res["plots"]) == {"bench_time_vs_peers.png", "bench_comm_bytes.png",
                                     "bench_comm_time.png"}
        for p in res["plots"]:
            assert (out / p).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    else:
        assert res["plots"] == [] and any("matplotlib" in n for n in res["notes"])


def test_quick_run_communication(quick_run):
    res, _, _ = quick_run
    comm = res["comm"]
    assert comm["notes"] == [], comm["notes"]
    by_p = {m["P"]: m for m in comm["measured"]}
    assert sorted(by_p) == [1, 2, 4]
    C = comm["channels"]
    assert by_p[1]["collectives_per_step"] == 0 and by_p[1]["bytes_per_rank_per_step"] == 0
    for P in (2, 4):
        m = by_p[P]
        assert m["collectives_per_step"] == 2  # exactly one Allreduce forward, one backward
        assert set(m["by_call"]) <= {"Allreduce", "Iallreduce"}
        assert m["eval_step"] == {"collectives": 0, "bytes": 0}
        assert m["allgather_bytes"] == CM.allgather_design(C, P)["bytes_per_rank_per_step"]
        assert m["forward_bytes"] + m["backward_bytes"] == m["bytes_per_rank_per_step"]
        assert set(m["step_time"]) >= {"local", "sync", "ratio_wall", "ratio_cpu"}
    # the bytes do not depend on P: float64 (count, S1, S2 + fingerprint) and (g, h + fingerprint)
    assert by_p[2]["bytes_per_rank_per_step"] == by_p[4]["bytes_per_rank_per_step"]
    assert by_p[2]["bytes_per_rank_per_step"] % 8 == 0
    assert by_p[2]["bytes_per_rank_per_step"] >= 8 * (4 * C + 1)
    mo = comm["model"]
    assert mo["alpha_s"] > 0 and mo["beta_s_per_byte"] > 0 and mo["fit_P"] == 2
    proj = comm["projection"]
    assert [r["P"] for r in proj][-1] == 1024
    for r in proj:
        assert r["syncnorm_bytes"] == by_p[2]["bytes_per_rank_per_step"]
        assert r["allgather_bytes"] == CM.allgather_design(C, r["P"])["bytes_per_rank_per_step"]
    ar = comm["allreduce"]
    assert len(ar["sizes_bytes"]) == len(ar["median_s"]) >= 2


# ------------------------------------------------------------------------------ the arithmetic
def test_alpha_beta_formulas():
    a, b = 2e-6, 1e-9
    assert CM.ring_allreduce(1000, 1, a, b) == 0.0
    assert math.isclose(CM.ring_allreduce(1000, 4, a, b), 6 * a + 1.5 * 1000 * b)
    assert math.isclose(CM.recursive_doubling_allreduce(1000, 4, a, b), 2 * (a + 1000 * b))
    assert math.isclose(CM.recursive_doubling_allreduce(1000, 5, a, b), 3 * (a + 1000 * b))
    assert math.isclose(CM.ring_allgather(100, 8, a, b), 7 * (a + 100 * b))
    assert CM.best_allreduce(8, 1024, a, b) == CM.recursive_doubling_allreduce(8, 1024, a, b)
    big = 1 << 30  # large messages: the ring's bandwidth term wins
    assert CM.best_allreduce(big, 1024, a, b) == CM.ring_allreduce(big, 1024, a, b)


def test_fit_recovers_alpha_beta():
    a, b = 3e-6, 2e-10
    sizes = [8, 64, 512, 4096, 32768, 262144]
    # at P = 2: recursive doubling for the smallest message (alpha + n beta), slope beta
    times = [a + n * b if n == 8 else 2 * a + n * b for n in sizes]
    fa, fb = CM.fit_alpha_beta(sizes, times, 2)
    assert math.isclose(fa, a + 8 * b, rel_tol=1e-9)
    assert math.isclose(fb, b, rel_tol=0.05)  # the smallest point sits alpha below the line
    with pytest.raises(ValueError, match="need P >= 2"):
        CM.fit_alpha_beta(sizes, times, 1)
    with pytest.raises(ValueError, match="at least two"):
        CM.fit_alpha_beta([8], [1e-6], 2)


def test_allgather_design_and_projection():
    C = 64
    assert CM.allgather_design(C, 1)["bytes_per_rank_per_step"] == 0
    d = CM.allgather_design(C, 8)
    assert d == {"collectives_per_step": 2, "forward_bytes": 4 * 8 * 129,
                 "backward_bytes": 4 * 128, "bytes_per_rank_per_step": 4 * 8 * 129 + 512}
    rows = CM.projection([2, 16, 1024], C, 2000, 1900, 2e-6, 1e-9)
    assert [r["P"] for r in rows] == [2, 16, 1024]
    assert all(r["syncnorm_bytes"] == 3900 for r in rows)
    assert rows[-1]["allgather_bytes"] == 4 * 1024 * 129 + 512
    # the all-gather's (P-1) latencies overtake the Allreduce's log2 P
    assert rows[-1]["allgather_s"] > 10 * rows[-1]["syncnorm_s"]
    for r in rows:
        assert r["syncnorm_s"] <= min(r["syncnorm_ring_s"], r["syncnorm_recursive_doubling_s"]) + 1e-15


def test_floor_arithmetic_and_summary():
    assert F.floor_seconds("both", 10**6, 2e9) == 8 * 10**6 / 2e9
    assert F.copy_array_bytes(32 << 20) == 128 << 20
    assert F.copy_array_bytes(1 << 20) == 64 << 20
    v = [5.0, 1.0, 4.0, 2.0, 3.0, 10.0]
    s = summarize(v)
    assert s.median == float(np.median(v)) and s.n == 6 and s.min == 1.0
    assert math.isclose(s.q1, float(np.percentile(v, 25)))
    assert math.isclose(s.q3, float(np.percentile(v, 75)))


def test_textbook_peer_is_batchnorm():
    """The textbook peer is a correct BatchNorm: same output and gradient as syncnorm's."""
    rng = np.random.default_rng(0)
    x = rng.normal(0.5, 2.0, (6, 3, 5, 4))
    dy = rng.normal(size=x.shape)
    tb = TextbookNorm(lambda a: a, (0, 2, 3), (1, 3, 1, 1), running=3)
    tb.gamma = tb.gamma.astype(np.float64)
    tb.beta = tb.beta.astype(np.float64)
    m = nn.BatchNorm2d(3, dtype=np.float64)
    np.testing.assert_allclose(tb.forward(x), m(x), atol=1e-12)
    np.testing.assert_allclose(tb.backward(dy), m.backward(dy), atol=1e-12)
    np.testing.assert_allclose(tb.dgamma.ravel(), m.weight.grad, atol=1e-12)
    np.testing.assert_allclose(tb.running_var, m.running_var, atol=1e-7)
