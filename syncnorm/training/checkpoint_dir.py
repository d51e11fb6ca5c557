"""The checkpoint directory, checked before training starts rather than at the first save.

Rank 0 (the writer) makes sure the directory exists or can be created, that a file can be written
in it (a probe file, written and removed: this catches read-only mounts, missing permissions and
pseudo file systems such as /proc), and that it has room for one checkpoint with margin: twice the
checkpoint's uncompressed size free. It also removes the temporary files a writer killed mid-save
left behind.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

from .. import nn

__all__ = ["CheckpointDirError", "checkpoint_bytes", "prepare"]

_HEADER_BYTES = 64 * 1024  # the JSON header, the zip directory and the per-member headers


class CheckpointDirError(Exception):
    """The checkpoint directory cannot hold checkpoints; the message says why."""


def checkpoint_bytes(model: nn.Module) -> int:
    """Uncompressed bytes of a checkpoint of `model` with one SGD momentum buffer per parameter."""
    params = sum(p.data.nbytes for p in model.parameters())
    buffers = sum(b.nbytes for _, b in model.named_buffers())
    return 2 * params + buffers + _HEADER_BYTES


def prepare(path: Path, need: int) -> list[Path]:
    """Check that `path`'s directory can take a checkpoint of `need` bytes, twice over; remove
    stale temporary files of `path`. Returns the files removed; raises CheckpointDirError."""
    from ..checkpoint import remove_stale_temp_files

    directory = path.parent
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise CheckpointDirError(f"cannot create {directory}: {e.strerror or e}") from None
    removed = remove_stale_temp_files(path)
    try:
        fd, probe = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=directory)
        try:
            os.write(fd, b"\0" * 4096)
            os.fsync(fd)
        finally:
            os.close(fd)
            os.unlink(probe)
    except OSError as e:
        raise CheckpointDirError(f"cannot write in {directory}: {e.strerror or e}") from None
    st = os.statvfs(directory)
    free = st.f_bavail * st.f_frsize
    if free < 2 * need:
        raise CheckpointDirError(f"{directory} has {_size(free)} free; a checkpoint of this model needs "
                                 f"up to {_size(need)}, and {_size(2 * need)} free is required (twice "
                                 "the checkpoint, for margin)")
    return removed


def _size(n: int) -> str:
    if n < 1024:
        return f"{n} bytes"
    x = float(n)
    for unit in ("KiB", "MiB", "GiB"):
        x /= 1024
        if x < 1024:
            break
    return f"{x:.1f} {unit}"
