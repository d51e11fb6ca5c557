"""`Flatten`, as torch.nn.Flatten: merges dims start_dim..end_dim into one."""
from __future__ import annotations

import numpy as np

from ._util import check_grad_shape, no_forward
from .module import Module

__all__ = ["Flatten"]


class Flatten(Module):
    """(N, C, H, W) -> (N, C*H*W) with the defaults start_dim=1, end_dim=-1; a view when possible."""

    def __init__(self, start_dim: int = 1, end_dim: int = -1) -> None:
        super().__init__()
        self.start_dim = int(start_dim)
        self.end_dim = int(end_dim)
        self._shape: tuple[int, ...] | None = None

    def forward(self, x: np.ndarray) -> np.ndarray:
        """Merge dimensions start_dim..end_dim into one (a view when possible). Raises IndexError
        for dimensions out of range and RuntimeError when start_dim comes after end_dim.
        """
        x = np.asarray(x)
        nd = max(x.ndim, 1)
        s = self.start_dim + nd if self.start_dim < 0 else self.start_dim
        e = self.end_dim + nd if self.end_dim < 0 else self.end_dim
        if not (0 <= s < nd and 0 <= e < nd):
            raise IndexError(f"Flatten: dimension out of range (start_dim={self.start_dim}, "
                             f"end_dim={self.end_dim}) for input of shape {tuple(x.shape)}")
        if s > e:
            raise RuntimeError("flatten() has invalid args: start_dim cannot come after end_dim "
                               f"(start_dim={self.start_dim}, end_dim={self.end_dim}, input of shape "
                               f"{tuple(x.shape)})")
        if x.ndim == 0:
            out = x.reshape(1)
        else:
            merged = int(np.prod(x.shape[s:e + 1], dtype=np.int64))
            out = x.reshape(x.shape[:s] + (merged,) + x.shape[e + 1:])
        self._shape = (x.shape, out.shape)
        return out

    def backward(self, grad_output: np.ndarray) -> np.ndarray:
        """grad_output reshaped to the forward input's shape."""
        if self._shape is None:
            raise no_forward("Flatten")
        (shape, out_shape), self._shape = self._shape, None
        dy = np.asarray(grad_output)
        if dy.size != int(np.prod(shape, dtype=np.int64)):
            check_grad_shape(dy, out_shape, "Flatten")  # says which shape was expected
        return dy.reshape(shape)

    def extra_repr(self) -> str:
        return f"start_dim={self.start_dim}, end_dim={self.end_dim}"
