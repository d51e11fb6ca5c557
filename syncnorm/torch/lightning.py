"""A Lightning layer-sync plugin: CPU SyncBatchNorm for `Trainer(strategy="ddp")` (extra
`syncnorm[lightning]`).

    from syncnorm.torch.lightning import SyncBatchNormPlugin
    trainer = lightning.Trainer(accelerator="cpu", strategy="ddp", devices=4,
                                plugins=[SyncBatchNormPlugin()])

Lightning's own `sync_batchnorm=True` converts to torch.nn.SyncBatchNorm, which refuses CPU tensors.
This plugin converts with `syncnorm.torch.convert_sync_batchnorm` when the strategy sets the model
up (after torch.distributed is initialized) and reverts exactly at teardown. Works with the
`lightning` package and with the older `pytorch_lightning`.
"""
from __future__ import annotations

from typing import Any

from torch.nn import Module

from .convert import convert_sync_batchnorm, revert_sync_batchnorm

try:
    from lightning.pytorch.plugins import LayerSync
except ImportError:  # pragma: no cover - the older package name
    try:
        from pytorch_lightning.plugins import LayerSync
    except ImportError as e:
        raise ImportError("syncnorm.torch.lightning needs Lightning, which is not installed: "
                          "pip install 'syncnorm[lightning]'") from e

__all__ = ["SyncBatchNormPlugin"]


class SyncBatchNormPlugin(LayerSync):
    """Converts every BatchNorm of the LightningModule to `syncnorm.torch.SyncBatchNorm`.

    process_group: as SyncBatchNorm's (None: torch's default group, which Lightning's DDP
    strategies initialize; the MPI world when the job was started by an MPI launcher).
    timeout: seconds per collective (None: SYNCNORM_COLLECTIVE_TIMEOUT, else no limit)."""

    def __init__(self, process_group: Any = None, timeout: float | None = None) -> None:
        self.process_group = process_group
        self.timeout = timeout

    def apply(self, model: Module) -> Module:
        """Convert the model's BatchNorm layers (their state, hooks and Parameters kept)."""
        model = convert_sync_batchnorm(model, self.process_group)
        if self.timeout is not None:
            from .sync_batchnorm import SyncBatchNorm
            for m in model.modules():
                if isinstance(m, SyncBatchNorm):
                    m.timeout = self.timeout
        return model

    def revert(self, model: Module) -> Module:
        """Give every converted layer its original class back."""
        return revert_sync_batchnorm(model)
