import os
import re
import shutil
import sys
import tempfile
from pathlib import Path

import pytest

# Tests by kind: unit/ (one process), multirank/ (several ranks on this host), torch_adapter/,
# cluster/ (netns hosts, Slurm, Docker), docs/; helpers and the scripts jobs run in support/.
# No folder is named "mpi" (pytest-mpi skips every test whose keywords, folder names included,
# hold "mpi") or "torch" (on sys.path it would shadow the real torch as a namespace package).
sys.path.insert(0, str(Path(__file__).resolve().parent / "support"))

from host_state import leftovers, render, snapshot  # noqa: E402  (found through the line above)


def _engines() -> list:
    """The kernel engines the `kernel_engine` fixture runs: numpy, and numba when installed."""
    import importlib.util
    have = importlib.util.find_spec("numba") is not None
    return ["numpy", pytest.param("numba", marks=pytest.mark.skipif(
        not have, reason="numba not installed (pip install 'syncnorm[fast]')"))]


@pytest.fixture(scope="module", params=_engines())
def kernel_engine(request):
    """Runs a module's tests once per kernel engine (SYNCNORM_KERNELS=numpy, then =numba):
    correctness modules opt in with `pytestmark = pytest.mark.usefixtures("kernel_engine")`.
    Module scope: each engine runs the whole module in turn (no switching per test)."""
    from syncnorm.functional import engine
    with engine.use(request.param):
        yield request.param


@pytest.fixture(autouse=True)
def _child_kernels(request):
    """The kernel engine of the processes a test starts (ranks, jobs, CLIs): a test or module whose
    subject is not the kernels' numerics (the launcher, faults, timeouts, checkpoint files, cluster
    plumbing) is marked `child_kernels("numpy")`, and each such process skips numba's import and
    the loading of its cached kernels, about 0.6 s of CPU per process (docs/performance.md). Set
    per test: processes that module-scoped fixtures start keep the default engine."""
    marker = request.node.get_closest_marker("child_kernels")
    if marker is None:
        yield
        return
    from syncnorm.functional import engine
    engine.name()  # resolve (and keep) this process's own engine before the variable changes
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(engine.ENV, marker.args[0])
        yield


def _warm_compiled_kernels() -> None:
    """Compile (or load from the cache) the compiled engine's kernels once, in this process, before
    any test starts ranks of its own: with an empty cache (a fresh checkout, CI) every rank of the
    first multi-rank tests would otherwise compile the same kernels at once, each for about half a
    minute of CPU, on a machine with two cores. Each dtype, layout and layer kind of the suite is
    run forward and backward in training and eval; with a warm cache this takes about a second."""
    import importlib.util
    if importlib.util.find_spec("numba") is None:
        return
    if os.environ.get("SYNCNORM_KERNELS", "auto").strip().lower() == "numpy":
        return
    if any(v in os.environ for v in ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_RANK")):
        return  # a rank of a multi-rank test: the controlling pytest process warmed the cache
    import numpy as np

    from syncnorm import nn
    rng = np.random.default_rng(0)
    layers = [(lambda: nn.BatchNorm2d(4), (4, 4, 5, 5)), (lambda: nn.BatchNorm1d(4), (8, 4)),
              (lambda: nn.GroupNorm(2, 4), (2, 4, 5, 5)), (lambda: nn.LayerNorm([4, 5, 5]), (2, 4, 5, 5)),
              (lambda: nn.InstanceNorm2d(4, affine=True), (2, 4, 5, 5))]
    for dt in (np.float32, np.float64, np.float16):
        for make, shape in layers:
            x = rng.standard_normal(shape).astype(dt)
            for layer in (make(), make().eval()):
                layer.backward(np.ones_like(layer(x)))
    if importlib.util.find_spec("torch") is None:
        return
    import torch

    from syncnorm.torch import SyncBatchNorm
    for dt in (torch.float32, torch.float64, torch.float16, torch.bfloat16):
        for fmt in (torch.contiguous_format, torch.channels_last):
            x = torch.randn(4, 4, 5, 5).to(dt).contiguous(memory_format=fmt).requires_grad_()
            SyncBatchNorm(4)(x).sum().backward()


def pytest_addoption(parser):
    parser.addoption("--runslow", action="store_true", default=False,
                     help="run the slow (nightly-style) property and fuzz tests")


_PRIVATE_TMP: list[str] = []


def pytest_configure(config):
    """Every process the suite starts gets a private, empty $TMPDIR. Open MPI keeps a launcher's
    session files in $TMPDIR/ompi.PID; a directory left by a killed launcher elsewhere on the
    machine would stop any launcher of ours that reuses the PID ("The PMIx server's listener
    thread failed to start"; see syncnorm.launch.remove_session_dir)."""
    config.addinivalue_line("markers", "child_kernels(engine): SYNCNORM_KERNELS of the processes "
                            "a module's tests start (see _child_kernels)")
    _warm_compiled_kernels()
    d = tempfile.mkdtemp(prefix="syncnorm-tests-")
    _PRIVATE_TMP.append(d)
    os.environ["TMPDIR"] = d
    tempfile.tempdir = None  # gettempdir() reads $TMPDIR again


def pytest_unconfigure(config):
    for d in _PRIVATE_TMP:
        names = os.listdir(d) if os.path.isdir(d) else []
        left = sorted(n for n in names if re.fullmatch(r"ompi\.\d+", n))  # ompi.HOST.UID: singletons
        if left:
            print(f"\n[conftest] Open MPI session directories left by killed launchers: "
                  f"{', '.join(left)}", file=sys.stderr)
        shutil.rmtree(d, ignore_errors=True)


_HOST_BEFORE: dict[str, list[str]] = {}


def _is_mpi_worker(config) -> bool:
    """A pytest run on an MPI rank (tests/support/mpi_workers): the run that started it checks."""
    return "--with-mpi" in config.invocation_params.args


def pytest_sessionstart(session):
    if not _is_mpi_worker(session.config):
        _HOST_BEFORE.update(snapshot())


def pytest_sessionfinish(session, exitstatus):
    """The run fails when it left a daemon, mount, network namespace, link, iptables rule or
    container on the machine (tests/support/host_state.py says what counts)."""
    if not _HOST_BEFORE:
        return
    left = {k: v for k, v in leftovers(_HOST_BEFORE, snapshot(), f"sn{os.getpid()}").items() if v}
    if left:
        print(f"\n[conftest] the test run left this on the machine:\n{render(left)}", file=sys.stderr)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_collection_modifyitems(config, items):
    if config.getoption("--runslow") or os.environ.get("SYNCNORM_SLOW") == "1":
        return
    skip = pytest.mark.skip(reason="slow: run with --runslow or SYNCNORM_SLOW=1")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)
