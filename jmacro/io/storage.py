"""Datasets on disk: a directory of ``.npy`` arrays plus ``meta.json``, written atomically.

Layout of a dataset directory ``path/``::

    path/meta.json    user meta + {"format", "jmacro_version", "versions", "created", "arrays"}
    path/<name>.npy   one plain .npy file per array (np.save / open_memmap; np.load reads it)

``meta.json["arrays"][name]`` records ``shape``, ``dtype``, ``nbytes`` and ``sha256`` (of the
array's C-order data bytes, not the header); ``Dataset.fingerprint()`` hashes these records.

Guarantees:

- Atomic (``jmacro.io.atomic.atomic_directory``): a dataset is built in a hidden temporary
  sibling, fsynced and renamed into place, so nothing at ``path`` looks complete unless it is.
  An overwrite deletes the old dataset only once the new one is in place, a failed build leaves
  it untouched, and leftovers of killed builds are deleted by the next save to the same path.
- Validated on load, before anything is returned: ``meta.json`` parses and has a known format;
  every listed file exists, its ``.npy`` header has the shape and dtype recorded in
  ``meta.json`` and its size matches the header (so truncation is caught); no unlisted ``.npy``
  file is present. Each failure is a ``DatasetError`` naming the file and the fix.
  ``verify="full"`` also recomputes the data hashes (it reads everything).
- Reproducible: identical arrays give bit-identical ``.npy`` files whatever the meta.

Example::

    save_dataset("runs/a/small", {"spins": spins, "times": times}, {"seed": 0})
    data = load_dataset("runs/a/small")          # validated, memory-mapped, read-only
    with DatasetWriter("runs/a/big", {"seed": 0}) as writer:
        out = writer.allocate("spins", (100_000, 64, 64), np.int8)   # a writable np.memmap
        for start, batch in batches:
            out[start : start + len(batch)] = batch
"""

from __future__ import annotations

import contextlib
import copy
import datetime
import hashlib
import importlib.metadata
import json
import math
import os
import platform
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Literal

import jax
import numpy as np

from jmacro.io.atomic import atomic_directory, leftovers
from jmacro.io.jsonable import to_jsonable

FORMAT_VERSION = 1
"""Version of the on-disk layout written by this module."""
KNOWN_FORMATS = (1,)
META_FILE = "meta.json"
# Keys that the dataset format writes itself; user meta may not use them.
RESERVED_META_KEYS = ("format", "jmacro_version", "versions", "created", "arrays")

# Array names become file names: keep them portable and free of path separators.
_NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_\-]*$")
# Numeric dtypes only: object arrays would need pickle, structured ones complicate headers.
_DTYPE_KINDS = "biufc"
_HEADER_READERS = {
    (1, 0): np.lib.format.read_array_header_1_0,
    (2, 0): np.lib.format.read_array_header_2_0,
}


class DatasetError(ValueError):
    """A dataset on disk is missing, incomplete, corrupt, or cannot be written as asked."""


class DatasetNotFoundError(DatasetError, FileNotFoundError):
    """No dataset directory exists at the given path."""


class DatasetExistsError(DatasetError, FileExistsError):
    """The target path already exists and may not be replaced (``overwrite`` not requested)."""


# ---------------------------------------------------------------------------------- writing
def _check_name(name: str) -> str:
    """Array names become file names: letters, digits, ``_`` and ``-`` only."""
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise ValueError(
            f"array name {name!r} is not allowed: use letters, digits, '_' and '-' (it becomes "
            "the file name <name>.npy)."
        )
    return name


def _check_array(name: str, dtype: Any) -> np.dtype:
    """Check the name, and refuse dtypes a plain ``.npy`` cannot hold safely (objects need
    pickle) or at all (typed PRNG keys)."""
    _check_name(name)
    if jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key):
        raise TypeError(
            f"array {name!r} holds typed PRNG keys; store jax.random.key_data(keys) and "
            "rebuild them with jax.random.wrap_key_data after loading."
        )
    if np.dtype(dtype).kind not in _DTYPE_KINDS:
        raise TypeError(
            f"array {name!r} has dtype {dtype}; datasets hold numeric or bool arrays only."
        )
    return np.dtype(dtype)


