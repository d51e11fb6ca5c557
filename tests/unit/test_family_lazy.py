"""Lazy BatchNorm/InstanceNorm: materialization, becoming the concrete class, state dicts while
uninitialized, and convert/revert of uninitialized and initialized lazy BatchNorms (one process:
the default world group is a group of size 1)."""
from __future__ import annotations

import numpy as np
import pytest

from syncnorm import nn
from syncnorm.nn.lazy import LazySyncBatchNorm, UninitializedBuffer, UninitializedParameter, is_lazy

LAZY_BN = [(nn.LazyBatchNorm1d, nn.BatchNorm1d, (4, 3, 5)), (nn.LazyBatchNorm2d, nn.BatchNorm2d,
                                                             (2, 3, 4, 4)),
           (nn.LazyBatchNorm3d, nn.BatchNorm3d, (2, 3, 2, 2, 2))]
LAZY_IN = [(nn.LazyInstanceNorm1d, nn.InstanceNorm1d, (2, 3, 5)),
           (nn.LazyInstanceNorm2d, nn.InstanceNorm2d, (2, 3, 4, 4)),
           (nn.LazyInstanceNorm3d, nn.InstanceNorm3d, (2, 3, 2, 2, 3))]


def _x(shape, seed=0, dtype=np.float32):
    return np.random.default_rng(seed).normal(1.0, 2.0, shape).astype(dtype)


@pytest.mark.parametrize("lazy_cls,concrete,shape", LAZY_BN + LAZY_IN,
                         ids=[c[0].__name__ for c in LAZY_BN + LAZY_IN])
def test_materializes_and_becomes_the_concrete_class(lazy_cls, concrete, shape):
    m = lazy_cls()
    assert m.num_features == 0 and m.has_uninitialized_params()
    assert isinstance(m.weight, UninitializedParameter) and repr(m.weight) == "<UninitializedParameter>"
    assert isinstance(m.running_mean, UninitializedBuffer)
    assert repr(m.running_var) == "<UninitializedBuffer>"
    w = m.weight
    x = _x(shape)
    y = m(x)
    assert type(m) is concrete and m.num_features == 3
    assert m.weight is w and type(w) is nn.Parameter  # materialized in place
    np.testing.assert_array_equal(m.weight.data, np.ones(3, np.float32))
    np.testing.assert_array_equal(m.bias.data, np.zeros(3, np.float32))
    assert m.running_mean.shape == (3,) and int(m.num_batches_tracked) == 1
    # the same as the concrete class built with num_features from the start
    ref = concrete(3, affine=True, track_running_stats=True)
    np.testing.assert_array_equal(y, ref(x))
    np.testing.assert_array_equal(m.running_var, ref.running_var)
    dy = _x(shape, 1)
    np.testing.assert_array_equal(m.backward(dy), ref.backward(dy))
    np.testing.assert_array_equal(m.weight.grad, ref.weight.grad)
    assert list(m.state_dict()) == list(ref.state_dict())


def test_reprs_like_torch():
    assert repr(nn.LazyInstanceNorm2d()) == ("LazyInstanceNorm2d(0, eps=1e-05, momentum=0.1, "
                                             "affine=True, bias=True, track_running_stats=True)")
    assert repr(nn.LazyBatchNorm1d(momentum=None)).startswith("LazyBatchNorm1d(0, eps=1e-05, "
                                                              "momentum=None, affine=True")


def test_bad_input_does_not_materialize():
    m = nn.LazyBatchNorm2d()
    with pytest.raises(ValueError, match="expected 4D input"):
        m(np.zeros((2, 3, 4), np.float32))
    with pytest.raises(TypeError, match="floating-point"):
        m(np.zeros((2, 3, 4, 4), np.int32))
    with pytest.raises(ValueError, match="0 channels"):
        m(np.zeros((2, 0, 4, 4), np.float32))
    assert type(m) is nn.LazyBatchNorm2d and m.has_uninitialized_params()


def test_lazy_instance_norm_unbatched_takes_channels_from_dim0():
    m = nn.LazyInstanceNorm2d()
    m(_x((3, 5, 6)))  # torch would take 5 (input.shape[1]) and then fail
    assert type(m) is nn.InstanceNorm2d and m.num_features == 3 and m.weight.shape == (3,)


