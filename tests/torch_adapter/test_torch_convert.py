"""convert_sync_batchnorm / revert_sync_batchnorm of syncnorm.torch on a torchvision-style model with
a residual branch, a lazy BatchNorm, torch's own SyncBatchNorm and a custom BatchNorm subclass."""
from __future__ import annotations

import copy

import pytest

torch = pytest.importorskip("torch", reason="syncnorm.torch needs PyTorch (pip install 'syncnorm[torch]')")
from torch import nn  # noqa: E402

from syncnorm.torch import (LazySyncBatchNorm, SyncBatchNorm, convert_sync_batchnorm,  # noqa: E402
                            revert_sync_batchnorm)


class BatchNormAct2d(nn.BatchNorm2d):
    """BatchNorm with its activation inside (what torch's converter silently breaks); timm's own
    shape, calling F.batch_norm, is in torch_adapter/test_torch_citizen.py."""

    def __init__(self, c):
        super().__init__(c)
        self.act = nn.ReLU()

    def forward(self, x):
        return self.act(super().forward(x))


class BasicBlock(nn.Module):
    """torchvision's ResNet BasicBlock: two 3x3 convs with BN, a downsampling shortcut."""

    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.downsample(x))


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, 1, 1, bias=False), nn.BatchNorm2d(8), nn.ReLU())
        self.layer1 = BasicBlock(8, 16, 2)
        self.lazy = nn.LazyBatchNorm2d()
        self.act_bn = BatchNormAct2d(16)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(16, 10), nn.BatchNorm1d(10))

    def forward(self, x):
        return self.head(self.pool(self.act_bn(self.lazy(self.layer1(self.stem(x))))))


BN_PATHS = ["stem.1", "layer1.bn1", "layer1.bn2", "layer1.downsample.1", "lazy", "act_bn", "head.2"]


def named(model):
    return dict(model.named_modules())


def test_round_trip_keeps_state_hooks_attributes_and_classes():
    torch.manual_seed(0)
    model = Net()
    mods = named(model)
    classes = {p: type(mods[p]) for p in BN_PATHS}
    params = {n: p for n, p in model.named_parameters()}
    buffers = {n: b for n, b in model.named_buffers()}
    bn = mods["layer1.bn1"]
    bn.qconfig = "a qconfig"
    bn.my_note = {"kept": True}
    mods["layer1.bn2"].eval()  # a per-module training flag
    fired = []
    bn.register_forward_pre_hook(lambda m, args: fired.append(("pre", type(m).__name__)))
    handle = bn.register_forward_hook(lambda m, args, out: fired.append(("post", type(m).__name__)))

    conv = convert_sync_batchnorm(model)
    cm = named(conv)
    for p in BN_PATHS:
        want = LazySyncBatchNorm if p == "lazy" else SyncBatchNorm
        if p == "act_bn":  # a class made from the subclass and SyncBatchNorm: it keeps its forward
            assert type(cm[p]).__name__ == "SyncBatchNormAct2d" and isinstance(cm[p], BatchNormAct2d)
            want = type(cm[p])
        assert type(cm[p]) is want and isinstance(cm[p], SyncBatchNorm), p
        assert cm[p]._original_class is classes[p]
    assert named(conv)["lazy"].has_uninitialized_params()  # not a 0-feature SyncBatchNorm
    for n, p in conv.named_parameters():
        assert p is params[n], n  # the same Parameter objects (optimizers keep working)
    for n, b in conv.named_buffers():
        assert b is buffers[n], n
    sbn = cm["layer1.bn1"]
    assert sbn.qconfig == "a qconfig" and sbn.my_note == {"kept": True}
    assert cm["layer1.bn2"].training is False and cm["layer1.bn1"].training is True

    x = torch.randn(4, 3, 8, 8)
    out = conv(x)
    assert out.shape == (4, 10)
    assert fired == [("pre", "SyncBatchNorm"), ("post", "SyncBatchNorm")]
    lazy = named(conv)["lazy"]
    assert type(lazy) is SyncBatchNorm and lazy.num_features == 16  # materialized on first forward
    assert lazy.weight.shape == (16,) and lazy.running_mean.shape == (16,)

    back = revert_sync_batchnorm(conv)
    bm = named(back)
    for p in BN_PATHS:
        want = nn.BatchNorm2d if p == "lazy" else classes[p]  # LazyBatchNorm2d would have become this
        assert type(bm[p]) is want, p
        assert not hasattr(bm[p], "_original_class") and not hasattr(bm[p], "_exchange")
    for n, p in back.named_parameters():
        if not n.startswith("lazy."):
            assert p is params[n], n
    assert bm["layer1.bn1"].qconfig == "a qconfig" and bm["layer1.bn2"].training is False
    fired.clear()
    y = back(x)
    assert fired == [("pre", "BatchNorm2d"), ("post", "BatchNorm2d")]
    handle.remove()  # the handle made before conversion still controls the hook
    fired.clear()
    back(x)
    assert fired == [("pre", "BatchNorm2d")]
    # the activation inside BatchNormAct2d runs again after the revert
    assert torch.all(bm["act_bn"](torch.randn(2, 16, 3, 3)) >= 0)
    assert y.shape == (4, 10)


