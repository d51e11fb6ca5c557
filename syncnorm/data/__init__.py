"""Data sets shipped with syncnorm (read without pickle).

`load_digits()` returns the UCI 8x8 handwritten digits (1,797 images, 10 classes) with their fixed
train/test split; see `syncnorm/data/README.md` for where the file comes from and how it was made.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .make_digits import content_digest

__all__ = ["Digits", "load_digits", "DIGITS_PATH"]

DIGITS_PATH = Path(__file__).resolve().parent / "digits.npz"


@dataclass(frozen=True)
class Digits:
    """The digits split into train and test arrays.

    `train_x`, `test_x`: (N, 1, 8, 8) of `dtype`, pixel counts 0..16 standardized with the TRAIN
    set's mean and standard deviation (one scalar each); `train_y`, `test_y`: int64 labels 0..9.
    """

    train_x: np.ndarray
    train_y: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray
    mean: float
    std: float

    @property
    def num_classes(self) -> int:
        return 10


def load_digits(dtype: np.dtype | type = np.float32, path: str | Path | None = None) -> Digits:
    """Read the shipped digits file (allow_pickle=False), check its digest, standardize, split."""
    path = Path(path) if path is not None else DIGITS_PATH
    with np.load(path, allow_pickle=False) as z:
        images, labels = z["images"], z["labels"]
        train_index, test_index = z["train_index"], z["test_index"]
        digest = z["sha256_source"]
    if images.shape != (1797, 8, 8) or labels.shape != (1797,):
        raise ValueError(f"{path}: expected images (1797, 8, 8) and labels (1797,), got "
                         f"{images.shape} and {labels.shape}")
    if not np.array_equal(content_digest(images, labels), digest):
        raise ValueError(f"{path}: the images/labels do not match their SHA-256 (file damaged)")
    both = np.concatenate([train_index, test_index])
    if both.size != labels.size or not np.array_equal(np.sort(both), np.arange(labels.size)):
        raise ValueError(f"{path}: train_index and test_index must partition 0..{labels.size - 1}")
    x = images.astype(np.float64)[:, None]
    mean = float(x[train_index].mean())
    std = float(x[train_index].std())
    x = ((x - mean) / std).astype(dtype)
    y = labels.astype(np.int64)
    return Digits(x[train_index], y[train_index], x[test_index], y[test_index], mean, std)
