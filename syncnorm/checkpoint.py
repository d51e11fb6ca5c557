"""Checkpoints: a documented .npz (no pickle), written atomically, verified before anything loads.

File format (format name "syncnorm-checkpoint", version 1): a zip holding one deflated .npy member
per array, as `numpy.savez_compressed` writes it, read with `np.load(..., allow_pickle=False)`:

| member          | dtype, shape          | contents                                                  |
| --------------- | --------------------- | --------------------------------------------------------- |
| `__meta__`      | uint8 (n,)            | UTF-8 JSON: {"format", "version", "meta": caller's JSON     |
|                 |                       | data, "model_metadata", "optimizer": {"param_groups": ...}} |
| `model/<key>`   | the array's own       | every entry of the model's state_dict (torch's key names)  |
| `optim/<i>/<k>` | the array's own       | optimizer state k (e.g. momentum_buffer) of parameter i    |
| `__sha256__`    | uint8 (32,)           | SHA-256 over every other member, in sorted key order, of    |
|                 |                       | key, dtype, shape and raw bytes (see `content_digest`)      |

Only numeric and bool arrays are written or accepted. Loading first looks at the file's first bytes
(an empty file, zeros, a plain pickle or anything else that is not a zip archive is refused with
that reason), reads every member into memory, checks the format, version and checksum, and only
then hands the arrays out; `load_training_checkpoint` then loads model and optimizer together or
not at all. A truncated, corrupted or foreign file, or one holding an object array (which would
need pickle), raises `CheckpointError` and changes nothing.

Writing: rank 0 writes a temporary file in the destination directory, flushes and fsyncs it,
renames it over the destination with `os.replace` (atomic on POSIX) and fsyncs the directory. A crash
at any moment leaves either the previous checkpoint or the new one, never a mix; a stray temporary
file (named `.<name>.*.tmp`) is all a crash can leave behind (`remove_stale_temp_files` clears it).
A write that fails (disk full, read-only, no permission) raises `CheckpointError` naming the file
and the system's reason; the previous checkpoint stays as it was and the temporary file is removed.
"""
from __future__ import annotations

import hashlib
import json
import os
import stat
import tempfile
import zipfile
import zlib
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np

__all__ = ["FORMAT", "VERSION", "CheckpointError", "Checkpoint", "content_digest", "save_checkpoint",
           "load_checkpoint", "save_training_checkpoint", "load_training_checkpoint",
           "remove_stale_temp_files"]

FORMAT = "syncnorm-checkpoint"
"""The format name stored in every checkpoint's `__meta__` header."""
VERSION = 1
"""The format version this syncnorm writes; it reads versions 1..VERSION."""
_META, _SUM = "__meta__", "__sha256__"
_OK_KINDS = "biuf"
_ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")  # a zip's first member, or an empty zip
_NPY_MAGIC = b"\x93NUMPY"


class CheckpointError(RuntimeError):
    """A checkpoint could not be written or was refused on reading (nothing was loaded)."""


@dataclass
class Checkpoint:
    """What `load_checkpoint` returns: arrays by state_dict key, optimizer state, caller's meta."""

    model: OrderedDict[str, np.ndarray]
    optimizer: dict[str, Any] | None
    meta: dict[str, Any]


def _check_array(key: str, a: np.ndarray) -> np.ndarray:
    a = np.asarray(a)
    if a.dtype.kind not in _OK_KINDS or a.dtype.hasobject:
        raise CheckpointError(f"checkpoint entry {key!r} has dtype {a.dtype}; only numeric and bool "
                              "arrays can be stored (no pickled objects)")
    return a


def content_digest(arrays: Mapping[str, np.ndarray]) -> bytes:
    """SHA-256 over the members in sorted key order: key, dtype.str, shape, then the C-order bytes."""
    h = hashlib.sha256()
    for key in sorted(arrays):
        a = np.ascontiguousarray(arrays[key])
        h.update(key.encode() + b"\0" + a.dtype.str.encode() + b"\0"
                 + repr(tuple(a.shape)).encode() + b"\0")
        h.update(a.tobytes())
    return h.digest()


def _json_bytes(obj: Any) -> np.ndarray:
    try:
        raw = json.dumps(obj, sort_keys=True, allow_nan=True).encode()
    except TypeError as e:
        raise CheckpointError(f"checkpoint metadata must be JSON data (numbers, strings, lists, dicts): {e}") \
            from None
    return np.frombuffer(raw, dtype=np.uint8).copy()


