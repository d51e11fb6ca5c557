"""Make `syncnorm/data/digits.npz` from scikit-learn's copy of the UCI handwritten digits.

    python -m venv /tmp/skvenv && /tmp/skvenv/bin/pip install scikit-learn
    /tmp/skvenv/bin/python syncnorm/data/make_digits.py

Run it once, by hand, with any Python that has scikit-learn (which is NOT a dependency of syncnorm:
the result is committed, and syncnorm only reads it with `np.load(..., allow_pickle=False)`).

The file holds (all arrays, no pickle):
- `images`: uint8 (1797, 8, 8), pixel counts 0..16 (each pixel counts the ink in a 4x4 block of a
  32x32 bitmap);
- `labels`: uint8 (1797,), the digit 0..9;
- `train_index`, `test_index`: int64, a fixed stratified split (20 % of each class for testing,
  drawn with numpy's PCG64 seeded with SPLIT_SEED, then sorted), so the split does not depend on
  the numpy version that later reads the file;
- `sha256_source`: uint8 (32,), SHA-256 of the images+labels bytes, checked by the loader.
"""
from __future__ import annotations

import hashlib
import sys
from pathlib import Path

import numpy as np

SPLIT_SEED = 20240531
TEST_FRACTION = 0.2
OUT = Path(__file__).resolve().parent / "digits.npz"


def stratified_split(labels: np.ndarray, seed: int, test_fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """Per class, a seeded random `test_fraction` of the indices (rounded) goes to the test set."""
    rng = np.random.default_rng(seed)
    test = []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        k = int(round(test_fraction * idx.size))
        test.append(rng.permutation(idx)[:k])
    test_index = np.sort(np.concatenate(test)).astype(np.int64)
    train_index = np.setdiff1d(np.arange(labels.size), test_index).astype(np.int64)
    return train_index, test_index


def content_digest(images: np.ndarray, labels: np.ndarray) -> np.ndarray:
    h = hashlib.sha256()
    h.update(np.ascontiguousarray(images, dtype=np.uint8).tobytes())
    h.update(np.ascontiguousarray(labels, dtype=np.uint8).tobytes())
    return np.frombuffer(h.digest(), dtype=np.uint8).copy()


def main() -> int:
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        print("scikit-learn is needed to make digits.npz (pip install scikit-learn into a throwaway "
              "environment); syncnorm itself does not need it", file=sys.stderr)
        return 1
    import sklearn
    bunch = load_digits()
    raw = np.asarray(bunch.images)
    if raw.shape != (1797, 8, 8) or raw.min() < 0 or raw.max() > 16 or np.any(raw != np.round(raw)):
        raise SystemExit(f"unexpected digits data: shape {raw.shape}, range {raw.min()}..{raw.max()}")
    images = raw.astype(np.uint8)
    labels = np.asarray(bunch.target).astype(np.uint8)
    train_index, test_index = stratified_split(labels, SPLIT_SEED, TEST_FRACTION)
    np.savez_compressed(OUT, images=images, labels=labels, train_index=train_index,
                        test_index=test_index, sha256_source=content_digest(images, labels))
    print(f"wrote {OUT} ({OUT.stat().st_size} bytes) from scikit-learn {sklearn.__version__}: "
          f"{len(labels)} images, {len(train_index)} train / {len(test_index)} test")
    return 0


if __name__ == "__main__":
    sys.exit(main())
