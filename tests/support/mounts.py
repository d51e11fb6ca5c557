"""Small tmpfs mounts for tests of full and read-only disks (root with CAP_SYS_ADMIN only).

`tmpfs_mount` mounts, yields and always unmounts; where mounting is impossible the calling test is
skipped with the reason.
"""
from __future__ import annotations

import contextlib
import shutil
import subprocess
from pathlib import Path
from typing import Iterator

import pytest


@contextlib.contextmanager
def tmpfs_mount(path: Path, options: str) -> Iterator[Path]:
    """A tmpfs at `path` (created if needed) mounted with `options`, e.g. "size=64k" or
    "ro,size=64k"; unmounted when the block ends, whatever happens in it."""
    if shutil.which("mount") is None or shutil.which("umount") is None:
        pytest.skip("no mount/umount command: cannot make a small or read-only file system")
    path.mkdir(parents=True, exist_ok=True)
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)],
                       capture_output=True, text=True, timeout=30)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root with CAP_SYS_ADMIN): "
                    f"{(r.stderr or r.stdout).strip() or f'mount exited {r.returncode}'}")
    try:
        yield path
    finally:
        u = subprocess.run(["umount", str(path)], capture_output=True, text=True, timeout=30)
        if u.returncode != 0:  # still busy (an open file): detach it now, it goes when released
            subprocess.run(["umount", "-l", str(path)], check=True, timeout=30)