def _fsync_dir(directory: str) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def save_checkpoint(path: str | os.PathLike, model_state: Mapping[str, np.ndarray],
                    optimizer_state: Mapping[str, Any] | None = None,
                    meta: Mapping[str, Any] | None = None) -> Path:
    """Write a checkpoint atomically to `path` (see the module docstring). Returns the path.

    `model_state`: a state_dict (its `_metadata`, module versions, is kept). `optimizer_state`: an
    `Optimizer.state_dict()`. `meta`: JSON data of the caller (epoch, step, ...)."""
    path = Path(path)
    arrays: dict[str, np.ndarray] = {}
    for k, v in model_state.items():
        arrays["model/" + k] = _check_array(k, v)
    opt_json = None
    if optimizer_state is not None:
        for i, st in optimizer_state["state"].items():
            for name, v in st.items():
                if not isinstance(v, np.ndarray):
                    raise CheckpointError(f"optimizer state {name!r} of parameter {i} is not an array")
                arrays[f"optim/{int(i)}/{name}"] = _check_array(name, v)
        opt_json = {"param_groups": optimizer_state["param_groups"]}
    header = {"format": FORMAT, "version": VERSION, "meta": dict(meta or {}),
              "model_metadata": dict(getattr(model_state, "_metadata", None) or {}),
              "optimizer": opt_json}
    arrays[_META] = _json_bytes(header)
    arrays[_SUM] = np.frombuffer(content_digest(arrays), dtype=np.uint8).copy()
    directory = path.parent if str(path.parent) else Path(".")
    try:
        directory.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=directory)
    except OSError as e:
        raise _write_error(path, e) from e
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez_compressed(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        if isinstance(e, OSError):
            raise _write_error(path, e) from e
        raise
    _fsync_dir(str(directory))
    return path


def _write_error(path: Path, e: OSError) -> CheckpointError:
    reason = e.strerror or str(e)
    return CheckpointError(f"could not write the checkpoint {path}: {reason}; the previous checkpoint "
                           "there, if any, is unchanged")


def remove_stale_temp_files(path: str | os.PathLike) -> list[Path]:
    """Delete the temporary files (`.<name>.*.tmp` beside `path`) that a writer killed mid-save left.
    Call it only when no other process is writing `path`. Returns the files removed."""
    path = Path(path)
    directory = path.parent if str(path.parent) else Path(".")
    removed = []
    for tmp in sorted(directory.glob(f".{path.name}.*.tmp")):
        try:
            tmp.unlink()
        except FileNotFoundError:
            continue
        removed.append(tmp)
    return removed


def _sniff(path: Path) -> None:
    """Refuse, with its real reason, a file that is no zip archive at all: np.load would call any
    such file (random bytes, zeros) a pickle."""
    try:
        st = path.stat()
    except FileNotFoundError:
        raise CheckpointError(f"no checkpoint at {path}") from None
    except OSError:
        return  # np.load reports it
    if not stat.S_ISREG(st.st_mode):
        raise CheckpointError(f"{path} is not a regular file (a directory, a device, a pipe or a "
                              "socket); a checkpoint is a file")
    try:
        with open(path, "rb") as f:
            head = f.read(4096)
    except OSError:
        return
    if not head:
        raise CheckpointError(f"{path} is empty (0 bytes), not a checkpoint")
    if head.startswith(_ZIP_MAGIC) or head.startswith(_NPY_MAGIC):
        return
    if head.count(0) == len(head):
        raise CheckpointError(f"{path} is not a checkpoint: its first {len(head)} bytes are all zero (a "
                              "file whose data never reached the disk, or a copy of /dev/zero)")
    if len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5:  # pickle protocol 2..5
        raise CheckpointError(f"{path} was refused: it is a Python pickle, not a syncnorm checkpoint, and "
                              "was not unpickled: unpickling would run code from the file")
    raise CheckpointError(f"{path} is not a syncnorm checkpoint: it is not a .npz (zip) file (it starts "
                          f"with {head[:8]!r})")


def _read_all(path: Path) -> dict[str, np.ndarray]:
    _sniff(path)
    try:
        z = np.load(path, allow_pickle=False)
        if not isinstance(z, np.lib.npyio.NpzFile):  # a plain .npy array
            raise CheckpointError(f"{path} is a single .npy array, not a syncnorm checkpoint")
        with z:
            return {k: z[k] for k in z.files}
    except CheckpointError:
        raise
    except FileNotFoundError:
        raise CheckpointError(f"no checkpoint at {path}") from None
    except ValueError as e:
        if "pickle" in str(e).lower():
            raise CheckpointError(f"{path} was refused: it holds an object array, which could only be "
                                  "read by unpickling (running code from the file); syncnorm "
                                  "checkpoints never contain one") from None
        raise CheckpointError(f"{path} is not a readable checkpoint (truncated or corrupted): {e}") from None
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError, KeyError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path} is not a readable checkpoint (truncated or corrupted): "
                              f"{type(e).__name__}: {e}") from None
    except MemoryError:  # a damaged or crafted member header declaring a huge array
        raise CheckpointError(f"{path} is not a readable checkpoint (truncated or corrupted): a member "
                              "declares an array too large to allocate") from None
    except Exception as e:  # noqa: BLE001 - zipfile and numpy raise many kinds on a damaged file
        # (NotImplementedError for a flipped version field, RuntimeError for a flipped encryption
        # flag, struct.error, ...): whatever it is, the file is unreadable
        raise CheckpointError(f"{path} is not a readable checkpoint (truncated or corrupted): "
                              f"{type(e).__name__}: {e}") from None


