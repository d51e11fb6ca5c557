"""convert_sync_batchnorm / revert_sync_batchnorm on nested models (single process)."""
import warnings

import numpy as np
import pytest

from syncnorm import nn


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.bn = nn.BatchNorm2d(3)
        self.branch = nn.ModuleList([nn.BatchNorm2d(3, affine=False), nn.Identity()])

    def forward(self, x):
        return self.branch[0](self.bn(x))

    def backward(self, g):
        return self.bn.backward(self.branch[0].backward(g))


def model():
    m = nn.Sequential(nn.BatchNorm1d(4), nn.Sequential(nn.BatchNorm3d(2, momentum=None)), Block())
    m[2].bn.custom_note = "kept"
    m[2].bn.weight.requires_grad = False
    m[2].eval()
    return m


def test_convert_then_revert_is_the_identity():
    m = model()
    params = {n: p for n, p in m.named_parameters()}
    bufs = {n: b for n, b in m.named_buffers()}
    classes = {n: type(x) for n, x in m.named_modules()}
    sd = m.state_dict()
    c = nn.convert_sync_batchnorm(m)
    assert c is m
    syncs = [n for n, x in c.named_modules() if isinstance(x, nn.SyncBatchNorm)]
    assert syncs == ["0", "1.0", "2.bn", "2.branch.0"]
    # same Parameter objects and buffer arrays, training flags, extra attributes
    assert all(p is params[n] for n, p in c.named_parameters())
    assert all(b is bufs[n] for n, b in c.named_buffers())
    assert c[2].bn.custom_note == "kept" and c[2].bn.training is False and c[0].training
    assert c[2].bn.weight.requires_grad is False
    # the original class's input-dimension check keeps working
    with pytest.raises(ValueError, match="expected 4D input"):
        c[2].bn(np.zeros((2, 3, 4), np.float32))
    with pytest.raises(ValueError, match="expected 2D or 3D input"):
        c[0](np.zeros((2, 4, 1, 1), np.float32))
    r = nn.revert_sync_batchnorm(c)
    assert {n: type(x) for n, x in r.named_modules()} == classes
    assert all(p is params[n] for n, p in r.named_parameters())
    rsd = r.state_dict()
    assert list(rsd) == list(sd) and all(np.array_equal(rsd[k], sd[k]) for k in sd)
    assert r[2].bn.custom_note == "kept"
    assert not any(k.startswith("_sync") or k in nn.SyncBatchNorm._SYNC_ATTRS
                   for x in r.modules() for k in vars(x))


def test_converted_model_trains_like_the_original_in_one_process():
    rng = np.random.default_rng(0)
    a, b = model(), nn.convert_sync_batchnorm(model())
    for _ in range(3):
        x = rng.normal(size=(5, 4)).astype(np.float32)
        np.testing.assert_array_equal(a[0](x), b[0](x))
        np.testing.assert_array_equal(a[0].backward(x), b[0].backward(x))


def test_root_batchnorm_is_replaced_and_restored():
    bn = nn.BatchNorm2d(3)
    s = nn.SyncBatchNorm.convert_sync_batchnorm(bn)
    assert isinstance(s, nn.SyncBatchNorm) and s.weight is bn.weight
    back = nn.revert_sync_batchnorm(s)
    assert type(back) is nn.BatchNorm2d and back.weight is bn.weight


def test_unknown_subclass_warns_and_reverts_exactly():
    class BatchNormAct2d(nn.BatchNorm2d):
        def forward(self, x):
            return np.maximum(super().forward(x), 0)

    m = nn.Sequential(BatchNormAct2d(2))
    with pytest.warns(UserWarning, match=r"BatchNormAct2d is a BatchNorm subclass .* \(forward\) will not run"):
        nn.convert_sync_batchnorm(m)
    assert isinstance(m[0], nn.SyncBatchNorm)
    assert type(nn.revert_sync_batchnorm(m)[0]) is BatchNormAct2d
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        nn.convert_sync_batchnorm(nn.Sequential(nn.BatchNorm2d(2)))  # known classes: no warning


def test_direct_syncbatchnorm_reverts_to_any_dim_batchnorm():
    s = nn.SyncBatchNorm(2)
    r = nn.revert_sync_batchnorm(s)
    assert not isinstance(r, nn.SyncBatchNorm)
    r(np.ones((3, 2, 2, 2, 2), np.float32))
    with pytest.raises(ValueError, match="expected at least 2D input"):
        r(np.ones(3, np.float32))
