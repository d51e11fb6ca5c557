"""Small helpers shared by the layers: input checks (clear errors that say what was expected and
what came) and the registration, reset and gradient accumulation of weight and bias."""
from __future__ import annotations

from typing import Any

import numpy as np

from .module import Module, Parameter

__all__ = ["FLOAT_DTYPES", "check_float_input", "check_param_dtype", "check_ndim", "param_dtype",
           "check_device", "check_eps", "affine_parameters", "reset_affine", "accumulate_affine",
           "weight_and_bias"]

FLOAT_DTYPES = (np.dtype(np.float16), np.dtype(np.float32), np.dtype(np.float64))


def check_float_input(x: Any, who: str) -> np.ndarray:
    """Return `x` as an ndarray of a floating dtype, or raise a TypeError naming what came."""
    if not isinstance(x, np.ndarray):
        if hasattr(x, "__array__") or isinstance(x, (list, tuple)):
            x = np.asarray(x)
        else:
            raise TypeError(f"{who}: expected a numpy array, got {type(x).__name__}")
    if x.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{who}: expected a floating-point input (float16, float32 or float64), "
                        f"got dtype {x.dtype}")
    return x


def check_eps(eps: float) -> float:
    if float(eps) < 0:
        raise ValueError(f"eps must be >= 0, got {eps}")
    return float(eps)


def affine_parameters(module: Module, shape: tuple[int, ...], dtype: np.dtype, affine: bool,
                      bias: bool) -> None:
    """Register `weight` (ones) and `bias` (zeros) of `shape` on `module`, or None for each that
    is off: no affine at all, or torch 2.13's keyword-only bias=False (no additive bias learned)."""
    if affine:
        module.weight = Parameter(np.ones(shape, dtype))
        if bias:
            module.bias = Parameter(np.zeros(shape, dtype))
        else:
            module.register_parameter("bias", None)
    else:
        module.register_parameter("weight", None)
        module.register_parameter("bias", None)


def weight_and_bias(module: Module, weight_shape: tuple[int, ...], dtype: np.dtype,
                    bias: bool) -> None:
    """Register `weight` of `weight_shape` and `bias` of (weight_shape[0],), or None for bias=False,
    uninitialized: the layer's reset_parameters draws them (Linear, Conv2d)."""
    module.weight = Parameter(np.empty(weight_shape, dtype))
    if bias:
        module.bias = Parameter(np.empty(weight_shape[0], dtype))
    else:
        module.register_parameter("bias", None)


def accumulate_affine(module: Module, dweight: np.ndarray, dbias: np.ndarray) -> None:
    """Add the gradients into weight.grad and bias.grad, for those that exist."""
    if module.weight is not None:
        module.weight.accumulate_grad(dweight)
    if module.bias is not None:
        module.bias.accumulate_grad(dbias)


def reset_affine(module: Module) -> None:
    """weight to ones and bias to zeros, for those that exist."""
    if module.weight is not None:
        module.weight.data[...] = 1
    if module.bias is not None:
        module.bias.data[...] = 0


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


def check_grad_shape(dy: np.ndarray, shape: tuple[int, ...], who: str,
                     of: str = "output") -> np.ndarray:
    """grad_output as a float array of `shape` (the forward `of` "output" or "input" shape)."""
    dy = check_float_input(dy, f"{who}.backward")
    if dy.shape != tuple(shape):
        raise ValueError(f"{who}.backward: expected grad_output of shape {tuple(shape)} (the forward "
                         f"{of}'s), got {tuple(dy.shape)}")
    return dy
