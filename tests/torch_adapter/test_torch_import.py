"""The core package never imports torch; syncnorm.torch says what to install when torch is missing."""
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                          timeout=120, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})


def test_core_imports_do_not_import_torch():
    r = run("import sys\n"
            "import syncnorm, syncnorm.nn, syncnorm.functional, syncnorm.distributed\n"
            "from syncnorm.nn import SyncBatchNorm, convert_sync_batchnorm\n"
            "bad = sorted(m for m in sys.modules if m == 'torch' or m.startswith('torch.'))\n"
            "print('TORCH_MODULES', bad)\n")
    assert r.returncode == 0, r.stderr
    assert "TORCH_MODULES []" in r.stdout, r.stdout


def test_syncnorm_torch_without_torch_says_what_to_install():
    # a process where `import torch` fails (None in sys.modules blocks the import)
    r = run("import sys\nsys.modules['torch'] = None\nimport syncnorm, syncnorm.nn\nimport syncnorm.torch\n")
    assert r.returncode != 0
    assert "ImportError" in r.stderr and "pip install 'syncnorm[torch]'" in r.stderr, r.stderr


def test_syncnorm_torch_imports_with_torch():
    pytest.importorskip("torch", reason="syncnorm.torch needs PyTorch (pip install 'syncnorm[torch]')")
    r = run("import syncnorm.torch as t\nprint(t.SyncBatchNorm.__mro__[1].__module__)")
    assert r.returncode == 0, r.stderr
    assert "torch.nn.modules.batchnorm" in r.stdout
