"""Lightning's Trainer(accelerator="cpu", strategy="ddp", devices=P, plugins=[SyncBatchNormPlugin()])
trains a small CNN 3 steps; parameters and running statistics equal one process training plain
BatchNorm on the whole batch (float64, 1e-10), and the plugin's revert gives back BatchNorm2d.
Lightning's DDP launcher starts the other ranks by running this script again; each rank prints
`LIGHTNING-OK rank R of P` (run by tests/torch_adapter/test_launchers.py with P as argument)."""
from __future__ import annotations

import copy
import sys
import tempfile

import lightning as L
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

from syncnorm.torch import SyncBatchNorm
from syncnorm.torch.lightning import SyncBatchNormPlugin

PER_RANK, STEPS, TOL = 4, 3, 1e-10


def small_cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 6, 3, padding=1, bias=False), nn.BatchNorm2d(6), nn.ReLU(),
                         nn.Conv2d(6, 6, 3, padding=1, bias=False), nn.BatchNorm2d(6), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 5)).double()


class Net(L.LightningModule):
    def __init__(self, data: TensorDataset) -> None:
        super().__init__()
        self.model = small_cnn()
        self.data = data
        self.kinds: set[str] = set()

    def train_dataloader(self) -> DataLoader:
        """Rank r gets samples r, r + P, ... of each block of P * PER_RANK (no shuffling), so step
        k of the job sees block k, as the reference does."""
        return DataLoader(self.data, batch_size=PER_RANK,
                          sampler=DistributedSampler(self.data, shuffle=False))

    def training_step(self, batch, batch_idx):
        self.kinds |= {type(m).__name__ for m in self.model.modules() if "BatchNorm" in type(m).__name__}
        x, y = batch
        return nn.functional.cross_entropy(self.model(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.05, momentum=0.9)


def main(P: int) -> None:
    gen = torch.Generator().manual_seed(3)
    N = P * PER_RANK * STEPS
    X = torch.randn(N, 3, 8, 8, generator=gen, dtype=torch.float64) * 2 + 1
    Y = torch.randint(0, 5, (N,), generator=gen)
    net = Net(TensorDataset(X, Y))
    ref = copy.deepcopy(net.model)
    trainer = L.Trainer(accelerator="cpu", strategy="ddp", devices=P, plugins=[SyncBatchNormPlugin()],
                        max_steps=STEPS, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False,
                        default_root_dir=tempfile.gettempdir(), num_sanity_val_steps=0,
                        use_distributed_sampler=False)
    trainer.fit(net)
    R = dist.get_rank()
    assert net.kinds == {"SyncBatchNorm"}, net.kinds  # trained converted
    assert all(not isinstance(m, SyncBatchNorm) for m in net.model.modules())  # reverted
    assert type(net.model[1]) is nn.BatchNorm2d, type(net.model[1])
    opt = torch.optim.SGD(ref.parameters(), lr=0.05, momentum=0.9)
    for k in range(STEPS):
        block = slice(k * P * PER_RANK, (k + 1) * P * PER_RANK)
        opt.zero_grad()
        nn.functional.cross_entropy(ref(X[block]), Y[block]).backward()
        opt.step()
    for (name, p), (_, q) in zip(net.model.named_parameters(), ref.named_parameters()):
        torch.testing.assert_close(p, q, atol=TOL, rtol=TOL, msg=lambda m: f"{name}: {m}")
    for (name, b), (_, c) in zip(net.model.named_buffers(), ref.named_buffers()):
        torch.testing.assert_close(b, c, atol=TOL, rtol=TOL, msg=lambda m: f"{name}: {m}")
    print(f"LIGHTNING-OK rank {R} of {P}", flush=True)


if __name__ == "__main__":
    torch.set_num_threads(1)
    main(int(sys.argv[1]))
    if dist.is_initialized():  # the teardown of docs/pytorch.md (torch 2.13's gloo exit race)
        from syncnorm.torch import destroy_process_group
        destroy_process_group()
