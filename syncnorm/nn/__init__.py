"""Layers modelled on torch.nn: the module tree, BatchNorm, SyncBatchNorm, convert and revert."""
from .batchnorm import BatchNorm1d, BatchNorm2d, BatchNorm3d
from .container import Identity, ModuleList, Sequential
from .convert import convert_sync_batchnorm, revert_sync_batchnorm
from .module import IncompatibleKeys, Module, Parameter, StateDictError
from .sync_batchnorm import RanksOutOfStepError, SyncBatchNorm

__all__ = ["Module", "Parameter", "IncompatibleKeys", "StateDictError", "Sequential", "ModuleList",
           "Identity", "BatchNorm1d", "BatchNorm2d", "BatchNorm3d", "SyncBatchNorm",
           "RanksOutOfStepError", "convert_sync_batchnorm", "revert_sync_batchnorm"]
