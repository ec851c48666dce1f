"""Stage cache: each pipeline stage's output lives in the run directory, keyed by its config.

A pipeline is a chain of stages (small-system data, upsampling, partial evolution, autoencoder,
SDE, test ground truth, evaluation). ``StageCache(run_dir)`` stores stage ``name`` in
``run_dir/<name>`` together with the fingerprint of the config that produced it. Asking for a
stage again loads it if the fingerprint matches and rebuilds it otherwise, so a re-run resumes
where it stopped and a changed parameter recomputes only the stages whose key depends on it.
Stale data is never reused silently: every rebuild is logged with its reason.

What a stage depends on is the caller's statement: put into ``key_config`` every config that
affects the output, including upstream stages, most simply via their fingerprints::

    cache = StageCache(run_dir)
    data = cache.get_or_build("small_data", cfg.data, build_small_data)
    model = cache.get_or_build_dir(
        "autoencoder", {"train": cfg.autoencoder, "data": data.fingerprint}, train_autoencoder
    )

Two kinds of stage:

- ``get_or_build``: the product is a dataset (``jmacro.io.storage``); ``build_fn(writer)``
  fills a ``DatasetWriter`` (``add``, ``allocate``, ``append``); the fingerprint sits in
  ``meta.json["stage"]``.
- ``get_or_build_dir``: the product is any directory (e.g. a model checkpoint);
  ``build_fn(tmp_dir)`` writes files into a temporary directory that is renamed into place
  atomically, with ``stage.json`` holding the fingerprint.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
import logging
import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from jmacro.io.atomic import atomic_directory
from jmacro.io.jsonable import to_jsonable
from jmacro.io.storage import (
    META_FILE,
    Dataset,
    DatasetError,
    DatasetNotFoundError,
    DatasetWriter,
    load_dataset,
)

logger = logging.getLogger(__name__)

STAGE_FILE = "stage.json"
STAGE_FORMAT = 1
# Key under which a dataset stage's meta.json records its name, fingerprint and config.
STAGE_META_KEY = "stage"
_STAGE_NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_\-]*$")
# How many differing config entries a log message lists before summarising the rest.
_MAX_DIFFS_SHOWN = 5


def canonical_config(obj: Any) -> Any:
    """The JSON tree that ``config_fingerprint`` hashes (see there for the conversion rules)."""
    return to_jsonable(obj, where="config")


def config_fingerprint(obj: Any) -> str:
    """Stable SHA-256 hex digest of a config: a dataclass, dict, or JSON-able tree.

    Dataclasses (and Equinox modules) are converted field by field like
    ``dataclasses.asdict`` (the class name is not part of the key); tuples and lists are
    equivalent; dict key order is irrelevant; numpy/JAX scalars and small arrays count as the
    Python numbers / nested lists they hold. Floats are hashed through ``repr``, which is the
    shortest string that round-trips, so the digest is identical across runs and machines.
    Note that ``1`` and ``1.0`` differ, as do ``0.1`` and ``np.float32(0.1)``.

    Raises:
        TypeError: a leaf that JSON cannot represent, naming where it sits.
    """
    text = json.dumps(
        canonical_config(obj), sort_keys=True, separators=(",", ":"), ensure_ascii=True
    )
    return hashlib.sha256(text.encode()).hexdigest()


def _config_diff(old: Any, new: Any, where: str = "") -> list[str]:
    """Human-readable list of entries that differ between two canonical config trees."""
    if isinstance(old, dict) and isinstance(new, dict):
        diffs = []
        for key in sorted(set(old) | set(new)):
            sub = f"{where}.{key}" if where else key
            if key not in old:
                diffs.append(f"{sub} added ({new[key]!r})")
            elif key not in new:
                diffs.append(f"{sub} removed (was {old[key]!r})")
            else:
                diffs.extend(_config_diff(old[key], new[key], sub))
        return diffs
    if old != new or type(old) is not type(new):
        return [f"{where or '<config>'}: {old!r} -> {new!r}"]
    return []


def describe_difference(old: Any, new: Any) -> str:
    """Which entries differ between two canonical configs (``canonical_config`` trees), e.g.
    ``"data.size: 8 -> 4; learning_rate added (0.001)"``, at most five then a count."""
    diffs = _config_diff(old, new)
    if not diffs:
        return "fingerprint differs"
    shown = "; ".join(diffs[:_MAX_DIFFS_SHOWN])
    more = len(diffs) - _MAX_DIFFS_SHOWN
    return shown + (f"; and {more} more" if more > 0 else "")


class StaleStageError(RuntimeError):
    """A cached stage was built from a different config and the cache may not rebuild it."""


@dataclasses.dataclass(frozen=True)
class StageResult:
    """What ``StageCache`` returned for one stage, and whether it had to build it.

    Attributes:
        name: the stage name.
        path: ``run_dir/<name>``, the stage's directory.
        fingerprint: ``config_fingerprint(key_config)``; put it into downstream keys.
        built: True if ``build_fn`` ran in this call, False if the cache was reused.
        reason: why it built (``"missing"``, ``"forced"``, ``"config changed: ..."``,
            ``"invalid: ..."``) or ``"cached"``.
        dataset: the loaded ``Dataset`` for ``get_or_build`` stages, None for directories.
    """

    name: str
    path: Path
    fingerprint: str
    built: bool
    reason: str
    dataset: Dataset | None = None


class StageCache:
    """Cache of pipeline stage outputs under ``run_dir``, keyed by config fingerprints.

    Args:
        run_dir: the run directory (created on the first build).
        on_mismatch: what to do when a stage exists but was built from another config:
            ``"rebuild"`` (default; logged) or ``"error"`` (raise ``StaleStageError``, for runs
            that must not recompute anything expensive by accident).

    Attributes:
        history: every ``StageResult`` this instance returned, in call order, so a caller (or
            a test) can check e.g. that resuming a finished run built nothing.
    """

    def __init__(
        self,
        run_dir: str | os.PathLike,
        *,
        on_mismatch: Literal["rebuild", "error"] = "rebuild",
    ):
        if on_mismatch not in ("rebuild", "error"):
            raise ValueError(f"on_mismatch must be 'rebuild' or 'error', got {on_mismatch!r}.")
        self.run_dir = Path(run_dir)
        self.on_mismatch = on_mismatch
        self.history: list[StageResult] = []

    def path(self, name: str) -> Path:
        """The directory of stage ``name``: ``run_dir/<name>``."""
        if not isinstance(name, str) or not _STAGE_NAME_RE.match(name):
            raise ValueError(
                f"stage name {name!r} is not allowed: use letters, digits, '_' and '-' (it "
                "becomes a directory name)."
            )
        return self.run_dir / name

    # --------------------------------------------------------------------- dataset stages
    def get_or_build(
        self,
        name: str,
        key_config: Any,
        build_fn: Callable[[DatasetWriter], None],
        *,
        force: bool = False,
    ) -> StageResult:
        """Load stage ``name`` if it was built from ``key_config``, else build and store it.

        Args:
            name: stage name; the dataset lives in ``run_dir/<name>``.
            key_config: everything the output depends on (dataclass, dict, JSON-able tree).
            build_fn: ``build_fn(writer) -> None``; writes the stage's arrays with
                ``writer.add``, ``writer.allocate`` or ``writer.append`` and may add meta
                via ``writer.meta[...]`` (key ``"stage"`` is the cache's). Only called when
                the stage must be (re)built. If it raises, nothing is stored.
            force: rebuild even if a matching stage exists.

        Returns:
            A ``StageResult`` whose ``dataset`` is the loaded (memory-mapped) dataset and
            ``built`` says whether ``build_fn`` ran.

        Raises:
            StaleStageError: the stage exists with another config and ``on_mismatch="error"``.
        """
        path = self.path(name)
        fingerprint = config_fingerprint(key_config)
        config = canonical_config(key_config)
        reason, overwrite = "forced", True
        if force and path.exists() and not (path / META_FILE).is_file():
            _remove(path)  # not a dataset (e.g. a broken build): the writer would refuse it
        if not force:
            try:
                dataset = load_dataset(path)
            except DatasetNotFoundError:
                reason, overwrite = "missing", False
            except DatasetError as err:
                reason = f"invalid: {err}"
                logger.warning("stage %r: cached output is unusable (%s); rebuilding", name, err)
                # It is corrupt, so nothing is lost by deleting it before the new build.
                _remove(path)
                overwrite = False
            else:
                stored = dataset.meta.get(STAGE_META_KEY)
                reason = self._check_stored(name, stored, fingerprint, config)
                if reason == "cached":
                    return self._record(name, path, fingerprint, False, reason, dataset)

        logger.info("stage %r: building (%s)", name, reason)
        with DatasetWriter(path, overwrite=overwrite) as writer:
            returned = build_fn(writer)
            if returned is not None:
                raise TypeError(
                    f"build_fn of stage {name!r} returned {type(returned).__name__}; it must "
                    "write its arrays into the writer (writer.add / writer.append) and return "
                    "None."
                )
            if STAGE_META_KEY in writer.meta:
                raise ValueError(f"meta key {STAGE_META_KEY!r} is reserved for the stage cache.")
            writer.meta[STAGE_META_KEY] = {
                "name": name,
                "fingerprint": fingerprint,
                "config": config,
            }
        return self._record(name, path, fingerprint, True, reason, load_dataset(path))

    # ------------------------------------------------------------------- directory stages
    def get_or_build_dir(
        self,
        name: str,
        key_config: Any,
        build_fn: Callable[[Path], None],
        *,
        force: bool = False,
    ) -> StageResult:
        """Like ``get_or_build`` for a stage whose product is a directory of any files.

        ``build_fn(tmp_dir)`` writes into a fresh temporary directory; when it returns, the
        cache adds ``stage.json`` (name, fingerprint, config, time) and renames the directory
        to ``run_dir/<name>`` atomically. If it raises, nothing is stored and an existing
        older version stays in place. The files themselves are not validated on load: the
        stage's consumer (e.g. a checkpoint loader) does that.

        Returns:
            A ``StageResult`` with ``dataset=None``; read the files under ``result.path``.
        """
        path = self.path(name)
        fingerprint = config_fingerprint(key_config)
        config = canonical_config(key_config)
        reason = "forced"
        if not force:
            if not path.exists():
                reason = "missing"
            else:
                try:
                    stored = json.loads((path / STAGE_FILE).read_text(encoding="utf-8"))
                    if not isinstance(stored, dict) or stored.get("format") != STAGE_FORMAT:
                        raise ValueError(f"unknown {STAGE_FILE} format")
                except (OSError, ValueError) as err:
                    reason = f"invalid: {STAGE_FILE} unreadable ({err})"
                    logger.warning("stage %r: %s; rebuilding", name, reason)
                else:
                    reason = self._check_stored(name, stored, fingerprint, config)
                    if reason == "cached":
                        return self._record(name, path, fingerprint, False, reason, None)

        logger.info("stage %r: building (%s)", name, reason)
        with atomic_directory(path, overwrite=True) as tmp_dir:
            returned = build_fn(tmp_dir)
            if returned is not None:
                raise TypeError(
                    f"build_fn of stage {name!r} returned {type(returned).__name__}; it must "
                    "write files into the directory it is given and return None."
                )
            if (tmp_dir / STAGE_FILE).exists():
                raise ValueError(f"{STAGE_FILE} is reserved for the stage cache; rename it.")
            stage = {
                "format": STAGE_FORMAT,
                "name": name,
                "fingerprint": fingerprint,
                "config": config,
                "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            }
            (tmp_dir / STAGE_FILE).write_text(
                json.dumps(stage, indent=2, sort_keys=True) + "\n", encoding="utf-8"
            )
        return self._record(name, path, fingerprint, True, reason, None)

    # ---------------------------------------------------------------------------- helpers
    def _check_stored(self, name: str, stored: Any, fingerprint: str, config: Any) -> str:
        """``"cached"`` if ``stored`` records ``fingerprint``, else why it must be rebuilt."""
        if not isinstance(stored, dict) or "fingerprint" not in stored:
            reason = "invalid: no stage fingerprint recorded"
            logger.warning("stage %r: %s; rebuilding", name, reason)
            return reason
        if stored["fingerprint"] == fingerprint:
            logger.info("stage %r: loaded from cache (%s)", name, fingerprint[:12])
            return "cached"
        reason = "config changed: " + describe_difference(stored.get("config"), config)
        if self.on_mismatch == "error":
            raise StaleStageError(
                f"stage {name!r} in {self.path(name)} was built from another config "
                f"({reason}). Delete the directory, pass force=True, or use "
                "StageCache(on_mismatch='rebuild')."
            )
        logger.info("stage %r: %s; rebuilding", name, reason)
        return reason

    def _record(
        self,
        name: str,
        path: Path,
        fingerprint: str,
        built: bool,
        reason: str,
        dataset: Dataset | None,
    ) -> StageResult:
        result = StageResult(name, path, fingerprint, built, reason, dataset)
        self.history.append(result)
        return result


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()
