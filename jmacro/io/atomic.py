"""Atomic writes: a file or directory is at its final path complete, or is not changed at all.

Every write in jmacro that must survive a crash goes through this module:

- ``atomic_file`` (a context manager yielding a binary file), ``atomic_write_bytes``,
  ``atomic_write_text`` and ``atomic_write_json`` for single files (checkpoints, JSON records);
- ``atomic_directory`` for a directory built file by file (datasets, cached stage outputs).

How (POSIX, one file system): the content is written to a hidden sibling
``.<name>.tmp-<pid>-<token>`` of the final path (same directory, so the rename cannot cross
file systems), every file in it is flushed and fsynced, it is renamed onto the final path with
``os.replace`` (an atomic rename), and the parent directory is fsynced. Guarantees:

- If the code writing the content raises (``KeyboardInterrupt`` included), the temporary is
  deleted and the final path is untouched: an older file or directory stays as it was.
- A process killed outright (SIGKILL, power loss) leaves only its temporary sibling, which
  never looks complete. The next write to the same path deletes the temporaries of processes
  that are no longer alive (the pid is part of the name; those of live processes are kept).
- POSIX cannot rename a directory onto a non-empty one, so an existing directory is first
  renamed aside to ``.<name>.old-<pid>-<token>``, the new one renamed in, and only then the old
  one deleted; if the second rename fails, the old one is put back. A crash exactly between the
  two renames leaves the previous version under its ``.old-`` name (``leftovers`` finds it; the
  next successful write deletes it).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import secrets
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, BinaryIO, Literal

logger = logging.getLogger(__name__)


def leftovers(path: str | os.PathLike, kind: Literal["tmp", "old"]) -> list[Path]:
    """Siblings of ``path`` left by dead writers: temporaries (``"tmp"``) or set-aside old
    versions (``"old"``), recognised by their name and a process id that no longer runs."""
    path = Path(path)
    if not path.parent.is_dir():
        return []
    pattern = re.compile(rf"^\.{re.escape(path.name)}\.{kind}-(\d+)-[0-9a-f]+$")
    found = []
    for entry in path.parent.iterdir():
        match = pattern.match(entry.name)
        if match and not _pid_alive(int(match.group(1))):
            found.append(entry)
    return sorted(found)


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike) -> Iterator[BinaryIO]:
    """Write the file ``path`` atomically: yield a binary file, rename it onto ``path`` on exit.

    On a clean exit the file is flushed, fsynced and renamed onto ``path`` (replacing an older
    file); on an exception it is deleted and ``path`` is unchanged. The parent directory is
    created if needed. Example: ``with atomic_file(p) as f: eqx.tree_serialise_leaves(f, m)``.
    """
    path = Path(path)
    tmp = _start(path)
    try:
        with open(tmp, "xb") as file:
            yield file
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)  # gone already after a successful rename
    _fsync(path.parent)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Atomically replace the file ``path`` with ``data`` (see ``atomic_file``)."""
    with atomic_file(path) as file:
        file.write(data)


def atomic_write_text(path: str | os.PathLike, text: str, encoding: str = "utf-8") -> None:
    """Atomically replace the file ``path`` with ``text`` encoded as ``encoding``."""
    atomic_write_bytes(path, text.encode(encoding))


def atomic_write_json(
    path: str | os.PathLike, data: Any, *, default: Callable[[Any], Any] | None = None
) -> None:
    """Atomically write ``data`` as indented JSON with sorted keys and a final newline.

    ``default`` converts objects ``json`` cannot store, as in ``json.dumps``.
    """
    text = json.dumps(data, indent=2, sort_keys=True, default=default) + "\n"
    atomic_write_text(path, text)


@contextlib.contextmanager
def atomic_directory(
    path: str | os.PathLike, *, overwrite: bool = False, marker: str | None = None
) -> Iterator[Path]:
    """Build a directory atomically: yield a temporary directory, rename it to ``path`` on exit.

    On a clean exit every file in the temporary directory is fsynced and the directory renamed
    onto ``path``; an existing ``path`` (allowed with ``overwrite=True`` only) is moved aside
    and deleted only once the new version is in place. On an exception (``KeyboardInterrupt``
    included) the temporary directory is deleted and ``path`` is unchanged.

    Args:
        path: the final directory (its parent is created if needed).
        overwrite: replace an existing directory at ``path``.
        marker: if given, an existing non-empty ``path`` is only replaced when it contains a
            file of this name (protects unrelated directories from ``overwrite=True``).

    Raises:
        FileExistsError: ``path`` exists and may not be replaced (``overwrite`` is False, it is
            not a directory, or it lacks ``marker``); checked before the build starts and again
            just before the rename.
    """
    path = Path(path)
    _check_target(path, overwrite, marker)
    tmp = _start(path)
    tmp.mkdir()
    try:
        yield tmp
        for root, _, files in os.walk(tmp):
            for name in files:
                _fsync(Path(root) / name)
        _fsync(tmp)
        _check_target(path, overwrite, marker)  # it may have appeared during the build
        aside = None
        if path.exists():
            aside = _sibling(path, "old")
            os.replace(path, aside)
        try:
            os.replace(tmp, path)
        except BaseException:
            if aside is not None:  # put the previous version back: never leave neither
                os.replace(aside, path)
            raise
        _fsync(path.parent)
        # Only now that the new version is in place may old versions be deleted.
        for old in ([aside] if aside is not None else []) + leftovers(path, "old"):
            _remove(old)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _check_target(path: Path, overwrite: bool, marker: str | None) -> None:
    if not (path.exists() or path.is_symlink()):
        return
    if not overwrite:
        raise FileExistsError(
            f"{path} already exists. Pass overwrite=True to replace it, or choose another path."
        )
    if path.is_symlink() or not path.is_dir():
        raise FileExistsError(
            f"{path} exists and is not a directory; refusing to replace it. Remove it yourself "
            "if it is not needed."
        )
    if marker is not None and any(path.iterdir()) and not (path / marker).is_file():
        raise FileExistsError(
            f"{path} exists but has no {marker}, so it was not written by jmacro; refusing to "
            "delete it with overwrite=True. Delete it yourself if it is stale."
        )


def _start(path: Path) -> Path:
    """Create the parent, delete dead writers' temporaries, return a fresh temporary name."""
    path.parent.mkdir(parents=True, exist_ok=True)
    for stale in leftovers(path, "tmp"):
        logger.info("removing %s, left over by an interrupted write of %s", stale, path)
        _remove(stale)
    return _sibling(path, "tmp")


def _sibling(path: Path, kind: Literal["tmp", "old"]) -> Path:
    return path.parent / f".{path.name}.{kind}-{os.getpid()}-{secrets.token_hex(4)}"


def _pid_alive(pid: int) -> bool:
    """Whether a process with this id runs on this machine (signal 0 checks, sends nothing)."""
    try:
        os.kill(pid, 0)
    except PermissionError:  # it exists but belongs to another user
        return True
    except (ProcessLookupError, OverflowError, ValueError):  # gone, or not a valid pid
        return False
    return True


def _fsync(path: Path) -> None:
    """Flush a file's or directory's data and metadata to disk (best effort for directories)."""
    flags = os.O_RDONLY | (getattr(os, "O_DIRECTORY", 0) if path.is_dir() else 0)
    try:
        fd = os.open(path, flags)
    except OSError:  # some platforms cannot open directories
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)
