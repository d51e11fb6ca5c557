"""syncnorm.torch over torch.distributed groups, under torchrun or an MPI launcher (4 ranks): torch
subgroups, a rank with an empty batch, layers built on rank 0 only (an evaluation copy and an EMA
copy), numpy SyncBatchNorm over the same group, and ranks out of step (the same error on every rank,
and the group usable afterwards). Prints `CASE-OK <case> rank R` for each case (run by
tests/torch_adapter/test_launchers.py)."""
from __future__ import annotations

import copy

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

import syncnorm.torch as st
from syncnorm import nn as snn

TOL = 1e-12


def ok(case: str) -> None:
    print(f"CASE-OK {case} rank {dist.get_rank()}", flush=True)


def gathered(name: str, group=None) -> list[str]:
    """Every rank's outcome name (a fixed-size byte tensor per rank)."""
    mine = torch.zeros(48, dtype=torch.uint8)
    raw = name.encode()[:48]
    mine[:len(raw)] = torch.frombuffer(bytearray(raw), dtype=torch.uint8)
    out = [torch.zeros_like(mine) for _ in range(dist.get_world_size(group))]
    dist.all_gather(out, mine, group=group)
    return [bytes(t.tolist()).rstrip(b"\0").decode() for t in out]


def outcome(fn) -> str:
    try:
        fn()
    except Exception as e:  # noqa: BLE001 - the outcome is what we compare
        return type(e).__name__
    return "ok"


def data(sizes: list[int], c: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(sum(sizes), c, 3, 3, generator=g, dtype=torch.float64) * 2 + 1


def check_against_batchnorm(layer: nn.Module, sizes: list[int], me: int, seed: int) -> None:
    """layer (SyncBatchNorm over the ranks whose batch sizes are `sizes`, this rank's index `me`)
    gives the output and input gradient of one BatchNorm2d on the whole batch."""
    X = data(sizes, layer.num_features, seed)
    here = slice(sum(sizes[:me]), sum(sizes[:me + 1]))
    ref = nn.BatchNorm2d(layer.num_features).double()
    xr = X.clone().requires_grad_()
    w = torch.linspace(-1, 1, X[0].numel(), dtype=torch.float64).reshape(X.shape[1:])
    yr = ref(xr)
    (yr * w).sum().backward()
    x = X[here].clone().requires_grad_()
    y = layer(x)
    (y * w).sum().backward()
    torch.testing.assert_close(y, yr[here].detach(), atol=TOL, rtol=TOL)
    torch.testing.assert_close(x.grad, xr.grad[here], atol=TOL, rtol=TOL)
    torch.testing.assert_close(layer.running_var, ref.running_var, atol=TOL, rtol=TOL)


def subgroups() -> None:
    """Two torch groups of two ranks: each group's statistics are its own."""
    cur, _ = dist.new_subgroups(2)
    layer = st.SyncBatchNorm(4, process_group=cur).double()
    R = dist.get_rank()
    check_against_batchnorm(layer, [3, 5], R % 2, seed=10 + R // 2)
    assert layer._exchange.group.backend == "torch" and layer._exchange.group.size == 2
    ok("subgroups")


def empty_rank() -> None:
    """Rank 1 has no samples; it still takes part and the others get the whole batch's statistics."""
    sizes = [3, 0, 2, 5][:dist.get_world_size()]
    check_against_batchnorm(st.SyncBatchNorm(3).double(), sizes, dist.get_rank(), seed=20)
    ok("empty-rank")


def extra_layers_on_rank_0() -> None:
    """Rank 0 builds layers the others do not (an evaluation copy converted before the model, an
    EMA copy after it) and uses them outside training: the shared model trains as if they did not
    exist (with a creation counter as identity, every forward raised RanksOutOfStepError)."""
    R, P = dist.get_rank(), dist.get_world_size()
    if R == 0:
        probe = st.convert_sync_batchnorm(nn.Sequential(nn.BatchNorm2d(3))).double().eval()
        probe(torch.randn(2, 3, 3, 3, dtype=torch.float64))
    model = st.convert_sync_batchnorm(nn.Sequential(nn.BatchNorm2d(3), nn.BatchNorm2d(3))).double()
    ema = copy.deepcopy(model).eval() if R == 0 else None
    sizes = [2, 3, 4, 1][:P]
    for step in range(2):
        X = data(sizes, 3, seed=30 + step)
        here = slice(sum(sizes[:R]), sum(sizes[:R + 1]))
        ref = nn.Sequential(nn.BatchNorm2d(3), nn.BatchNorm2d(3)).double()
        torch.testing.assert_close(model(X[here]), ref(X)[here], atol=TOL, rtol=TOL)
        if ema is not None:
            with torch.no_grad():
                for e, m in zip(ema.parameters(), model.parameters()):
                    e.mul_(0.9).add_(m, alpha=0.1)
            ema(X[here])  # eval: local, no communication
    ok("extra-layers")


def numpy_layers_over_torch() -> None:
    """syncnorm.nn.SyncBatchNorm (numpy) over the same torch group, with an extra layer on rank 0."""
    R, P = dist.get_rank(), dist.get_world_size()
    if R == 0:
        snn.SyncBatchNorm(2)
    layer = snn.SyncBatchNorm(2)
    sizes = [4, 2, 3, 1][:P]
    X = np.random.default_rng(40).normal(1, 2, (sum(sizes), 2))
    here = slice(sum(sizes[:R]), sum(sizes[:R + 1]))
    np.testing.assert_allclose(layer(X[here]), snn.BatchNorm1d(2)(X)[here], atol=1e-12)
    ok("numpy")


def out_of_step() -> None:
    """The last rank skips `a` after a step in step: every rank raises RanksOutOfStepError in the
    same call; then layers built again on every rank train exactly."""
    R, P = dist.get_rank(), dist.get_world_size()
    a, b = st.SyncBatchNorm(2).double(), st.SyncBatchNorm(2).double()
    x = torch.randn(3, 2, dtype=torch.float64) + R
    a(x)
    b(x)
    names = gathered(outcome(lambda: (b if R == P - 1 else a)(x)))
    assert names == ["RanksOutOfStepError"] * P, names
    check_against_batchnorm(st.SyncBatchNorm(2).double(), [2] * P, R, seed=50)
    ok("out-of-step")


if __name__ == "__main__":
    torch.set_num_threads(1)
    st.init_process_group(timeout=60)
    if dist.get_rank() == 0:  # the rendezvous address the ranks met at (a private attribute)
        store = dist.distributed_c10d._get_default_store()
        while hasattr(store, "underlying_store"):  # PrefixStores around the TCPStore
            store = store.underlying_store
        print(f"INIT-ADDRESS {getattr(store, 'host', '?')}", flush=True)
    for case in (subgroups, empty_rank, extra_layers_on_rank_0, numpy_layers_over_torch, out_of_step):
        case()
    st.destroy_process_group()
