"""Data-parallel training over MPI: `DistributedDataParallel` and `DistributedSampler`.

Every message goes through `syncnorm.distributed`'s collectives (one Allreduce per gradient
bucket per step, one Bcast to make the ranks start equal).
"""
from .ddp import DistributedDataParallel, GradBucket
from .sampler import DistributedSampler

__all__ = ["DistributedDataParallel", "GradBucket", "DistributedSampler"]
