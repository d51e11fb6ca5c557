"""On P ranks (P = 1 too): a training step of torch.compile(model, fullgraph=True) equals the eager
step of the same converted model: outputs, loss, gradients, running statistics, bitwise, for three
SGD steps; both made the same number of exchanges; the running statistics agree on every rank.
Argument: the torch.compile backend (default inductor). Prints "COMPILED-TRAIN-OK rank R" at the end."""
from __future__ import annotations

import sys

import torch
from mpi4py import MPI
from torch import nn

from syncnorm.torch import convert_sync_batchnorm

torch.set_num_threads(1)
comm = MPI.COMM_WORLD


def model() -> nn.Module:
    """Conv-BN2d(momentum=None)-ReLU-Linear-BN1d(no running statistics): both running rules."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4, momentum=None),
                         nn.ReLU(), nn.Flatten(), nn.Linear(4 * 36, 5),
                         nn.BatchNorm1d(5, track_running_stats=False))


def main() -> None:
    eager = convert_sync_batchnorm(model())
    plain = convert_sync_batchnorm(model())
    backend = sys.argv[1] if len(sys.argv) > 1 else "inductor"
    compiled = torch.compile(plain, fullgraph=True, backend=backend)
    opts = [torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9) for m in (eager, plain)]
    gen = torch.Generator().manual_seed(100 + comm.rank)
    for step in range(3):
        x = torch.randn(3 + comm.rank, 3, 6, 6, generator=gen) * 2 + 1  # ranks' batches differ
        target = torch.randn(3 + comm.rank, 5, generator=gen)
        outs = []
        for m, opt in zip((eager, compiled), opts):
            opt.zero_grad()
            y = m(x)
            loss = (y - target).square().mean()
            loss.backward()
            opt.step()
            outs.append((y.detach(), loss.detach()))
        (ya, la), (yb, lb) = outs
        assert torch.equal(ya, yb) and torch.equal(la, lb), (step, (ya - yb).abs().max())
        for (n, p), q in zip(eager.named_parameters(), plain.parameters()):
            assert torch.equal(p.grad, q.grad) and torch.equal(p, q), (step, n)
        for (n, b), c in zip(eager.named_buffers(), plain.buffers()):
            assert torch.equal(b, c), (step, n)
    for i in (1, 5):
        ea, pa = eager[i]._exchange, plain[i]._exchange
        assert (ea.forward_calls, ea.backward_calls) == (pa.forward_calls, pa.backward_calls) == (3, 3), i
        assert ea.size == comm.size
    rm = eager[1].running_mean.numpy().copy()
    assert all((r == rm).all() for r in comm.allgather(rm))
    assert int(plain[1].num_batches_tracked) == 3
    print(f"COMPILED-TRAIN-OK rank {comm.rank}", flush=True)


if __name__ == "__main__":
    main()