def _as_numpy(name: str, value: Any) -> np.ndarray:
    """A C-ordered host array (a view where possible) that a dataset may hold."""
    _check_array(name, value.dtype if hasattr(value, "dtype") else np.asarray(value).dtype)
    return np.asarray(value, order="C")


def _check_user_meta(meta: Mapping[str, Any]) -> None:
    if clash := sorted(set(meta) & set(RESERVED_META_KEYS)):
        raise ValueError(f"meta keys {clash} are reserved for the dataset format; rename them.")
    to_jsonable(meta)


class DatasetWriter:
    """Write a dataset array by array, or batch by batch, atomically (a context manager).

    Inside the ``with`` block: ``add`` writes a whole array (``np.save``); ``allocate`` creates
    an array of known shape on disk and returns it as a writable ``np.memmap`` to fill in place;
    ``append`` streams batches along the leading axis, straight into an allocated memmap when
    ``lengths`` gives the total, else each batch into a temporary file joined at the end, so
    memory use is one batch. The dataset appears at ``path`` only when the block exits cleanly;
    on any exception (``KeyboardInterrupt`` included) nothing is left behind and an existing
    dataset at ``path`` is unchanged.

    Args:
        path: the dataset directory to create.
        meta: JSON-able user meta (config, seeds, ...); may be extended via ``writer.meta``
            until the block ends. Keys in ``RESERVED_META_KEYS`` are not allowed.
        lengths: expected total leading length of appended arrays, ``{name: n}``; appending
            past it raises at once, stopping short raises at the end (so a generator that ended
            early cannot produce a complete-looking dataset).
        overwrite: replace an existing dataset at ``path`` (deleted only once the new one is
            in place; a non-empty directory without ``meta.json`` is never replaced).
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
        self.lengths: dict[str, int] = {}
        for name, length in (lengths or {}).items():
            if isinstance(length, bool) or not isinstance(length, int | np.integer) or length < 0:
                raise ValueError(f"lengths[{name!r}] must be an integer >= 0, got {length!r}.")
            self.lengths[_check_name(name)] = int(length)
        self.overwrite = overwrite
        self._tmp: Path | None = None
        self._names: set[str] = set()  # arrays written so far
        self._memmaps: dict[str, np.memmap] = {}  # flushed when the block ends
        self._appended: dict[str, tuple[np.dtype, tuple[int, ...], int]] = {}  # dtype, item, rows
        self._parts: dict[str, list[Path]] = {}  # batches of appended arrays of unknown length

    def __enter__(self) -> DatasetWriter:
        self._stack = contextlib.ExitStack()
        with _exists_as_dataset_error():
            target = atomic_directory(self.path, overwrite=self.overwrite, marker=META_FILE)
            self._tmp = self._stack.enter_context(target)
        return self

    def __exit__(self, exc_type: Any, exc: Any, traceback: Any) -> None:
        try:
            if exc_type is not None:  # the temporary directory is deleted, path untouched
                self._stack.__exit__(exc_type, exc, traceback)
            else:
                with _exists_as_dataset_error(), self._stack:  # renamed into place on success
                    self._finish()
        finally:
            self._memmaps.clear()
            self._tmp = None

    def _claim(self, name: str, append: bool = False) -> Path:
        """The file of the new array ``name`` in the temporary directory."""
        if self._tmp is None:
            raise RuntimeError("use DatasetWriter in a `with` block before adding arrays.")
        if name in self._names:
            raise ValueError(f"array {name!r} was already written; each name is written once.")
        if name in self.lengths and not append:
            raise ValueError(f"array {name!r} has an expected length; write it with append().")
        self._names.add(name)
        return self._tmp / f"{name}.npy"

    def add(self, name: str, array: Any) -> None:
        """Write the whole array ``name`` (numpy or JAX, any shape including 0-d)."""
        arr = _as_numpy(name, array)
        np.save(self._claim(name), arr, allow_pickle=False)

    def allocate(self, name: str, shape: tuple[int, ...], dtype: Any) -> np.memmap:
        """Create the array ``name`` on disk and return it as a writable ``np.memmap``.

        Fill it before the ``with`` block ends (entries never written stay zero) and do not use
        it afterwards. Memory use is what the caller touches, whatever the total size.
        """
        dtype = _check_array(name, dtype)
        out = np.lib.format.open_memmap(self._claim(name), "w+", dtype, tuple(shape))
        self._memmaps[name] = out
        return out

    def append(self, name: str, batch: Any) -> None:
        """Append ``batch`` of shape ``(b, *item_shape)`` to the array ``name``.

        The first batch fixes the dtype and ``item_shape``; later batches must match exactly
        (cast them yourself: silent casts would hide bugs).
        """
        arr = _as_numpy(name, batch)
        if arr.ndim == 0:
            raise ValueError(f"append({name!r}, ...) needs a batch with a leading axis, got 0-d.")
        expected = self.lengths.get(name)
        if name not in self._appended:
            file = self._claim(name, append=True)
            self._appended[name] = (arr.dtype, arr.shape[1:], 0)
            if expected is None:
                self._parts[name] = []
            else:
                shape = (expected, *arr.shape[1:])
                self._memmaps[name] = np.lib.format.open_memmap(file, "w+", arr.dtype, shape)
        dtype, item_shape, start = self._appended[name]
        if arr.dtype != dtype or arr.shape[1:] != item_shape:
            raise ValueError(
                f"batch for {name!r} has dtype {arr.dtype} and item shape {arr.shape[1:]}, but "
                f"earlier batches had {dtype} and {item_shape}."
            )
        if expected is None:
            part = self._tmp / f".{name}.part-{len(self._parts[name]):08d}.npy"
            np.save(part, arr, allow_pickle=False)
            self._parts[name].append(part)
        elif start + len(arr) > expected:
            raise ValueError(
                f"appending {len(arr)} rows to {name!r} exceeds its expected length "
                f"{expected} (already {start})."
            )
        else:
            self._memmaps[name][start : start + len(arr)] = arr
        self._appended[name] = (dtype, item_shape, start + len(arr))

    def _finish(self) -> None:
        """Check lengths, join appended parts, flush memmaps, hash, and write ``meta.json``."""
        for name, expected in self.lengths.items():
            if (got := self._appended.get(name, (None, None, 0))[2]) != expected:
                raise DatasetError(
                    f"array {name!r} got {got} rows but {expected} were expected; the dataset "
                    f"at {self.path} was not written. Check the generator that feeds it."
                )
        for name, parts in self._parts.items():  # join the batches of unknown-length arrays
            dtype, item_shape, rows = self._appended[name]
            file = self._tmp / f"{name}.npy"
            out = np.lib.format.open_memmap(file, "w+", dtype, (rows, *item_shape))
            start = 0
            for part in parts:  # one batch in memory at a time
                batch = np.load(part)
                out[start : start + len(batch)] = batch
                start += len(batch)
                part.unlink()
            self._memmaps[name] = out
        for out in self._memmaps.values():
            out.flush()
        self._memmaps.clear()
        entries = {}
        for name in sorted(self._names):
            shape, dtype, _ = _read_header(self._tmp / f"{name}.npy")
            entries[name] = {
                "shape": list(shape),
                "dtype": dtype.str,
                "nbytes": math.prod(shape) * dtype.itemsize,
                "sha256": _data_sha256(self._tmp / f"{name}.npy"),
            }
        _check_user_meta(self.meta)
        meta = {
            **to_jsonable(self.meta),
            "format": FORMAT_VERSION,
            "jmacro_version": _version("jmacro"),
            "versions": {
                "numpy": np.__version__,
                "jax": _version("jax"),
                "python": platform.python_version(),
            },
            "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "arrays": entries,
        }
        text = json.dumps(meta, indent=2, sort_keys=True) + "\n"
        (self._tmp / META_FILE).write_text(text, encoding="utf-8")


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


@contextlib.contextmanager
def _exists_as_dataset_error() -> Iterator[None]:
    """Re-raise ``atomic_directory``'s refusals to replace ``path`` as ``DatasetExistsError``."""
    try:
        yield
    except FileExistsError as err:
        if isinstance(err, DatasetError):
            raise
        raise DatasetExistsError(str(err)) from None


