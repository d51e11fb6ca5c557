"""The shipped UCI digits: contents, split, digest check, no pickle."""
import shutil

import numpy as np
import pytest

from syncnorm.data import DIGITS_PATH, load_digits


def test_digits_shapes_split_and_standardization():
    d = load_digits()
    assert d.train_x.shape == (1438, 1, 8, 8) and d.test_x.shape == (359, 1, 8, 8)
    assert d.train_x.dtype == np.float32 and d.train_y.dtype == np.int64
    assert abs(float(d.train_x.mean())) < 1e-4 and abs(float(d.train_x.std()) - 1) < 1e-4
    # stratified: every digit is about 20 % of the test set's share
    counts = np.bincount(d.test_y, minlength=10)
    assert counts.min() >= 35 and counts.max() <= 37
    assert np.array_equal(np.bincount(np.concatenate([d.train_y, d.test_y])),
                          [178, 182, 177, 183, 181, 182, 181, 179, 174, 180])
    assert load_digits(np.float64).test_x.dtype == np.float64


def test_file_holds_no_pickle_and_split_is_disjoint():
    with np.load(DIGITS_PATH, allow_pickle=False) as z:
        assert set(z.files) == {"images", "labels", "train_index", "test_index", "sha256_source"}
        assert z["images"].dtype == np.uint8 and z["images"].max() == 16
        assert not set(z["train_index"]) & set(z["test_index"])


def test_a_damaged_copy_is_refused(tmp_path):
    bad = tmp_path / "digits.npz"
    shutil.copy(DIGITS_PATH, bad)
    with np.load(bad, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    arrays["labels"] = arrays["labels"].copy()
    arrays["labels"][0] = (arrays["labels"][0] + 1) % 10
    np.savez_compressed(bad, **arrays)
    with pytest.raises(ValueError, match="SHA-256"):
        load_digits(path=bad)
