"""torch DistributedDataParallel (gloo backend on CPU) + syncnorm.torch.SyncBatchNorm on 4 MPI ranks
follows the single-process large-batch run (run by tests/torch_adapter/test_torch_mpi.py).

DDP averages the parameter gradients over gloo; SyncBatchNorm sums the batch statistics over MPI.
k SGD steps of the 4-rank job must give the loss per step and the parameters and buffers of one
process training the same model (torch BatchNorm2d) on the concatenated batch, for equal per-rank
batches and for uneven ones with an empty rank.
"""
from __future__ import annotations

import copy
import os
import tempfile
import time

import numpy as np
import pytest

torch = pytest.importorskip("torch")
import torch.distributed as tdist  # noqa: E402
from mpi4py import MPI  # noqa: E402
from torch import nn  # noqa: E402

from syncnorm.distributed import comm as C  # noqa: E402
from syncnorm.torch import SyncBatchNorm, convert_sync_batchnorm  # noqa: E402

torch.set_num_threads(1)
WORLD = MPI.COMM_WORLD
P, RANK = WORLD.Get_size(), WORLD.Get_rank()
PER_RANK, STEPS = 4, 4


class Block(nn.Module):
    """conv-BN-ReLU-conv-BN plus the identity, then ReLU (a torchvision BasicBlock in small)."""

    def __init__(self, c):
        super().__init__()
        self.conv1 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c)
        self.conv2 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c)

    def forward(self, x):
        return torch.relu(self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x))))) + x)


def small_cnn(dtype):
    torch.manual_seed(1234)  # the same initial weights on every rank and in the reference
    return nn.Sequential(nn.Conv2d(3, 6, 3, padding=1, bias=False), nn.BatchNorm2d(6), nn.ReLU(),
                         Block(6), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 5)).to(dtype)


@pytest.fixture(scope="module")
def gloo():
    """torch.distributed over gloo, rendezvous through a file that rank 0 names (sent over MPI)."""
    path = np.zeros(256, np.uint8)
    tmpdir = None
    if RANK == 0:
        tmpdir = tempfile.mkdtemp(prefix="syncnorm-ddp-")
        name = os.path.join(tmpdir, "rendezvous").encode()
        path[:len(name)] = np.frombuffer(name, np.uint8)
    C.broadcast(path, WORLD)
    store = bytes(path[path != 0]).decode()
    tdist.init_process_group("gloo", init_method=f"file://{store}", rank=RANK, world_size=P)
    yield
    tdist.barrier()
    tdist.destroy_process_group()
    # torch 2.13 shutdown race (docs/pytorch.md): DDP keeps gloo's worker threads alive past
    # destroy_process_group, and one that releases a backward-time operation while Python exits
    # aborts the process; a pause lets them finish first
    time.sleep(0.2)
    if tmpdir is not None:
        for f in os.listdir(tmpdir):
            os.unlink(os.path.join(tmpdir, f))
        os.rmdir(tmpdir)


def sizes(kind, step):
    """Per-rank batch sizes: equal, or uneven with an empty rank (varying by step)."""
    if kind == "even":
        return [PER_RANK] * P
    base = [5, 0, 3, 8, 2, 6][:P]
    return base[step % P:] + base[:step % P]


@pytest.mark.mpi(min_size=2)
@pytest.mark.parametrize("dtype,tol,kind", [(torch.float64, 1e-10, "even"), (torch.float32, 2e-5, "even"),
                                            (torch.float64, 1e-10, "uneven")])
def test_ddp_with_syncbatchnorm_follows_the_large_batch_run(gloo, dtype, tol, kind):
    """Equal batches: each rank's loss is its batch mean, as usual. Uneven batches (a rank may have
    none): each rank's loss is its sum * P / N, so that DDP's average of the gradients is the
    gradient of the mean over all N samples."""
    rng = np.random.default_rng(7)
    ref = small_cnn(dtype)
    net = convert_sync_batchnorm(copy.deepcopy(ref))
    assert sum(isinstance(m, SyncBatchNorm) for m in net.modules()) == 3
    ddp = nn.parallel.DistributedDataParallel(net)
    opt_ref = torch.optim.SGD(ref.parameters(), lr=0.2, momentum=0.9)
    opt = torch.optim.SGD(ddp.parameters(), lr=0.2, momentum=0.9)
    for step in range(STEPS):
        ns = sizes(kind, step)
        N = sum(ns)
        X = torch.from_numpy(rng.normal(1.0, 2.0, (N, 3, 6, 6))).to(dtype)
        Y = torch.from_numpy(rng.integers(0, 5, N))
        here = slice(sum(ns[:RANK]), sum(ns[:RANK + 1]))
        opt_ref.zero_grad()
        loss_ref = nn.functional.cross_entropy(ref(X), Y)
        loss_ref.backward()
        opt_ref.step()
        opt.zero_grad()
        out = ddp(X[here])
        if kind == "even":
            loss = nn.functional.cross_entropy(out, Y[here])
            mine = loss.item() / P
        else:
            loss = nn.functional.cross_entropy(out, Y[here], reduction="sum") * (P / N)
            mine = loss.item() / P
        loss.backward()
        opt.step()
        mean_loss = C.allreduce_sum(np.array([mine]), WORLD)[0]
        assert abs(mean_loss - loss_ref.item()) <= tol * max(1.0, abs(loss_ref.item())), (
            f"step {step}: {P}-rank loss {mean_loss!r} vs single-process {loss_ref.item()!r}")
    for (name, p), (_, q) in zip(net.named_parameters(), ref.named_parameters()):
        torch.testing.assert_close(p, q, atol=tol, rtol=tol, msg=f"parameter {name} after {STEPS} steps")
    for (name, b), (_, c) in zip(net.named_buffers(), ref.named_buffers()):
        torch.testing.assert_close(b, c, atol=tol, rtol=tol, msg=f"buffer {name} after {STEPS} steps")
    # eval is local and uses the (synchronized) running statistics
    net.eval()
    ref.eval()
    X = torch.from_numpy(rng.normal(1.0, 2.0, (3, 3, 6, 6))).to(dtype)
    torch.testing.assert_close(net(X), ref(X), atol=tol, rtol=tol)
