"""Parameter initialisation as torch.nn.init does it, drawing from a numpy Generator.

The distributions (and so the scales) are torch's; the random numbers are numpy's, so a model built
here with a seed is not bitwise the one torch builds with the same seed. Every function takes a
`generator`; without one it draws from this module's default generator (`manual_seed` reseeds it),
the way torch draws from its global generator.
"""
from __future__ import annotations

import math

import numpy as np

__all__ = ["manual_seed", "default_generator", "calculate_gain", "calculate_fan_in_and_fan_out",
           "uniform_", "zeros_", "ones_", "kaiming_uniform_", "default_reset_", "resolve_generator"]

_DEFAULT = np.random.default_rng()


def manual_seed(seed: int) -> np.random.Generator:
    """Reseed the default generator (used by layers built without `generator=`); returns it."""
    global _DEFAULT
    _DEFAULT = np.random.default_rng(seed)
    return _DEFAULT


def default_generator() -> np.random.Generator:
    """The generator layers draw from when built without `generator=` (see `manual_seed`)."""
    return _DEFAULT


def resolve_generator(generator: np.random.Generator | None) -> np.random.Generator:
    """`generator` itself, or the default generator for None; TypeError for anything that is not a
    numpy Generator.
    """
    if generator is None:
        return _DEFAULT
    if not isinstance(generator, np.random.Generator):
        raise TypeError(f"generator must be a numpy.random.Generator or None, got "
                        f"{type(generator).__name__}")
    return generator


def calculate_gain(nonlinearity: str, param: float | None = None) -> float:
    """torch.nn.init.calculate_gain."""
    linear = ("linear", "conv1d", "conv2d", "conv3d", "conv_transpose1d", "conv_transpose2d",
              "conv_transpose3d", "sigmoid")
    if nonlinearity in linear:
        return 1.0
    if nonlinearity == "tanh":
        return 5.0 / 3
    if nonlinearity == "relu":
        return math.sqrt(2.0)
    if nonlinearity == "leaky_relu":
        slope = 0.01 if param is None else param
        if isinstance(slope, bool) or not isinstance(slope, (int, float)):
            raise ValueError(f"negative_slope {slope} not a valid number")
        return math.sqrt(2.0 / (1 + slope ** 2))
    if nonlinearity == "selu":
        return 3.0 / 4
    raise ValueError(f"Unsupported nonlinearity {nonlinearity}")


def calculate_fan_in_and_fan_out(shape: tuple[int, ...]) -> tuple[int, int]:
    """fan_in = shape[1] * receptive field, fan_out = shape[0] * receptive field (torch's rule)."""
    if len(shape) < 2:
        raise ValueError("Fan in and fan out can not be computed for tensor with fewer than 2 dimensions "
                         f"(got shape {tuple(shape)})")
    receptive = 1
    for s in shape[2:]:
        receptive *= s
    return shape[1] * receptive, shape[0] * receptive


def uniform_(array: np.ndarray, a: float = 0.0, b: float = 1.0,
             generator: np.random.Generator | None = None) -> np.ndarray:
    """Fill `array` in place with U(a, b) drawn in float64 and cast to its dtype."""
    array[...] = resolve_generator(generator).uniform(a, b, size=array.shape)
    return array


def zeros_(array: np.ndarray) -> np.ndarray:
    """Fill `array` with 0 in place; returns it."""
    array[...] = 0
    return array


def ones_(array: np.ndarray) -> np.ndarray:
    """Fill `array` with 1 in place; returns it."""
    array[...] = 1
    return array


def kaiming_uniform_(array: np.ndarray, a: float = 0.0, mode: str = "fan_in",
                     nonlinearity: str = "leaky_relu",
                     generator: np.random.Generator | None = None) -> np.ndarray:
    """U(-bound, bound) with bound = gain * sqrt(3 / fan), as torch.nn.init.kaiming_uniform_."""
    if mode not in ("fan_in", "fan_out"):
        raise ValueError(f"Mode {mode} not supported, please use one of fan_in, fan_out")
    if 0 in array.shape:
        return array
    fan_in, fan_out = calculate_fan_in_and_fan_out(array.shape)
    fan = fan_in if mode == "fan_in" else fan_out
    bound = calculate_gain(nonlinearity, a) * math.sqrt(3.0 / fan)
    return uniform_(array, -bound, bound, generator)


def default_reset_(weight: np.ndarray, bias: np.ndarray | None,
                   generator: np.random.Generator | None = None) -> None:
    """torch's default initialisation of Linear and Conv layers: weight kaiming-uniform with
    a = sqrt(5), bias uniform in +-1/sqrt(fan_in) (zeros when fan_in is 0, where torch would leave
    Conv's bias uninitialized)."""
    kaiming_uniform_(weight, a=math.sqrt(5), generator=generator)
    if bias is not None:
        fan_in, _ = calculate_fan_in_and_fan_out(weight.shape)
        bound = 1 / math.sqrt(fan_in) if fan_in > 0 else 0.0
        uniform_(bias, -bound, bound, generator)