def test_converted_model_computes_what_the_original_computes():
    """In one process (a group of size 1) the converted model is the original model, train and eval."""
    torch.manual_seed(1)
    model = Net().double()
    x = torch.randn(6, 3, 8, 8, dtype=torch.float64)
    model(x)  # materialize the lazy BatchNorm
    ref = copy.deepcopy(model)
    conv = convert_sync_batchnorm(model)  # act_bn keeps its activation: the same function
    for mode in ("train", "eval"):
        conv.train(mode == "train"), ref.train(mode == "train")
        xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
        ya, yb = conv(xa), ref(xb)
        torch.testing.assert_close(ya, yb, atol=1e-10, rtol=1e-10)
        ya.sum().backward()
        yb.sum().backward()
        torch.testing.assert_close(xa.grad, xb.grad, atol=1e-10, rtol=1e-10)
    for (n, a), (_, b) in zip(conv.named_buffers(), ref.named_buffers()):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=1e-12, msg=n)


def test_lazy_batchnorm_reverted_before_its_first_forward_stays_lazy():
    model = nn.Sequential(nn.Conv2d(3, 5, 1), nn.LazyBatchNorm2d())
    conv = convert_sync_batchnorm(model)
    assert type(conv[1]) is LazySyncBatchNorm and conv[1].num_features == 0
    back = revert_sync_batchnorm(conv)
    assert type(back[1]) is nn.LazyBatchNorm2d and back[1].has_uninitialized_params()
    back(torch.randn(2, 3, 4, 4))
    assert type(back[1]) is nn.BatchNorm2d and back[1].num_features == 5  # torch's lazy protocol


def test_lazy_state_dict_load_before_first_forward():
    src = nn.BatchNorm2d(4)
    src.running_mean.fill_(2.0)
    conv = convert_sync_batchnorm(nn.Sequential(nn.LazyBatchNorm2d()))
    conv.load_state_dict(nn.Sequential(src).state_dict())  # torch's lazy load hook, re-bound
    assert conv[0].running_mean.shape == (4,) and torch.all(conv[0].running_mean == 2.0)
    conv.eval()
    assert conv(torch.randn(2, 4, 3, 3)).shape == (2, 4, 3, 3)
    assert type(conv[0]) is SyncBatchNorm


def test_direct_layers_and_torch_syncbatchnorm_revert_sensibly():
    direct = nn.Sequential(SyncBatchNorm(3))
    back = revert_sync_batchnorm(direct)
    assert type(back[0]).__name__ == "_BatchNormXd"
    assert back[0](torch.randn(2, 3, 4, 5, 6)).shape == (2, 3, 4, 5, 6)  # any rank >= 2
    lazy = revert_sync_batchnorm(nn.Sequential(LazySyncBatchNorm()))
    lazy(torch.randn(2, 7, 3))
    assert lazy[0].num_features == 7 and type(lazy[0]).__name__ == "_BatchNormXd"

    tsbn = nn.SyncBatchNorm(4)  # GPU-only in torch: becomes usable on CPU, and comes back
    tsbn.process_group = "torch's group object"
    conv = convert_sync_batchnorm(tsbn)
    assert type(conv) is SyncBatchNorm and conv.process_group is None
    conv(torch.randn(3, 4, 2))
    back = revert_sync_batchnorm(conv)
    assert type(back) is nn.SyncBatchNorm and back.process_group == "torch's group object"


def test_shared_module_is_converted_once_and_converting_twice_is_a_no_op():
    bn = nn.BatchNorm1d(3)
    model = nn.Sequential(bn, nn.ReLU(), bn)
    conv = convert_sync_batchnorm(model)
    assert conv[0] is conv[2] and type(conv[0]) is SyncBatchNorm
    layer = conv[0]
    again = convert_sync_batchnorm(conv)
    assert again[0] is layer
    back = revert_sync_batchnorm(conv)
    assert back[0] is back[2] and type(back[0]) is nn.BatchNorm1d


def test_layers_get_increasing_indices_in_traversal_order():
    conv = convert_sync_batchnorm(Net())
    idx = [named(conv)[p]._layer_index for p in BN_PATHS]
    assert idx == sorted(idx) and len(set(idx)) == len(idx)