def save_dataset(
    path: str | os.PathLike,
    arrays: Mapping[str, Any],
    meta: Mapping[str, Any] | None = None,
    *,
    overwrite: bool = False,
) -> Path:
    """Write ``arrays`` as ``<name>.npy`` files plus ``meta.json`` into the directory ``path``.

    Atomic (see the module docstring): on failure nothing appears at ``path``.

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
        _check_array(name, value.dtype if hasattr(value, "dtype") else np.asarray(value).dtype)
    with DatasetWriter(path, meta, overwrite=overwrite) as writer:
        for name, value in arrays.items():
            writer.add(name, value)
    return Path(path)


# ---------------------------------------------------------------------------------- reading
class Dataset(Mapping[str, np.ndarray]):
    """A loaded, validated dataset: a read-only mapping ``name -> np.ndarray`` (memmaps).

    Attributes:
        path: the dataset directory.
    """

    def __init__(self, path: Path, arrays: dict[str, np.ndarray], meta: dict[str, Any]):
        self.path = path
        self._arrays = arrays
        self._meta = meta

    @property
    def meta(self) -> dict[str, Any]:
        """A copy of ``meta.json`` (user meta plus the format fields)."""
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
        creation time. Computed from the hashes recorded in ``meta.json``: load with
        ``verify="full"`` to also check the files against them.
        """
        content = [
            [name, entry["dtype"], list(entry["shape"]), entry["sha256"]]
            for name, entry in sorted(self._meta["arrays"].items())
        ]
        return hashlib.sha256(json.dumps(content).encode()).hexdigest()

    def __repr__(self) -> str:
        arrays = ", ".join(f"{n}: {a.dtype}{list(a.shape)}" for n, a in self._arrays.items())
        return f"Dataset({str(self.path)!r}, {{{arrays}}})"


