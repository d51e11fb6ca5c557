"""Converting BatchNorm subclasses keeps what they add: a timm-style BatchNormAct2d (its own forward
calls F.batch_norm, then dropout and an activation), a subclass that overrides _check_input_dim and
adds a buffer, and one whose forward calls super().forward compute, on one rank, the function they
computed before conversion (float64, train and eval), revert exactly, pickle, script in eval; the
subclasses that cannot be kept are refused before anything is converted."""
from __future__ import annotations

import copy
import io

import pytest

torch = pytest.importorskip("torch", reason="syncnorm.torch needs PyTorch (pip install 'syncnorm[torch]')")
from torch import nn  # noqa: E402
from torch.nn import functional as F  # noqa: E402

from syncnorm.torch import SyncBatchNorm, convert_sync_batchnorm, revert_sync_batchnorm  # noqa: E402

# torch 2.13 deprecates TorchScript (it still works, and is tested here for the users who use it)
pytestmark = pytest.mark.filterwarnings("ignore:.*torch.jit.* is deprecated:DeprecationWarning")


class BatchNormAct2d(nn.BatchNorm2d):
    """timm's BatchNormAct2d, reduced: its forward is _BatchNorm.forward's body with its own
    num_batches_tracked/momentum bookkeeping, then dropout and an activation."""

    def __init__(self, num_features: int, momentum: float | None = 0.1, drop: float = 0.0) -> None:
        super().__init__(num_features, momentum=momentum)
        self.drop = nn.Dropout(drop) if drop > 0 else nn.Identity()
        self.act = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        exponential_average_factor = 0.0 if self.momentum is None else self.momentum
        if self.training and self.track_running_stats:
            if self.num_batches_tracked is not None:
                self.num_batches_tracked.add_(1)
                if self.momentum is None:
                    exponential_average_factor = 1.0 / float(self.num_batches_tracked)
                else:
                    exponential_average_factor = self.momentum
        bn_training = True if self.training else (self.running_mean is None and self.running_var is None)
        x = F.batch_norm(x, self.running_mean if not self.training or self.track_running_stats else None,
                         self.running_var if not self.training or self.track_running_stats else None,
                         self.weight, self.bias, bn_training, exponential_average_factor, self.eps)
        return self.act(self.drop(x))


class SquareOnly(nn.BatchNorm2d):
    """Overrides _check_input_dim and adds a buffer."""

    def __init__(self, c: int) -> None:
        super().__init__(c)
        self.register_buffer("scale", torch.full((c, 1, 1), 2.0))

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() != 4 or input.shape[-1] != input.shape[-2]:
            raise ValueError("SquareOnly: square 4D inputs only")


class Scaled(SquareOnly):
    """A forward that calls super().forward and uses the added buffer."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x) * self.scale


def model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), BatchNormAct2d(4, momentum=None, drop=0.25),
                         nn.Conv2d(4, 4, 1), SquareOnly(4), Scaled(4)).double()


def test_converted_subclasses_compute_the_same_function_and_revert_exactly():
    ref = model()
    sync = convert_sync_batchnorm(copy.deepcopy(ref))
    assert [type(sync[i]).__name__ for i in (1, 3, 4)] == ["SyncBatchNormAct2d", "SyncSquareOnly", "SyncScaled"]
    assert all(isinstance(sync[i], SyncBatchNorm) for i in (1, 3, 4))
    for step in range(3):
        x = torch.randn(4, 3, 6, 6, dtype=torch.float64) * 2 + 1
        xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
        torch.manual_seed(step)
        ya = sync(xa)
        torch.manual_seed(step)  # the same dropout mask
        yb = ref(xb)
        torch.testing.assert_close(ya, yb, atol=1e-12, rtol=1e-12)
        ya.square().sum().backward()
        yb.square().sum().backward()
        torch.testing.assert_close(xa.grad, xb.grad, atol=1e-10, rtol=1e-10)
    for (n, a), b in zip(sync.named_buffers(), ref.buffers()):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=1e-12, msg=n)
    assert int(sync[1].num_batches_tracked) == 3  # counted once per step (by the subclass itself)
    for (n, p), q in zip(sync.named_parameters(), ref.parameters()):
        torch.testing.assert_close(p.grad, q.grad, atol=1e-10, rtol=1e-10, msg=n)
    with pytest.raises(ValueError, match="square 4D inputs only"):
        sync[3](torch.randn(2, 4, 3, 5, dtype=torch.float64))

    sync.load_state_dict(ref.state_dict())
    sync.eval(), ref.eval()
    x = torch.randn(2, 3, 6, 6, dtype=torch.float64)
    assert torch.equal(sync(x), ref(x))
    scripted_ref = nn.Sequential(*list(ref)[:4])  # Scaled uses super(): not scriptable in torch either
    scripted = torch.jit.script(nn.Sequential(*list(sync)[:4]))
    assert torch.equal(scripted(x), scripted_ref(x))

    back = revert_sync_batchnorm(sync)
    assert [type(back[i]) for i in (1, 3, 4)] == [BatchNormAct2d, SquareOnly, Scaled]
    assert not hasattr(back[1], "_op_key") and not hasattr(back[1], "_original_class")
    assert torch.equal(back(x), ref(x))


def test_converted_subclass_pickles_and_deep_copies():
    sync = convert_sync_batchnorm(model())
    sync(torch.randn(4, 3, 6, 6, dtype=torch.float64))
    buf = io.BytesIO()
    torch.save(sync, buf)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=False)
    assert type(loaded[1]) is type(sync[1]) and torch.equal(loaded[1].running_var, sync[1].running_var)
    twin = copy.deepcopy(sync)
    x = torch.randn(4, 3, 6, 6, dtype=torch.float64)
    torch.manual_seed(1)
    a = twin(x)
    torch.manual_seed(1)
    assert torch.equal(a, loaded(x))


def test_subclasses_that_cannot_be_kept_are_refused_before_converting():
    class LazySub(nn.LazyBatchNorm2d):
        pass

    class TorchSyncSub(nn.SyncBatchNorm):  # would stay a torch SyncBatchNorm: DDP refuses it on CPU
        pass

    for bad in (LazySub(), TorchSyncSub(3)):
        net = nn.Sequential(nn.BatchNorm1d(3), bad)
        with pytest.raises(TypeError, match=r"convert_sync_batchnorm: .* \(at 1\)"):
            convert_sync_batchnorm(net)
        assert type(net[0]) is nn.BatchNorm1d  # nothing was converted
