"""ResNet-18 (32x32 inputs, float64) converted with syncnorm.torch.convert_sync_batchnorm and trained
3 SGD steps under DistributedDataParallel: losses, parameters and running statistics equal one
process training plain BatchNorm on the whole batch (1e-10). The same script runs under torchrun
and under an MPI launcher (`syncnorm.torch.init_process_group` handles both); prints
`RESNET-OK rank R of P over TRANSPORT` (run by tests/torch_adapter/test_launchers.py)."""
from __future__ import annotations

import copy
import sys

import torch
import torch.distributed as dist
from resnet18 import resnet18
from torch import nn

import syncnorm.torch as st

BATCH, STEPS, TOL = 8, 3, 1e-10  # the whole batch (split over the ranks); float64 tolerance
# lr 0.01: a well-conditioned run (the same run on the batch in reverse order differs by 1e-13);
# lr 0.1 on batches of 4 diverges, and then reordering the batch alone changes weights by 2e-9


def close(a: torch.Tensor, b: torch.Tensor, what: str) -> None:
    torch.testing.assert_close(a, b, atol=TOL, rtol=TOL, msg=lambda m: f"{what}: {m}")


def main() -> str:
    """Train; rank 0 also runs the single-process reference and compares. Returns the transport
    the statistics went over ("torch" or "mpi")."""
    P, R = dist.get_world_size(), dist.get_rank()
    per_rank = BATCH // P
    torch.manual_seed(0)  # the same initial weights on every rank and in the reference
    ref = resnet18(num_classes=10).double()
    net = st.convert_sync_batchnorm(copy.deepcopy(ref))
    ddp = nn.parallel.DistributedDataParallel(net)
    opt_ref = torch.optim.SGD(ref.parameters(), lr=0.01, momentum=0.9)
    opt = torch.optim.SGD(ddp.parameters(), lr=0.01, momentum=0.9)
    gen = torch.Generator().manual_seed(7)
    for step in range(STEPS):
        X = torch.randn(BATCH, 3, 32, 32, generator=gen, dtype=torch.float64)
        Y = torch.randint(0, 10, (BATCH,), generator=gen)
        here = slice(R * per_rank, (R + 1) * per_rank)
        opt.zero_grad()
        loss = nn.functional.cross_entropy(ddp(X[here]), Y[here])
        loss.backward()
        opt.step()
        mean = loss.detach().clone() / P
        dist.all_reduce(mean)
        if R == 0:  # one reference is enough (the ranks share 2 cores)
            opt_ref.zero_grad()
            loss_ref = nn.functional.cross_entropy(ref(X), Y)
            loss_ref.backward()
            opt_ref.step()
            close(mean, loss_ref.detach(), f"loss of step {step}")
    if R == 0:
        for (name, p), (_, q) in zip(net.named_parameters(), ref.named_parameters()):
            close(p, q, f"parameter {name}")
        for (name, b), (_, c) in zip(net.named_buffers(), ref.named_buffers()):
            close(b, c, f"buffer {name}")
    # every rank holds the same parameters and running statistics, bitwise
    digest = torch.stack([t.detach().double().sum() for t in [*net.parameters(), *net.buffers()]])
    everyone = [torch.empty_like(digest) for _ in range(P)]
    dist.all_gather(everyone, digest)
    assert all(torch.equal(d, digest) for d in everyone), "ranks hold different models"
    layer = next(m for m in net.modules() if isinstance(m, st.SyncBatchNorm))
    return layer._exchange.group.backend


if __name__ == "__main__":
    torch.set_num_threads(1)
    st.init_process_group()
    transport = main()
    print(f"RESNET-OK rank {dist.get_rank()} of {dist.get_world_size()} over {transport} "
          f"(mpi4py loaded: {'mpi4py.MPI' in sys.modules})", flush=True)
    st.destroy_process_group()