def test_lazy_without_parameters_still_learns_num_features():
    m = nn.LazyInstanceNorm1d(affine=False, track_running_stats=False)
    assert not m.has_uninitialized_params()
    assert m.state_dict() == {}  # nothing to save: allowed
    m(_x((2, 4, 6)))
    assert type(m) is nn.InstanceNorm1d and m.num_features == 4
    with pytest.warns(UserWarning, match="does not match num_features"):
        m(_x((2, 5, 6)))


def test_initialize_parameters_without_forward():
    m = nn.LazyBatchNorm1d()
    m.initialize_parameters(_x((4, 6)))
    assert type(m) is nn.BatchNorm1d and m.num_features == 6 and int(m.num_batches_tracked) == 0


def test_dtype_of_materialized_state():
    m = nn.LazyBatchNorm2d(dtype=np.float64)
    m(_x((2, 3, 2, 2), dtype=np.float16))
    assert m.weight.dtype == np.float64 and m.running_mean.dtype == np.float64


# --------------------------------------------------------------------------- state dicts
def test_state_dict_of_uninitialized_module_refuses_with_a_reason():
    model = nn.Sequential(nn.BatchNorm2d(3), nn.LazyBatchNorm2d())
    with pytest.raises(RuntimeError, match=r"LazyBatchNorm2d is not initialized: weight, bias, "
                                           r"running_mean, running_var .*Run a forward pass"):
        model.state_dict()
    model(_x((2, 3, 2, 2)))
    assert list(model.state_dict()) == [f"{i}.{k}" for i in (0, 1) for k in
                                        ("weight", "bias", "running_mean", "running_var",
                                         "num_batches_tracked")]


def test_load_into_uninitialized_materializes_with_the_checkpoint_size():
    src = nn.BatchNorm2d(5)
    src(_x((4, 5, 3, 3)))
    src.weight.data[...] = np.arange(5)
    model = nn.Sequential(nn.LazyBatchNorm2d())
    w = model[0].weight
    model.load_state_dict(nn.Sequential(src).state_dict())
    m = model[0]
    assert type(m) is nn.BatchNorm2d and m.num_features == 5 and m.weight is w
    for k, v in src.state_dict().items():
        np.testing.assert_array_equal(m.state_dict()[k], v)
    m.eval()
    x = _x((2, 5, 3, 3), 3)
    np.testing.assert_array_equal(m(x), src.eval()(x))


def test_refused_load_leaves_the_lazy_module_uninitialized():
    sd = nn.BatchNorm1d(4).state_dict()
    sd["running_var"] = np.ones(3, np.float32)  # inconsistent sizes
    m = nn.LazyBatchNorm1d()
    w = m.weight
    with pytest.raises(nn.StateDictError, match="size mismatch for running_var"):
        m.load_state_dict(sd)
    assert type(m) is nn.LazyBatchNorm1d and m.num_features == 0 and m.has_uninitialized_params()
    assert m.weight is w and isinstance(w, UninitializedParameter) and w.data.shape == (0,)
    # a refused load elsewhere in the tree undoes the materialization too
    model = nn.Sequential(nn.LazyBatchNorm1d(), nn.BatchNorm1d(2))
    good = nn.Sequential(nn.BatchNorm1d(4), nn.BatchNorm1d(2)).state_dict()
    good["1.bias"] = np.zeros(7, np.float32)
    with pytest.raises(nn.StateDictError):
        model.load_state_dict(good)
    assert type(model[0]) is nn.LazyBatchNorm1d and is_lazy(model[0].running_mean)


def test_missing_entries_strict_and_non_strict():
    m = nn.LazyInstanceNorm2d()
    with pytest.raises(nn.StateDictError, match='Missing key.*"weight", "bias", "running_mean", '
                                                '"running_var"'):
        m.load_state_dict({"num_batches_tracked": np.array(0)})
    res = m.load_state_dict({}, strict=False)
    assert set(res.missing_keys) == {"weight", "bias", "running_mean", "running_var"}
    assert type(m) is nn.LazyInstanceNorm2d and m.has_uninitialized_params()


