"""Peak extra memory of a training step, per layer and kernel engine: the forward allocates its
output and the backward its input gradient, plus buffers far smaller than the input (per-channel or
per-row statistics, parameter gradients). Measured with tracemalloc, which sees numpy's
allocations; the compiled kernels allocate only small scratch arrays inside.

A regression here is a whole input-sized temporary (a copy, or an output allocated and thrown
away): LayerNorm's backward once allocated its input gradient twice with the compiled engine."""
import numpy as np
import pytest

from syncnorm import nn
from syncnorm.bench.memory import peak_extra

pytestmark = pytest.mark.usefixtures("kernel_engine")

# inputs of 4M values: the kernels' cache-sized scratch blocks (at most a few hundred KiB each)
# are small beside them, as in real use
SHAPE = (64, 16, 64, 64)
LAYERS = [
    ("BatchNorm2d", lambda: nn.BatchNorm2d(16), SHAPE),
    ("BatchNorm1d", lambda: nn.BatchNorm1d(64), (65536, 64)),
    ("GroupNorm", lambda: nn.GroupNorm(4, 16), SHAPE),
    ("InstanceNorm2d", lambda: nn.InstanceNorm2d(16, affine=True), SHAPE),
    ("LayerNorm", lambda: nn.LayerNorm([16, 64, 64]), SHAPE),
    ("LocalResponseNorm", lambda: nn.LocalResponseNorm(5), SHAPE),
]


@pytest.mark.parametrize("name,make,shape", LAYERS, ids=[c[0] for c in LAYERS])
def test_step_allocates_one_output_per_pass(name, make, shape):
    rng = np.random.default_rng(0)
    x = rng.standard_normal(shape, dtype=np.float32)
    dy = rng.standard_normal(shape, dtype=np.float32)
    got = peak_extra(make(), x, dy)
    # the output is 1.0; parameter gradients (LayerNorm: 1/64 of the input here, in float64 before
    # they are added), statistics and scratch blocks stay well under the rest
    assert got["forward_buffers"] < 1.25, got
    assert got["backward_buffers"] < 1.25, got
