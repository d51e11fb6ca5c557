"""SyncBatchNorm for PyTorch CPU tensors: the optional extra `syncnorm[torch]`.

    from syncnorm.torch import SyncBatchNorm, convert_sync_batchnorm, revert_sync_batchnorm
    model = convert_sync_batchnorm(model)            # every BatchNorm -> syncnorm SyncBatchNorm
    model = torch.nn.parallel.DistributedDataParallel(model)   # optional (gloo backend on CPU)

Under `torchrun` the statistics travel over torch.distributed's default group (gloo); under an MPI
launcher (`syncnorm-launch -n 4 -- python train.py`, mpirun, srun) over MPI, and
`init_process_group()` sets torch.distributed up from the MPI job for DDP. Lightning:
`syncnorm.torch.lightning.SyncBatchNormPlugin`. The core package (`import syncnorm`, `syncnorm.nn`)
never imports torch; only this subpackage does.
"""
try:
    import torch as _torch  # noqa: F401
except ImportError as e:  # pragma: no cover - exercised by a subprocess test
    raise ImportError("syncnorm.torch needs PyTorch, which is not installed: "
                      "pip install 'syncnorm[torch]' (or any torch >= 2.0)") from e

from ..distributed.exchange import RanksOutOfStepError
from .convert import KNOWN_BATCHNORMS, convert_sync_batchnorm, revert_sync_batchnorm
from .function import SyncBatchNormFunction
from .process_group import destroy_process_group, init_process_group
from .sync_batchnorm import LazySyncBatchNorm, SyncBatchNorm

__all__ = ["SyncBatchNorm", "LazySyncBatchNorm", "SyncBatchNormFunction", "convert_sync_batchnorm",
           "revert_sync_batchnorm", "RanksOutOfStepError", "KNOWN_BATCHNORMS", "init_process_group",
           "destroy_process_group"]