def load_checkpoint(path: str | os.PathLike) -> Checkpoint:
    """Read and verify a checkpoint completely; raise CheckpointError on any problem."""
    path = Path(path)
    arrays = _read_all(path)
    if _META not in arrays or _SUM not in arrays:
        raise CheckpointError(f"{path} is not a syncnorm checkpoint (no {_META} / {_SUM} member)")
    stored = arrays.pop(_SUM)
    if stored.dtype != np.uint8 or stored.shape != (32,) or \
            stored.tobytes() != content_digest(arrays):
        raise CheckpointError(f"{path} failed its SHA-256 check: the file was modified or damaged "
                              "after it was written; refusing to load any of it")
    try:
        header = json.loads(arrays.pop(_META).tobytes().decode())
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise CheckpointError(f"{path}: unreadable metadata: {type(e).__name__}: {e}") from None
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise CheckpointError(f"{path}: format {header.get('format') if isinstance(header, dict) else None!r}"
                              f" is not {FORMAT!r}")
    version = header.get("version")
    if not isinstance(version, int) or version > VERSION or version < 1:
        raise CheckpointError(f"{path}: checkpoint format version {version!r}; this syncnorm reads "
                              f"versions 1..{VERSION} (written by a newer syncnorm?)")
    _check_header(path, header)
    model: OrderedDict[str, np.ndarray] = OrderedDict()
    opt_state: dict[int, dict[str, np.ndarray]] = {}
    for key, a in arrays.items():
        _check_array(key, a)
        if key.startswith("model/"):
            model[key[len("model/"):]] = a
        elif key.startswith("optim/"):
            parts = key.split("/")
            if len(parts) != 3 or not (parts[1].isascii() and parts[1].isdecimal()):
                raise CheckpointError(f"{path}: malformed optimizer entry {key!r}")
            opt_state.setdefault(int(parts[1]), {})[parts[2]] = a
        else:
            raise CheckpointError(f"{path}: unexpected member {key!r}")
    model._metadata = dict(header.get("model_metadata") or {})  # type: ignore[attr-defined]
    optimizer = None
    if header.get("optimizer") is not None:
        optimizer = {"state": opt_state, "param_groups": header["optimizer"]["param_groups"]}
    elif opt_state:
        raise CheckpointError(f"{path}: optimizer arrays without optimizer metadata")
    return Checkpoint(model, optimizer, dict(header.get("meta") or {}))


def _check_header(path: Path, header: dict[str, Any]) -> None:
    """The header's fields have the documented JSON types (a file can pass its checksum and still
    be crafted); raise CheckpointError naming the first field that does not."""
    def bad(field: str, want: str, got: Any) -> CheckpointError:
        return CheckpointError(f"{path}: malformed metadata: {field} must be {want}, got "
                               f"{type(got).__name__}")
    for field in ("meta", "model_metadata"):
        v = header.get(field)
        if v is not None and not isinstance(v, dict):
            raise bad(repr(field), "a JSON object", v)
    for k, v in (header.get("model_metadata") or {}).items():
        if not isinstance(v, int) or isinstance(v, bool):
            raise bad(f"the module version of {k!r}", "an integer", v)
    opt = header.get("optimizer")
    if opt is not None:
        if not isinstance(opt, dict):
            raise bad("'optimizer'", "a JSON object", opt)
        groups = opt.get("param_groups")
        if not isinstance(groups, list) or not all(isinstance(g, dict) for g in groups):
            raise bad("'optimizer.param_groups'", "a list of JSON objects", groups)


def save_training_checkpoint(path: str | os.PathLike, model: Any, optimizer: Any,
                             meta: Mapping[str, Any]) -> Path:
    """`save_checkpoint` of a model's state_dict and an optimizer's state_dict."""
    return save_checkpoint(path, model.state_dict(), optimizer.state_dict() if optimizer else None, meta)


def load_training_checkpoint(path: str | os.PathLike, model: Any, optimizer: Any = None) -> dict[str, Any]:
    """Verify `path`, then load the model and the optimizer together (on any error neither changes).
    Returns the caller's meta."""
    ck = load_checkpoint(path)
    if optimizer is not None and ck.optimizer is None:
        raise CheckpointError(f"{path} holds no optimizer state, but an optimizer was given to restore")
    before = model.state_dict()
    try:
        model.load_state_dict(ck.model)
    except Exception as e:  # noqa: BLE001 - StateDictError and friends: nothing was loaded
        raise CheckpointError(f"{path} does not fit this model (nothing was loaded): {e}") from None
    if optimizer is not None:
        try:
            optimizer.load_state_dict(ck.optimizer)
        except Exception as e:  # noqa: BLE001
            model.load_state_dict(before)
            raise CheckpointError(f"{path}: the optimizer state does not fit (nothing was loaded): {e}") \
                from None
    return ck.meta
