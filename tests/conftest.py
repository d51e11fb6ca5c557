import os
import re
import shutil
import sys
import tempfile
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))


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


def pytest_addoption(parser):
    parser.addoption("--runslow", action="store_true", default=False,
                     help="run the slow (nightly-style) property and fuzz tests")


_PRIVATE_TMP: list[str] = []


def pytest_configure(config):
    """Every process the suite starts gets a private, empty $TMPDIR. Open MPI keeps a launcher's
    session files in $TMPDIR/ompi.PID; a directory left by a killed launcher elsewhere on the
    machine would stop any launcher of ours that reuses the PID ("The PMIx server's listener
    thread failed to start"; see syncnorm.launch.remove_session_dir)."""
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


def pytest_collection_modifyitems(config, items):
    if config.getoption("--runslow") or os.environ.get("SYNCNORM_SLOW") == "1":
        return
    skip = pytest.mark.skip(reason="slow: run with --runslow or SYNCNORM_SLOW=1")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)
