"""Layers modelled on torch.nn: the module tree, BatchNorm, SyncBatchNorm, convert and revert."""
from . import init
from .activation import ReLU
from .batchnorm import BatchNorm1d, BatchNorm2d, BatchNorm3d
from .container import Identity, ModuleList, Sequential
from .conv import Conv2d
from .convert import convert_sync_batchnorm, revert_sync_batchnorm
from .dropout import Dropout, set_dropout_keys
from .flatten import Flatten
from .groupnorm import GroupNorm
from .instancenorm import InstanceNorm1d, InstanceNorm2d, InstanceNorm3d
from .layernorm import LayerNorm
from .lazy import (LazyBatchNorm1d, LazyBatchNorm2d, LazyBatchNorm3d, LazyInstanceNorm1d,
                   LazyInstanceNorm2d, LazyInstanceNorm3d)
from .linear import Linear
from .loss import CrossEntropyLoss
from .lrn import LocalResponseNorm
from .module import IncompatibleKeys, Module, Parameter, StateDictError
from .pooling import AdaptiveAvgPool2d, AvgPool2d, MaxPool2d
from .sync_batchnorm import RanksOutOfStepError, SyncBatchNorm

__all__ = ["Module", "Parameter", "IncompatibleKeys", "StateDictError", "Sequential", "ModuleList",
           "Identity", "BatchNorm1d", "BatchNorm2d", "BatchNorm3d", "SyncBatchNorm",
           "RanksOutOfStepError", "convert_sync_batchnorm", "revert_sync_batchnorm",
           "Linear", "Conv2d", "ReLU", "MaxPool2d", "AvgPool2d", "AdaptiveAvgPool2d", "Flatten",
           "Dropout", "set_dropout_keys", "CrossEntropyLoss", "init",
           "InstanceNorm1d", "InstanceNorm2d", "InstanceNorm3d", "GroupNorm", "LayerNorm",
           "LocalResponseNorm", "LazyBatchNorm1d", "LazyBatchNorm2d", "LazyBatchNorm3d",
           "LazyInstanceNorm1d", "LazyInstanceNorm2d", "LazyInstanceNorm3d"]
