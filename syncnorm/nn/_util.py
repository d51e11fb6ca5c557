"""Small input checks shared by the layers (clear errors that say what was expected and what came)."""
from __future__ import annotations

from typing import Any

import numpy as np

from .batchnorm import FLOAT_DTYPES, check_float_input

__all__ = ["check_float_input", "check_param_dtype", "check_ndim", "param_dtype", "check_device"]


def param_dtype(dtype: Any) -> np.dtype:
    """The dtype for a layer's parameters: float32 by default (torch's default), float16/32/64."""
    dt = np.dtype(np.float32 if dtype is None else dtype)
    if dt not in FLOAT_DTYPES:
        raise TypeError(f"dtype must be float16, float32 or float64, got {dt}")
    return dt


def check_device(device: Any) -> None:
    if device not in (None, "cpu"):
        raise ValueError(f"syncnorm runs on the CPU; got device={device!r}")


def check_param_dtype(x: np.ndarray, dtype: np.dtype, who: str) -> None:
    """torch refuses mixed dtypes in a layer; so do we, naming both."""
    if x.dtype != dtype:
        raise TypeError(f"{who}: input dtype {x.dtype} does not match the layer's parameter dtype "
                        f"{dtype}; cast the input (x.astype(np.{dtype})) or build the layer with "
                        f"dtype={x.dtype}")


def check_ndim(x: np.ndarray, allowed: tuple[int, ...], who: str, shape_hint: str) -> None:
    if x.ndim not in allowed:
        raise ValueError(f"{who}: expected {' or '.join(f'{n}D' for n in allowed)} input {shape_hint}, "
                         f"got {x.ndim}D input of shape {tuple(x.shape)}")


def no_forward(who: str) -> RuntimeError:
    return RuntimeError(f"{who}.backward() called without a forward() before it (or twice for one "
                        "forward)")


def check_grad_shape(dy: np.ndarray, shape: tuple[int, ...], who: str) -> np.ndarray:
    dy = check_float_input(dy, f"{who}.backward")
    if dy.shape != tuple(shape):
        raise ValueError(f"{who}.backward: expected grad_output of shape {tuple(shape)} (the forward "
                         f"output's), got {tuple(dy.shape)}")
    return dy
