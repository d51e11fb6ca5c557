"""Communication of synchronized BatchNorm designs, and the latency-bandwidth model that projects it.

Per training step of one layer with C channels on P ranks ("bytes per rank" = the bytes of the
buffers a rank hands to the collectives):

* syncnorm: ONE Allreduce forward (count, S1, S2 and a fingerprint; float64) and ONE backward
  (sum dy, sum dy * (x - mean) and a fingerprint; float64). The sizes are what the instrumented
  communicator counted; they do not depend on P.
* all-gather design (PyTorch's SyncBatchNorm, Horovod): forward, every rank all-gathers
  (mean, invstd, count) = 2C + 1 float32 values from every rank, so each rank receives
  P * (2C + 1) values; backward, one Allreduce of (sum dy, sum dy * xmu) = 2C float32 values.
  Also 2 collectives per step, but the forward message grows with P.

The alpha-beta model (Hockney): a message of n bytes between two ranks costs alpha + n * beta.
With the usual algorithms (Thakur, Rabenseifner & Gropp 2005):

    ring Allreduce of n bytes             2 (P - 1) alpha + 2 (P - 1) / P * n * beta
    recursive-doubling Allreduce          ceil(log2 P) * (alpha + n * beta)
    ring Allgather of n bytes per rank    (P - 1) * (alpha + n * beta)

alpha and beta come from Allreduce times measured on this machine at P = 2 (the fastest quarter
of the repetitions at each size, which other processes disturb least): alpha is the time of the
smallest message (one exchange of recursive doubling), beta the least-squares slope of t(n) (beta
for both algorithms at P = 2). An MPI library picks the faster Allreduce
algorithm for the message size, so the projection takes the smaller of ring and recursive
doubling for every Allreduce (small BatchNorm messages: recursive doubling, log2 P latencies),
and the ring for the all-gather.
"""
from __future__ import annotations

import math
from typing import Sequence

__all__ = ["ring_allreduce", "recursive_doubling_allreduce", "ring_allgather", "best_allreduce",
           "fit_alpha_beta", "allgather_design", "projection", "MODEL_TEXT"]

MODEL_TEXT = ("alpha-beta model: a message of n bytes costs alpha + n*beta; ring Allreduce "
              "2(P-1)alpha + 2(P-1)/P n beta; recursive-doubling Allreduce ceil(log2 P)(alpha + "
              "n beta); ring Allgather of n bytes per rank (P-1)(alpha + n beta); alpha = time of "
              "an 8-byte Allreduce at P=2, beta = slope of the Allreduce time in the message size "
              "at P=2 (fastest quarter of the repetitions); each Allreduce takes the faster of "
              "ring and recursive doubling")


def ring_allreduce(n: float, P: int, alpha: float, beta: float) -> float:
    """Seconds for a ring Allreduce of n bytes on P ranks."""
    if P <= 1:
        return 0.0
    return 2 * (P - 1) * alpha + 2 * (P - 1) / P * n * beta


def recursive_doubling_allreduce(n: float, P: int, alpha: float, beta: float) -> float:
    """Seconds for a recursive-doubling Allreduce of n bytes on P ranks."""
    if P <= 1:
        return 0.0
    return math.ceil(math.log2(P)) * (alpha + n * beta)


def best_allreduce(n: float, P: int, alpha: float, beta: float) -> float:
    return min(ring_allreduce(n, P, alpha, beta), recursive_doubling_allreduce(n, P, alpha, beta))


def ring_allgather(n: float, P: int, alpha: float, beta: float) -> float:
    """Seconds for a ring Allgather of n bytes contributed by each of P ranks."""
    if P <= 1:
        return 0.0
    return (P - 1) * (alpha + n * beta)


def fit_alpha_beta(sizes: Sequence[float], seconds: Sequence[float], P: int = 2
                   ) -> tuple[float, float]:
    """(alpha, beta) from Allreduce times t(n) measured on P ranks.

    alpha: the smallest message's time divided by the ceil(log2 P) messages of recursive doubling
    (what MPI libraries use for small messages; one message at P = 2). beta: the least-squares
    slope of t(n) divided by the ring's 2(P-1)/P (1 at P = 2, where both algorithms give slope
    beta). Results are clamped to tiny positive values."""
    if len(sizes) != len(seconds) or len(sizes) < 2:
        raise ValueError(f"need at least two (size, time) pairs, got {len(sizes)} sizes and "
                         f"{len(seconds)} times")
    if P < 2:
        raise ValueError(f"Allreduce times on P={P} rank(s) say nothing about messages; need P >= 2")
    k = len(sizes)
    mx = sum(sizes) / k
    my = sum(seconds) / k
    sxx = sum((x - mx) ** 2 for x in sizes)
    sxy = sum((x - mx) * (y - my) for x, y in zip(sizes, seconds))
    slope = sxy / sxx if sxx > 0 else 0.0
    t_small = min(zip(sizes, seconds))[1]
    alpha = max(t_small / math.ceil(math.log2(P)), 1e-9)
    beta = max(slope * P / (2 * (P - 1)), 1e-13)
    return alpha, beta


def allgather_design(C: int, P: int) -> dict:
    """Collectives and bytes per rank per step of the all-gather design (float32); nothing on one
    rank (PyTorch falls back to BatchNorm there, as syncnorm's group of one does)."""
    if P <= 1:
        return {"collectives_per_step": 0, "forward_bytes": 0, "backward_bytes": 0,
                "bytes_per_rank_per_step": 0}
    fwd = 4 * P * (2 * C + 1)
    bwd = 4 * 2 * C
    return {"collectives_per_step": 2, "forward_bytes": fwd, "backward_bytes": bwd,
            "bytes_per_rank_per_step": fwd + bwd}


def projection(P_values: Sequence[int], C: int, ours_forward_bytes: float,
               ours_backward_bytes: float, alpha: float, beta: float) -> list[dict]:
    """Modeled bytes and seconds per step, per P, for both designs (see the module docstring)."""
    rows = []
    for P in P_values:
        ag = allgather_design(C, P)
        ours_ring = (ring_allreduce(ours_forward_bytes, P, alpha, beta)
                     + ring_allreduce(ours_backward_bytes, P, alpha, beta))
        ours_rd = (recursive_doubling_allreduce(ours_forward_bytes, P, alpha, beta)
                   + recursive_doubling_allreduce(ours_backward_bytes, P, alpha, beta))
        ours_best = (best_allreduce(ours_forward_bytes, P, alpha, beta)
                     + best_allreduce(ours_backward_bytes, P, alpha, beta))
        ag_s = (ring_allgather(4 * (2 * C + 1), P, alpha, beta)
                + best_allreduce(ag["backward_bytes"], P, alpha, beta))
        rows.append({
            "P": int(P),
            "syncnorm_bytes": ours_forward_bytes + ours_backward_bytes,
            "allgather_bytes": ag["bytes_per_rank_per_step"],
            "syncnorm_ring_s": ours_ring,
            "syncnorm_recursive_doubling_s": ours_rd,
            "syncnorm_s": ours_best,
            "allgather_s": ag_s,
        })
    return rows
