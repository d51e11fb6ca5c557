"""Small models built from syncnorm.nn, with torch's layer names so torch state dicts load."""
from __future__ import annotations

from typing import Any

import numpy as np

from .. import nn

__all__ = ["digits_cnn"]


def digits_cnn(width: int = 16, num_classes: int = 10, dropout: float = 0.1, in_channels: int = 1,
               dtype: Any = np.float32, generator: np.random.Generator | None = None) -> nn.Sequential:
    """The demo CNN for 8x8 digit images (N, 1, 8, 8) -> logits (N, num_classes).

    conv3x3(w)-BN-ReLU, conv3x3(2w)-BN-ReLU, maxpool 2 (8x8 -> 4x4), conv3x3(2w)-BN-ReLU,
    global average pool, flatten, dropout, linear. The convolutions have no bias (BatchNorm follows).
    The same `torch.nn.Sequential` (same layer order) has the same state_dict keys and shapes.
    """
    g = generator
    w1, w2 = int(width), 2 * int(width)
    return nn.Sequential(
        nn.Conv2d(in_channels, w1, 3, padding=1, bias=False, dtype=dtype, generator=g),
        nn.BatchNorm2d(w1, dtype=dtype),
        nn.ReLU(),
        nn.Conv2d(w1, w2, 3, padding=1, bias=False, dtype=dtype, generator=g),
        nn.BatchNorm2d(w2, dtype=dtype),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(w2, w2, 3, padding=1, bias=False, dtype=dtype, generator=g),
        nn.BatchNorm2d(w2, dtype=dtype),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Dropout(dropout),
        nn.Linear(w2, num_classes, dtype=dtype, generator=g),
    )
