import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))


def pytest_addoption(parser):
    parser.addoption("--runslow", action="store_true", default=False,
                     help="run the slow (nightly-style) property and fuzz tests")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--runslow") or os.environ.get("SYNCNORM_SLOW") == "1":
        return
    skip = pytest.mark.skip(reason="slow: run with --runslow or SYNCNORM_SLOW=1")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)
