"""On P ranks (P = 1 too): activation checkpointing (torch.utils.checkpoint, reentrant and not)
of a model with two SyncBatchNorm layers gives the plain step's gradients and running statistics
bitwise, with one forward and one backward exchange per layer and step, and, on more than one
rank, exactly that many real Allreduce calls (counted by a wrapper around the MPI Allreduce that
calls it). A recomputation whose input differs (dropout without the RNG state restored) is a step
of its own on one rank, and raises RanksOutOfStepError on every rank when only some ranks differ.
Prints "CHECKPOINT-OK rank R" at the end."""
from __future__ import annotations

import copy

import torch
from mpi4py import MPI
from torch import nn
from torch.utils.checkpoint import checkpoint

from syncnorm.distributed import group as sn_group
from syncnorm.torch import RanksOutOfStepError, convert_sync_batchnorm

torch.set_num_threads(1)
world = MPI.COMM_WORLD
CALLS = {"allreduce": 0}
_real_allreduce = sn_group.allreduce_sum  # the MPI call a ProcessGroup makes for the exchange


def counting_allreduce(*args, **kwargs):
    CALLS["allreduce"] += 1
    return _real_allreduce(*args, **kwargs)


sn_group.allreduce_sum = counting_allreduce


class Net(nn.Module):
    def __init__(self, how: str | None) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.block = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                                   nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU())
        self.head = nn.Linear(4, 2)
        self.how = how

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.how is None:
            h = self.block(x)
        else:
            h = checkpoint(self.block, x, use_reentrant=self.how == "reentrant")
        return self.head(h.mean((2, 3)))


def step(how: str | None, x: torch.Tensor) -> tuple[nn.Module, torch.Tensor, int]:
    m = convert_sync_batchnorm(Net(how))
    xr = x.clone().requires_grad_()
    before = CALLS["allreduce"]
    m(xr).square().sum().backward()
    return m, xr.grad, CALLS["allreduce"] - before


def main() -> None:
    gen = torch.Generator().manual_seed(7 + world.rank)
    x = torch.randn(3 + world.rank, 3, 6, 6, generator=gen) * 2 + 1
    plain, gx, calls = step(None, x)
    layers = (1, 4)
    for how in ("reentrant", "non-reentrant"):
        m, g, c = step(how, x)
        assert torch.equal(g, gx), how
        for (n, p), q in zip(m.named_parameters(), plain.parameters()):
            assert torch.equal(p.grad, q.grad), (how, n)
        for (n, b), q in zip(m.named_buffers(), plain.buffers()):
            assert torch.equal(b, q), (how, n)  # running statistics updated once, as the plain step
        for i in layers:
            ex = m.block[i]._exchange
            assert (ex.forward_calls, ex.backward_calls) == (1, 1), (how, i, ex.forward_calls)
            assert int(m.block[i].num_batches_tracked) == 1
            assert len(m.block[i]._stash) == 0  # nothing left behind
        assert c == calls == (2 * len(layers) if world.size > 1 else 0), (how, c, calls)
    differing_recomputation()
    print(f"CHECKPOINT-OK rank {world.rank}", flush=True)


def differing_recomputation() -> None:
    torch.manual_seed(world.rank)
    block = convert_sync_batchnorm(nn.Sequential(nn.Dropout(0.5), nn.BatchNorm1d(3)))
    x = torch.randn(6, 3, requires_grad=True)
    restore = world.size > 1 and world.rank == 0  # rank 0 recomputes the same input, the others not
    try:
        checkpoint(block, x, use_reentrant=False, preserve_rng_state=restore).sum().backward()
    except RanksOutOfStepError:
        assert world.size > 1
        return
    assert world.size == 1 and int(block[1].num_batches_tracked) == 2  # a step of its own


if __name__ == "__main__":
    main()