def test_load_into_lazy_instance_norm():
    src = nn.InstanceNorm2d(3, affine=True, track_running_stats=True)
    src(_x((2, 3, 4, 4)))
    m = nn.LazyInstanceNorm2d()
    m.load_state_dict(src.state_dict())
    assert type(m) is nn.InstanceNorm2d and m.num_features == 3
    np.testing.assert_array_equal(m.running_mean, src.running_mean)


# --------------------------------------------------------------------------- convert / revert
def test_convert_uninitialized_lazy_materializes_on_first_forward_and_reverts_concrete():
    model = nn.Sequential(nn.LazyBatchNorm2d(momentum=0.3), nn.BatchNorm2d(3))
    w = model[0].weight
    c = nn.convert_sync_batchnorm(model)
    s = c[0]
    assert type(s) is LazySyncBatchNorm and isinstance(s, nn.SyncBatchNorm)
    assert s.has_uninitialized_params() and s.num_features == 0
    with pytest.raises(RuntimeError, match="not initialized"):
        c.state_dict()
    with pytest.raises(ValueError, match="expected 4D input"):  # the lazy class's check
        s(np.zeros((2, 3, 4), np.float32))
    x = _x((4, 3, 2, 2))
    y = c(x)
    assert type(s) is nn.SyncBatchNorm and s.num_features == 3 and s.weight is w
    assert s._original_class is nn.BatchNorm2d and s.momentum == 0.3
    ref = nn.Sequential(nn.BatchNorm2d(3, momentum=0.3), nn.BatchNorm2d(3))
    np.testing.assert_allclose(y, ref(x), atol=1e-6)
    dy = _x(x.shape, 5)
    np.testing.assert_allclose(c.backward(dy), ref.backward(dy), atol=1e-5)
    r = nn.revert_sync_batchnorm(c)
    assert [type(m) for m in r] == [nn.BatchNorm2d, nn.BatchNorm2d]
    assert r[0].weight is w
    np.testing.assert_allclose(r[0].running_mean, ref[0].running_mean, atol=1e-7)


def test_convert_then_revert_uninitialized_gives_back_the_lazy_module():
    model = nn.Sequential(nn.LazyBatchNorm1d(eps=1e-3))
    model[0].note = "kept"
    w = model[0].weight
    r = nn.revert_sync_batchnorm(nn.convert_sync_batchnorm(model))
    m = r[0]
    assert type(m) is nn.LazyBatchNorm1d and m.has_uninitialized_params() and m.weight is w
    assert m.note == "kept" and m.eps == 1e-3
    assert not any(k.startswith("_sync") or k in nn.SyncBatchNorm._SYNC_ATTRS for k in vars(m))
    m(_x((5, 4)))  # still works as a lazy module
    assert type(m) is nn.BatchNorm1d and m.num_features == 4


def test_convert_initialized_lazy_is_an_ordinary_batchnorm():
    m = nn.LazyBatchNorm3d()
    m(_x((2, 3, 2, 2, 2)))
    c = nn.convert_sync_batchnorm(m)
    assert type(c) is nn.SyncBatchNorm and c._original_class is nn.BatchNorm3d
    assert type(nn.revert_sync_batchnorm(c)) is nn.BatchNorm3d


def test_load_into_converted_uninitialized_lazy():
    src = nn.BatchNorm2d(4)
    src(_x((3, 4, 2, 2)))
    c = nn.convert_sync_batchnorm(nn.LazyBatchNorm2d())
    c.load_state_dict(src.state_dict())
    assert type(c) is nn.SyncBatchNorm and c.num_features == 4
    assert c._original_class is nn.BatchNorm2d
    assert type(nn.revert_sync_batchnorm(c)) is nn.BatchNorm2d
    bad = src.state_dict()
    bad["bias"] = np.zeros(2, np.float32)
    c2 = nn.convert_sync_batchnorm(nn.LazyBatchNorm2d())
    with pytest.raises(nn.StateDictError):
        c2.load_state_dict(bad)
    assert type(c2) is LazySyncBatchNorm and c2._original_class is nn.LazyBatchNorm2d
