"""Infrastructure, the lowest layer: atomic writes, datasets on disk, the stage cache.

- ``jmacro.io.atomic``: the one atomic writer, for single files and whole directories.
- ``jmacro.io.storage``: datasets as ``<dir>/<name>.npy`` + ``<dir>/meta.json``, written
  atomically with numpy's own ``.npy`` tools, loaded validated and memory-mapped.
- ``jmacro.io.cache``: ``StageCache``, pipeline stage outputs keyed by config fingerprints.
- ``jmacro.io.jsonable``: ``to_jsonable``, the conversion of configs and meta to JSON trees.

This package imports nothing from the rest of jmacro: every other layer may build on it.
"""

from jmacro.io.atomic import (
    atomic_directory,
    atomic_file,
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
)
from jmacro.io.cache import (
    StageCache,
    StageResult,
    StaleStageError,
    canonical_config,
    config_fingerprint,
    describe_difference,
)
from jmacro.io.jsonable import to_jsonable
from jmacro.io.storage import (
    META_FILE,
    Dataset,
    DatasetError,
    DatasetExistsError,
    DatasetNotFoundError,
    DatasetWriter,
    load_dataset,
    save_dataset,
)

__all__ = [
    "META_FILE",
    "Dataset",
    "DatasetError",
    "DatasetExistsError",
    "DatasetNotFoundError",
    "DatasetWriter",
    "StageCache",
    "StageResult",
    "StaleStageError",
    "atomic_directory",
    "atomic_file",
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_write_text",
    "canonical_config",
    "config_fingerprint",
    "describe_difference",
    "load_dataset",
    "save_dataset",
    "to_jsonable",
]
