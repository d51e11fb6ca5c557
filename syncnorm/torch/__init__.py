"""SyncBatchNorm for PyTorch CPU tensors over MPI: the optional extra `syncnorm[torch]`.

    from syncnorm.torch import SyncBatchNorm, convert_sync_batchnorm, revert_sync_batchnorm
    model = convert_sync_batchnorm(model)            # every BatchNorm -> syncnorm SyncBatchNorm
    model = torch.nn.parallel.DistributedDataParallel(model)   # optional (gloo backend on CPU)

Start the job with an MPI launcher (`syncnorm-launch -n 4 -- python train.py`, mpirun, srun):
the statistics travel over MPI (mpi4py), whatever torch.distributed does beside it. The core
package (`import syncnorm`, `syncnorm.nn`) never imports torch; only this subpackage does.
"""
try:
    import torch as _torch  # noqa: F401
except ImportError as e:  # pragma: no cover - exercised by a subprocess test
    raise ImportError("syncnorm.torch needs PyTorch, which is not installed: "
                      "pip install 'syncnorm[torch]' (or any torch >= 2.0)") from e

from ..distributed.exchange import RanksOutOfStepError
from .convert import KNOWN_BATCHNORMS, convert_sync_batchnorm, revert_sync_batchnorm
from .function import SyncBatchNormFunction
from .sync_batchnorm import LazySyncBatchNorm, SyncBatchNorm

__all__ = ["SyncBatchNorm", "LazySyncBatchNorm", "SyncBatchNormFunction", "convert_sync_batchnorm",
           "revert_sync_batchnorm", "RanksOutOfStepError", "KNOWN_BATCHNORMS"]
