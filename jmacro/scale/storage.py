"""Datasets on disk: a directory of ``.npy`` arrays plus ``meta.json``, written atomically.

Layout of a dataset directory ``path/``::

    path/
        meta.json        # user meta + {"format", "jmacro_version", "versions", "created", "arrays"}
        <name>.npy       # one plain .npy file per array (memory-mappable, readable by numpy)

``meta.json["arrays"][name]`` records ``shape``, ``dtype``, ``nbytes`` and ``sha256``, the
SHA-256 of the array's raw C-order data bytes (not of the ``.npy`` header, so it depends on the
values only, not on numpy's header layout).

Crash safety: everything is written into a hidden sibling directory ``.<name>.tmp-<pid>-<token>``
(same parent, so the final ``os.replace`` is an atomic rename on one file system), fsynced, and
only then renamed to ``path``. A build that raises (or is interrupted by Ctrl-C) removes its
temporary directory; one killed outright leaves it behind, and the next save to the same path
deletes it. Nothing at ``path`` ever looks complete unless it is.

Reproducibility: identical arrays give bit-identical ``.npy`` files whatever the meta; the
creation time lives only in ``meta.json``. ``Dataset.fingerprint()`` compares array content.

Example::

    save_dataset("runs/a/small", {"spins": spins, "times": times}, {"seed": 0})
    data = load_dataset("runs/a/small")          # validated, memory-mapped, read-only
    data["spins"].shape, data.meta["seed"]

    with DatasetWriter("runs/a/big", {"seed": 0}, lengths={"spins": 100_000}) as writer:
        for batch in batches:                      # batches of shape (b, H, W)
            writer.append("spins", batch)
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import datetime
import enum
import hashlib
import importlib.metadata
import io
import json
import logging
import os
import platform
import re
import secrets
import shutil
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, BinaryIO, Literal

import jax
import numpy as np

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
"""Version of the on-disk layout written by this module."""
KNOWN_FORMATS = (1,)
META_FILE = "meta.json"
# Keys that save_dataset writes itself; user meta may not use them.
RESERVED_META_KEYS = ("format", "jmacro_version", "versions", "created", "arrays")

# Array names become file names: keep them portable and free of path separators.
_NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_\-]*$")
# Numeric dtypes only: object arrays would need pickle, structured ones complicate headers.
_DTYPE_KINDS = "biufc"
# Bytes written / hashed per chunk: bounds the extra memory of a save to this much.
_CHUNK_BYTES = 64 * 2**20
# Largest array that may sit inside meta.json (as a nested list); bigger ones belong in .npy.
_MAX_META_ARRAY_SIZE = 10_000


class DatasetError(ValueError):
    """A dataset on disk is missing, incomplete, corrupt, or cannot be written as asked."""


class DatasetNotFoundError(DatasetError, FileNotFoundError):
    """No dataset directory exists at the given path."""


class DatasetExistsError(DatasetError, FileExistsError):
    """The target path already exists and ``overwrite`` was not requested."""


# --------------------------------------------------------------------------------- JSON trees
def to_jsonable(obj: Any, where: str = "meta") -> Any:
    """Convert ``obj`` to a tree of dict/list/str/int/float/bool/None that ``json`` can store.

    Dataclasses (including Equinox modules) become dicts of their fields, as
    ``dataclasses.asdict`` would; tuples become lists; numpy/JAX scalars and small arrays become
    Python numbers and nested lists; ``Path`` becomes ``str``; ``Enum`` its value. Mapping keys
    must be strings or integers (integers become strings, as ``json`` would do).

    Raises:
        TypeError: for anything else, naming where in the tree it sits (``where``).
    """
    if obj is None or isinstance(obj, bool | int | float | str):
        return obj
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        # Same content as dataclasses.asdict, without its deep copy of every field.
        return {
            f.name: to_jsonable(getattr(obj, f.name), f"{where}.{f.name}")
            for f in dataclasses.fields(obj)
        }
    if isinstance(obj, Mapping):
        out: dict[str, Any] = {}
        for key, value in obj.items():
            if isinstance(key, bool) or not isinstance(key, str | int):
                raise TypeError(
                    f"{where} has a key {key!r} of type {type(key).__name__}; JSON needs "
                    "string keys. Use strings."
                )
            if str(key) in out:
                raise TypeError(f"{where} has keys that collide as strings: {key!r}.")
            out[str(key)] = to_jsonable(value, f"{where}[{key!r}]")
        return out
    if isinstance(obj, list | tuple):
        return [to_jsonable(v, f"{where}[{i}]") for i, v in enumerate(obj)]
    if isinstance(obj, enum.Enum):
        return to_jsonable(obj.value, where)
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if isinstance(obj, np.generic | np.ndarray | jax.Array):
        arr = np.asarray(obj)
        if arr.dtype.kind not in _DTYPE_KINDS:
            raise TypeError(f"{where} is an array of dtype {arr.dtype}, which JSON cannot store.")
        if arr.size > _MAX_META_ARRAY_SIZE:
            raise TypeError(
                f"{where} is an array of {arr.size} entries; store it as a dataset array, "
                "not in the meta."
            )
        if arr.dtype.kind == "c":
            raise TypeError(f"{where} is complex; JSON cannot store it. Store real/imag parts.")
        return arr.tolist()
    raise TypeError(
        f"{where} has type {type(obj).__name__}, which cannot be stored as JSON; convert it "
        "to numbers, strings, lists or dicts."
    )


# ------------------------------------------------------------------------- atomic directories
def _fsync_path(path: Path) -> None:
    """Flush a file's or directory's data and metadata to disk."""
    flags = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) if path.is_dir() else os.O_RDONLY
    try:
        fd = os.open(path, flags)
    except OSError:  # some platforms cannot open directories; nothing more we can do there
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _pid_alive(pid: int) -> bool:
    """Whether a process with this id runs on this machine (signal 0 checks, sends nothing)."""
    try:
        os.kill(pid, 0)
    except PermissionError:  # it exists but belongs to another user
        return True
    except (ProcessLookupError, OverflowError, ValueError):  # gone, or not a valid pid
        return False
    return True


def _sibling_pattern(path: Path, kind: Literal["tmp", "old"]) -> re.Pattern[str]:
    return re.compile(rf"^\.{re.escape(path.name)}\.{kind}-(\d+)-[0-9a-f]+$")


def _leftovers(path: Path, kind: Literal["tmp", "old"]) -> list[Path]:
    """Temporary (``tmp``) or set-aside (``old``) siblings of ``path`` from dead processes."""
    if not path.parent.is_dir():
        return []
    pattern = _sibling_pattern(path, kind)
    found = []
    for entry in path.parent.iterdir():
        match = pattern.match(entry.name)
        if match and not _pid_alive(int(match.group(1))):
            found.append(entry)
    return sorted(found)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


class _AtomicDirectory:
    """A temporary sibling directory that is renamed onto ``path`` on commit."""

    def __init__(self, path: Path, overwrite: bool, marker: str | None):
        self.path = path
        self.overwrite = overwrite
        self.marker = marker
        self.tmp: Path | None = None
        self._check_target()

    def _check_target(self) -> None:
        path = self.path
        if not (path.exists() or path.is_symlink()):
            return
        if not self.overwrite:
            raise DatasetExistsError(
                f"{path} already exists. Pass overwrite=True to replace it, or choose another path."
            )
        if not path.is_dir() or path.is_symlink():
            raise DatasetError(
                f"{path} exists and is not a directory; refusing to replace it. Remove it "
                "yourself if it is not needed."
            )
        if self.marker is not None and any(path.iterdir()):
            if not (path / self.marker).is_file():
                raise DatasetError(
                    f"{path} exists but has no {self.marker}, so it was not written by "
                    "jmacro; refusing to delete it with overwrite=True. Delete it yourself "
                    "if it is stale."
                )

    def open(self) -> Path:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for stale in _leftovers(self.path, "tmp"):
            logger.info("removing %s, left over by an interrupted build of %s", stale, self.path)
            _remove(stale)
        token = secrets.token_hex(4)
        self.tmp = self.path.parent / f".{self.path.name}.tmp-{os.getpid()}-{token}"
        self.tmp.mkdir()
        return self.tmp

    def commit(self) -> None:
        """fsync the temporary tree, then rename it onto ``path`` (old version set aside)."""
        assert self.tmp is not None, "commit() before open()"
        for root, _, files in os.walk(self.tmp):
            for name in files:
                _fsync_path(Path(root) / name)
        _fsync_path(self.tmp)
        self._check_target()  # the target may have appeared while we were building
        aside = None
        if self.path.exists():
            token = secrets.token_hex(4)
            aside = self.path.parent / f".{self.path.name}.old-{os.getpid()}-{token}"
            os.replace(self.path, aside)
        try:
            os.replace(self.tmp, self.path)
        except BaseException:
            if aside is not None:  # put the previous version back: never leave neither
                os.replace(aside, self.path)
            raise
        self.tmp = None
        _fsync_path(self.path.parent)
        # Only now that the new version is in place may old versions be deleted.
        for old in ([aside] if aside is not None else []) + _leftovers(self.path, "old"):
            _remove(old)

    def abort(self) -> None:
        if self.tmp is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            self.tmp = None


@contextlib.contextmanager
def atomic_directory(
    path: str | os.PathLike, *, overwrite: bool = False, marker: str | None = None
) -> Iterator[Path]:
    """Build a directory atomically: yield a temporary directory, rename it to ``path`` on success.

    The temporary directory is a hidden sibling of ``path`` (same file system, so the rename is
    atomic). On a clean exit every file in it is fsynced and it replaces ``path``; if ``path``
    already exists (only allowed with ``overwrite=True``) the old version is moved aside and
    deleted only after the new one is in place. On an exception (including
    ``KeyboardInterrupt``) the temporary directory is deleted and ``path`` is untouched.

    Args:
        path: the final directory.
        overwrite: replace an existing ``path``.
        marker: if given, an existing non-empty ``path`` is only replaced when it contains a
            file of this name (protects unrelated directories from ``overwrite=True``).

    Raises:
        DatasetExistsError: ``path`` exists and ``overwrite`` is False (checked before the
            build starts and again before the rename).
    """
    target = _AtomicDirectory(Path(path), overwrite, marker)
    tmp = target.open()
    try:
        yield tmp
        target.commit()
    finally:
        target.abort()


# ---------------------------------------------------------------------------------- writing
def _versions() -> tuple[str, dict[str, str]]:
    def version(dist: str) -> str:
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            return "unknown"

    others = {"numpy": np.__version__, "jax": version("jax"), "python": platform.python_version()}
    return version("jmacro"), others


def _check_name(name: str) -> str:
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise ValueError(
            f"array name {name!r} is not allowed: use letters, digits, '_' and '-' (it becomes "
            "the file name <name>.npy)."
        )
    return name


def _check_dtype(name: str, dtype: Any) -> None:
    """Refuse dtypes a plain .npy cannot hold safely (objects need pickle) or at all (keys)."""
    if jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key):
        raise TypeError(
            f"array {name!r} holds typed PRNG keys; store jax.random.key_data(keys) and "
            "rebuild them with jax.random.wrap_key_data after loading."
        )
    if np.dtype(dtype).kind not in _DTYPE_KINDS:
        raise TypeError(
            f"array {name!r} has dtype {dtype}; datasets hold numeric or bool arrays only."
        )


def _as_numpy(name: str, value: Any) -> np.ndarray:
    """Host copy (or view) of an array-like with a dtype that a dataset may hold."""
    if hasattr(value, "dtype"):
        _check_dtype(name, value.dtype)
    arr = np.asarray(value)
    _check_dtype(name, arr.dtype)
    return arr


def _npy_header(dtype: np.dtype, shape: tuple[int, ...]) -> bytes:
    """The exact header ``np.save`` writes for a C-ordered array of this dtype and shape."""
    buffer = io.BytesIO()
    header = {
        "descr": np.lib.format.dtype_to_descr(dtype),
        "fortran_order": False,
        "shape": shape,
    }
    try:
        np.lib.format.write_array_header_1_0(buffer, header)
    except ValueError:  # header over 64 KiB: np.save switches to version 2.0 as well
        buffer = io.BytesIO()
        np.lib.format.write_array_header_2_0(buffer, header)
    return buffer.getvalue()


def _data_chunks(arr: np.ndarray) -> Iterator[memoryview]:
    """The C-order data bytes of ``arr`` in chunks of about ``_CHUNK_BYTES``."""
    if arr.ndim == 0 or arr.size == 0:
        yield memoryview(np.ascontiguousarray(arr).reshape(-1).view(np.uint8))
        return
    rows = max(1, _CHUNK_BYTES // max(1, arr[0].nbytes))
    for start in range(0, arr.shape[0], rows):
        chunk = np.ascontiguousarray(arr[start : start + rows])
        yield memoryview(chunk.reshape(-1).view(np.uint8))


class _ArrayFile:
    """One ``.npy`` file being streamed: header first, rows appended, header fixed at close."""

    def __init__(self, path: Path, dtype: np.dtype, item_shape: tuple[int, ...] | None):
        self.path = path
        self.dtype = dtype
        self.item_shape = item_shape  # None: a whole array written at once (possibly 0-d)
        self.length = 0
        self.shape: tuple[int, ...] = ()
        self.hash = hashlib.sha256()
        self.file: BinaryIO = open(path, "wb")
        shape = (0, *item_shape) if item_shape is not None else ()
        self.header_size = 0
        if item_shape is not None:
            self._write_header(shape)

    def _write_header(self, shape: tuple[int, ...]) -> None:
        header = _npy_header(self.dtype, shape)
        self.file.write(header)
        self.header_size = len(header)

    def write_whole(self, arr: np.ndarray) -> None:
        self._write_header(arr.shape)
        self._write_data(arr)
        self.shape = arr.shape

    def append(self, batch: np.ndarray) -> None:
        self._write_data(batch)
        self.length += batch.shape[0]

    def _write_data(self, arr: np.ndarray) -> None:
        for chunk in _data_chunks(arr):
            self.file.write(chunk)
            self.hash.update(chunk)

    def finish(self) -> dict[str, Any]:
        """Fix the header to the final length, fsync, close; return the meta entry."""
        if self.item_shape is not None:
            self.shape = (self.length, *self.item_shape)
            header = _npy_header(self.dtype, self.shape)
            if len(header) == self.header_size:
                # numpy pads headers so the leading length can grow in place.
                self.file.seek(0)
                self.file.write(header)
            else:
                self._rewrite_with_header(header)
        self.file.flush()
        os.fsync(self.file.fileno())
        self.file.close()
        nbytes = int(np.prod(self.shape, dtype=np.int64)) * self.dtype.itemsize
        return {
            "shape": list(self.shape),
            "dtype": self.dtype.str,
            "nbytes": nbytes,
            "sha256": self.hash.hexdigest(),
        }

    def _rewrite_with_header(self, header: bytes) -> None:
        # Fallback for a numpy that does not pad headers: copy the data behind a new header.
        self.file.close()
        staged = self.path.with_suffix(".part")
        os.replace(self.path, staged)
        with open(staged, "rb") as src, open(self.path, "wb") as dst:
            dst.write(header)
            src.seek(self.header_size)
            shutil.copyfileobj(src, dst, _CHUNK_BYTES)
        staged.unlink()
        self.file = open(self.path, "ab")

    def close(self) -> None:
        self.file.close()


class DatasetWriter:
    """Write a dataset array by array, or batch by batch, atomically (a context manager).

    Inside the ``with`` block, ``add`` writes a whole array and ``append`` streams batches along
    the leading axis straight to disk (memory use is one batch, whatever the total size). The
    dataset appears at ``path`` only when the block exits cleanly; on any exception (including
    ``KeyboardInterrupt``) nothing is left behind and ``path`` is unchanged.

    Args:
        path: the dataset directory to create.
        meta: JSON-able user meta (config, seeds, ...); may be extended via ``writer.meta``
            until the block ends. Keys in ``RESERVED_META_KEYS`` are not allowed.
        lengths: optional expected total leading length of appended arrays, ``{name: n}``;
            appending past it raises at once, and stopping short raises at the end (so a
            generator that ended early cannot produce a complete-looking dataset).
        overwrite: replace an existing dataset at ``path`` (the old one is deleted only after
            the new one is in place).

    Example::

        with DatasetWriter(path, {"seed": 0}, lengths={"spins": 1000}) as writer:
            for batch in batches:               # each (b, H, W), b summing to 1000
                writer.append("spins", batch)
            writer.add("temperature", np.float32(2.5))
    """

    def __init__(
        self,
        path: str | os.PathLike,
        meta: Mapping[str, Any] | None = None,
        *,
        lengths: Mapping[str, int] | None = None,
        overwrite: bool = False,
    ):
        self.path = Path(path)
        self.meta: dict[str, Any] = dict(meta or {})
        _check_user_meta(self.meta)  # fail before any expensive work
        self.lengths = {}
        for name, length in (lengths or {}).items():
            if isinstance(length, bool) or not isinstance(length, int | np.integer) or length < 0:
                raise ValueError(f"lengths[{name!r}] must be an integer >= 0, got {length!r}.")
            self.lengths[_check_name(name)] = int(length)
        self._target = _AtomicDirectory(self.path, overwrite, marker=META_FILE)
        self._files: dict[str, _ArrayFile] = {}
        self._open = False

    def __enter__(self) -> DatasetWriter:
        self._target.open()
        self._open = True
        return self

    def __exit__(self, exc_type: Any, exc: Any, traceback: Any) -> None:
        try:
            if exc_type is None:
                self._commit()
        finally:
            for file in self._files.values():
                file.close()
            self._target.abort()  # no-op after a successful commit
            self._open = False

    def _file(self, name: str) -> Path:
        if not self._open or self._target.tmp is None:
            raise RuntimeError("use DatasetWriter in a `with` block before adding arrays.")
        return self._target.tmp / f"{_check_name(name)}.npy"

    def add(self, name: str, array: Any) -> None:
        """Write the whole array ``name`` (any shape, including 0-d)."""
        file_path = self._file(name)
        if name in self._files:
            raise ValueError(f"array {name!r} was already written; each name is written once.")
        if name in self.lengths:
            raise ValueError(f"array {name!r} has an expected length; write it with append().")
        arr = _as_numpy(name, array)
        file = _ArrayFile(file_path, arr.dtype, None)
        self._files[name] = file
        file.write_whole(arr)

    def append(self, name: str, batch: Any) -> None:
        """Append ``batch`` of shape ``(b, *item_shape)`` to the array ``name``.

        The first batch fixes the dtype and ``item_shape``; later batches must match exactly
        (cast them yourself: silent casts would hide bugs).
        """
        file_path = self._file(name)
        arr = _as_numpy(name, batch)
        if arr.ndim == 0:
            raise ValueError(f"append({name!r}, ...) needs a batch with a leading axis, got 0-d.")
        file = self._files.get(name)
        if file is None:
            file = _ArrayFile(file_path, arr.dtype, arr.shape[1:])
            self._files[name] = file
        elif file.item_shape is None:
            raise ValueError(f"array {name!r} was written whole by add(); it cannot grow.")
        elif arr.dtype != file.dtype or arr.shape[1:] != file.item_shape:
            raise ValueError(
                f"batch for {name!r} has dtype {arr.dtype} and item shape {arr.shape[1:]}, but "
                f"earlier batches had {file.dtype} and {file.item_shape}."
            )
        expected = self.lengths.get(name)
        if expected is not None and file.length + arr.shape[0] > expected:
            raise ValueError(
                f"appending {arr.shape[0]} rows to {name!r} exceeds its expected length "
                f"{expected} (already {file.length})."
            )
        file.append(arr)

    def _commit(self) -> None:
        for name, expected in self.lengths.items():
            got = self._files[name].length if name in self._files else 0
            if got != expected:
                raise DatasetError(
                    f"array {name!r} got {got} rows but {expected} were expected; the dataset "
                    f"at {self.path} was not written. Check the generator that feeds it."
                )
        entries = {name: file.finish() for name, file in sorted(self._files.items())}
        _check_user_meta(self.meta)
        jmacro_version, versions = _versions()
        full_meta = {
            **to_jsonable(self.meta),
            "format": FORMAT_VERSION,
            "jmacro_version": jmacro_version,
            "versions": versions,
            "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "arrays": entries,
        }
        assert self._target.tmp is not None
        with open(self._target.tmp / META_FILE, "w", encoding="utf-8") as f:
            json.dump(full_meta, f, indent=2, sort_keys=True)
            f.write("\n")
        self._target.commit()


def _check_user_meta(meta: Mapping[str, Any]) -> None:
    clash = sorted(set(meta) & set(RESERVED_META_KEYS))
    if clash:
        raise ValueError(
            f"meta keys {clash} are reserved for the dataset format {RESERVED_META_KEYS}; "
            "rename them."
        )
    to_jsonable(meta)


def save_dataset(
    path: str | os.PathLike,
    arrays: Mapping[str, Any],
    meta: Mapping[str, Any] | None = None,
    *,
    overwrite: bool = False,
) -> Path:
    """Write ``arrays`` as ``<name>.npy`` files plus ``meta.json`` into the directory ``path``.

    Atomic: the directory is built as a hidden temporary sibling, fsynced and renamed into
    place; on failure nothing appears at ``path``. Same arrays give bit-identical ``.npy`` files.

    Args:
        path: the dataset directory (its parent is created if needed).
        arrays: ``{name: array}``, numpy or JAX arrays of numeric or bool dtype, any shape.
            Names use letters, digits, ``_`` and ``-``.
        meta: JSON-able user meta (config, seeds, ...), stored in ``meta.json`` next to the
            format fields ``format``, ``jmacro_version``, ``versions``, ``created``, ``arrays``.
        overwrite: replace an existing dataset (old one deleted only once the new one is in).

    Returns:
        The dataset path.

    Raises:
        DatasetExistsError: ``path`` exists and ``overwrite`` is False.
        ValueError / TypeError: a bad array name, dtype, or meta, before anything is written.
    """
    for name, value in arrays.items():  # validate everything before writing anything
        _check_name(name)
        _check_dtype(name, value.dtype if hasattr(value, "dtype") else np.asarray(value).dtype)
    with DatasetWriter(path, meta, overwrite=overwrite) as writer:
        for name, value in arrays.items():
            writer.add(name, value)
    return Path(path)


# ---------------------------------------------------------------------------------- reading
class Dataset(Mapping[str, np.ndarray]):
    """A loaded, validated dataset: a read-only mapping ``name -> np.ndarray`` (memmaps).

    Attributes:
        path: the dataset directory.
        meta: a copy of ``meta.json`` as a dict (user meta plus format fields).
    """

    def __init__(self, path: Path, arrays: dict[str, np.ndarray], meta: dict[str, Any]):
        self._path = path
        self._arrays = arrays
        self._meta = meta

    @property
    def path(self) -> Path:
        return self._path

    @property
    def meta(self) -> dict[str, Any]:
        return copy.deepcopy(self._meta)

    def __getitem__(self, name: str) -> np.ndarray:
        return self._arrays[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._arrays)

    def __len__(self) -> int:
        return len(self._arrays)

    def fingerprint(self) -> str:
        """SHA-256 hex digest of the array content (names, dtypes, shapes, data hashes).

        Two datasets with equal fingerprints hold identical arrays, whatever their meta or
        creation time. Computed from ``meta.json``'s recorded hashes: load with
        ``verify="full"`` to also check the files against them.
        """
        return _fingerprint(self._meta["arrays"])

    def __repr__(self) -> str:
        arrays = ", ".join(f"{n}: {a.dtype}{list(a.shape)}" for n, a in self._arrays.items())
        return f"Dataset({str(self._path)!r}, {{{arrays}}})"


def _fingerprint(entries: Mapping[str, Any]) -> str:
    content = [
        [name, entry["dtype"], list(entry["shape"]), entry["sha256"]]
        for name, entry in sorted(entries.items())
    ]
    return hashlib.sha256(json.dumps(content).encode()).hexdigest()


def _problem(
    path: Path, what: str, fix: str = "delete the directory and rebuild it"
) -> DatasetError:
    return DatasetError(f"invalid dataset at {path}: {what}. To fix: {fix}.")


def _read_meta(path: Path) -> dict[str, Any]:
    if not path.exists():
        hints = []
        old = _leftovers(path, "old")
        if old:
            hints.append(
                f" A previous version was set aside by an interrupted overwrite at {old[-1]}; "
                "rename it back to use it."
            )
        if _leftovers(path, "tmp"):
            hints.append(" An interrupted build left a temporary directory next to it.")
        raise DatasetNotFoundError(
            f"no dataset at {path}: the directory does not exist. Build it first (e.g. with "
            f"jmacro.scale.save_dataset) or check the path.{''.join(hints)}"
        )
    if not path.is_dir():
        raise _problem(path, "it is not a directory", "pass the dataset directory")
    meta_path = path / META_FILE
    if not meta_path.is_file():
        raise _problem(
            path,
            f"{META_FILE} is missing, so the build did not finish or the directory is not a "
            "jmacro dataset",
        )
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise _problem(path, f"{META_FILE} is not valid JSON ({err})") from err
    if not isinstance(meta, dict):
        raise _problem(path, f"{META_FILE} does not hold a JSON object")
    fmt = meta.get("format")
    if fmt not in KNOWN_FORMATS:
        raise _problem(
            path,
            f"{META_FILE} has format {fmt!r}, but this jmacro reads formats {list(KNOWN_FORMATS)}",
            "use the jmacro version that wrote it, or rebuild the dataset",
        )
    entries = meta.get("arrays")
    if not isinstance(entries, dict):
        raise _problem(path, f"{META_FILE} has no 'arrays' table")
    for name, entry in entries.items():
        ok = (
            isinstance(entry, dict)
            and _NAME_RE.match(name)
            and isinstance(entry.get("shape"), list)
            and all(isinstance(n, int) and n >= 0 for n in entry["shape"])
            and isinstance(entry.get("dtype"), str)
            and isinstance(entry.get("nbytes"), int)
            and isinstance(entry.get("sha256"), str)
        )
        if not ok:
            raise _problem(path, f"{META_FILE} has a malformed entry for array {name!r}")
    return meta


def _check_array_file(path: Path, name: str, entry: Mapping[str, Any]) -> None:
    file_path = path / f"{name}.npy"
    if not file_path.is_file():
        raise _problem(path, f"array file {file_path.name} listed in {META_FILE} is missing")
    try:
        with open(file_path, "rb") as f:
            version = np.lib.format.read_magic(f)
            if version == (1, 0):
                shape, fortran_order, dtype = np.lib.format.read_array_header_1_0(f)
            else:
                shape, fortran_order, dtype = np.lib.format.read_array_header_2_0(f)
            data_offset = f.tell()
    except (ValueError, OSError, SyntaxError) as err:
        raise _problem(path, f"{file_path.name} has a corrupt .npy header ({err})") from err
    try:
        recorded = np.dtype(entry["dtype"])
    except TypeError as err:
        raise _problem(path, f"{META_FILE} records an unknown dtype for {name!r}") from err
    if tuple(shape) != tuple(entry["shape"]) or dtype != recorded or fortran_order:
        raise _problem(
            path,
            f"{file_path.name} holds {dtype}{list(shape)} but {META_FILE} records "
            f"{recorded}{entry['shape']}; the files do not belong together",
        )
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if nbytes != entry["nbytes"]:
        raise _problem(
            path, f"{META_FILE} records {entry['nbytes']} bytes for {name!r}, not {nbytes}"
        )
    size = file_path.stat().st_size
    if size != data_offset + nbytes:
        state = "truncated" if size < data_offset + nbytes else "longer than its header says"
        raise _problem(
            path, f"{file_path.name} is {state} ({size} bytes, expected {data_offset + nbytes})"
        )


def _data_sha256(arr: np.ndarray) -> str:
    digest = hashlib.sha256()
    for chunk in _data_chunks(arr):
        digest.update(chunk)
    return digest.hexdigest()


def load_dataset(
    path: str | os.PathLike,
    mmap: bool = True,
    verify: Literal["shape", "full"] = "shape",
) -> Dataset:
    """Load and validate the dataset at ``path``.

    Validation, before anything is returned: ``meta.json`` exists, parses and has a known
    format; every listed array file exists, and its header and size match the recorded shape,
    dtype and byte count (so a truncated file is caught); no ``.npy`` file is unlisted. With
    ``verify="full"`` the SHA-256 of every array's data is also recomputed (reads everything).

    Args:
        path: the dataset directory.
        mmap: memory-map the arrays (read-only ``np.memmap``) instead of reading them.
        verify: ``"shape"`` (cheap, the default) or ``"full"`` (also checks content hashes).

    Returns:
        A read-only ``Dataset``.

    Raises:
        DatasetNotFoundError: nothing exists at ``path``.
        DatasetError: anything else wrong; the message names the file and the fix.
    """
    if verify not in ("shape", "full"):
        raise ValueError(f"verify must be 'shape' or 'full', got {verify!r}.")
    path = Path(path)
    meta = _read_meta(path)
    entries = meta["arrays"]
    for name, entry in entries.items():
        _check_array_file(path, name, entry)
    unexpected = sorted(
        p.name for p in path.iterdir() if p.suffix == ".npy" and p.stem not in entries
    )
    if unexpected:
        raise _problem(
            path,
            f"{unexpected} are not listed in {META_FILE}, so their origin is unknown",
            "delete the directory and rebuild it (or remove the stray files if you know why "
            "they are there)",
        )
    arrays = {}
    for name in sorted(entries):
        file_path = path / f"{name}.npy"
        arr = np.load(file_path, mmap_mode="r" if mmap else None, allow_pickle=False)
        if not mmap:
            arr.setflags(write=False)
        if verify == "full" and _data_sha256(arr) != entries[name]["sha256"]:
            raise _problem(path, f"the content of {file_path.name} does not match its sha256")
        arrays[name] = arr
    return Dataset(path, arrays, meta)