def _read_header(file: Path) -> tuple[tuple[int, ...], np.dtype, int]:
    """``(shape, dtype, data offset)`` of a C-ordered ``.npy`` file, from its header."""
    with open(file, "rb") as f:
        version = np.lib.format.read_magic(f)
        if version not in _HEADER_READERS:
            raise ValueError(f".npy version {version} is not one jmacro writes")
        shape, fortran_order, dtype = _HEADER_READERS[version](f)
        if fortran_order:
            raise ValueError("the array is stored in Fortran order")
        return shape, dtype, f.tell()


def _data_sha256(file: Path) -> str:
    """SHA-256 of the data bytes of a ``.npy`` file (everything after its header)."""
    with open(file, "rb") as f:
        f.seek(_read_header(file)[2])
        return hashlib.file_digest(f, "sha256").hexdigest()


def _problem(
    path: Path, what: str, fix: str = "delete the directory and rebuild it"
) -> DatasetError:
    return DatasetError(f"invalid dataset at {path}: {what}. To fix: {fix}.")


def _read_meta(path: Path) -> dict[str, Any]:
    """``meta.json`` of the dataset at ``path``, checked for format and well-formed entries."""
    if not path.exists():
        hints = ""
        if old := leftovers(path, "old"):
            hints += f" An interrupted overwrite set the old version aside at {old[-1]}; "
            hints += "rename it back to use it."
        if leftovers(path, "tmp"):
            hints += " An interrupted build left a temporary directory next to it."
        raise DatasetNotFoundError(
            f"no dataset at {path}: the directory does not exist. Build it first (e.g. with "
            f"jmacro.io.storage.save_dataset) or check the path.{hints}"
        )
    if not (path / META_FILE).is_file():
        raise _problem(
            path, f"{META_FILE} is missing: the build did not finish or it is no dataset"
        )
    try:
        meta = json.loads((path / META_FILE).read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise _problem(path, f"{META_FILE} is not valid JSON ({err})") from err
    if not isinstance(meta, dict):
        raise _problem(path, f"{META_FILE} does not hold a JSON object")
    if meta.get("format") not in KNOWN_FORMATS:
        raise _problem(
            path,
            f"{META_FILE} has format {meta.get('format')!r}, but this jmacro reads formats "
            f"{list(KNOWN_FORMATS)}",
            "use the jmacro version that wrote it, or rebuild the dataset",
        )
    if not isinstance(meta.get("arrays"), dict):
        raise _problem(path, f"{META_FILE} has no 'arrays' table")
    for name, entry in meta["arrays"].items():
        if not _well_formed(name, entry):
            raise _problem(path, f"{META_FILE} has a malformed entry for array {name!r}")
    return meta


def _well_formed(name: str, entry: Any) -> bool:
    """Whether a ``meta.json["arrays"]`` entry has a valid name, shape, dtype and hash."""
    try:
        shape, dtype = entry["shape"], entry["dtype"]
        return (
            bool(_NAME_RE.match(name))
            and isinstance(entry["sha256"], str)
            and isinstance(shape, list)
            and all(isinstance(n, int) and n >= 0 for n in shape)
            and isinstance(dtype, str)
            and np.dtype(dtype).kind in _DTYPE_KINDS
        )
    except (KeyError, TypeError):
        return False


def _check_array_file(path: Path, name: str, entry: Mapping[str, Any]) -> None:
    """The ``.npy`` file of ``name`` exists, matches ``entry`` and has exactly its data."""
    file = path / f"{name}.npy"
    if not file.is_file():
        raise _problem(path, f"array file {file.name} listed in {META_FILE} is missing")
    try:
        shape, dtype, offset = _read_header(file)
    except (ValueError, OSError, SyntaxError) as err:
        raise _problem(path, f"{file.name} has a corrupt .npy header ({err})") from err
    recorded = np.dtype(entry["dtype"])
    if list(shape) != entry["shape"] or dtype != recorded:
        raise _problem(
            path,
            f"{file.name} holds {dtype}{list(shape)} but {META_FILE} records "
            f"{recorded}{entry['shape']}; the files do not belong together",
        )
    expected, size = offset + math.prod(shape) * dtype.itemsize, file.stat().st_size
    if size != expected:
        state = "truncated" if size < expected else "longer than its header says"
        raise _problem(path, f"{file.name} is {state} ({size} bytes, expected {expected})")


def load_dataset(
    path: str | os.PathLike, mmap: bool = True, verify: Literal["shape", "full"] = "shape"
) -> Dataset:
    """Load and validate the dataset at ``path`` (the checks are in the module docstring).

    Args:
        path: the dataset directory.
        mmap: memory-map the arrays (read-only ``np.memmap``) instead of reading them.
        verify: ``"shape"`` (the default: ``meta.json``, headers, sizes; cheap) or ``"full"``
            (also recomputes every array's SHA-256, which reads all the data).

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
        if verify == "full" and _data_sha256(path / f"{name}.npy") != entry["sha256"]:
            raise _problem(path, f"the content of {name}.npy does not match its sha256")
    if unexpected := sorted(p.name for p in path.glob("*.npy") if p.stem not in entries):
        raise _problem(
            path,
            f"{unexpected} are not listed in {META_FILE}, so their origin is unknown",
            "delete the directory and rebuild it (or the stray files, if you know their origin)",
        )
    arrays = {}
    for name in sorted(entries):
        arrays[name] = np.load(path / f"{name}.npy", "r" if mmap else None, allow_pickle=False)
        arrays[name].setflags(write=False)
    return Dataset(path, arrays, meta)
