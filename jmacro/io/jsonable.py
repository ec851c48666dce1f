"""``to_jsonable``: the one conversion of configs and metadata to plain JSON trees.

Used for dataset ``meta.json`` (``jmacro.io.storage``) and for config fingerprints
(``jmacro.io.cache``), so both accept and refuse exactly the same things.
"""

from __future__ import annotations

import dataclasses
import enum
import os
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np

# Numeric and bool dtypes only (complex ones are refused below with their own message).
_DTYPE_KINDS = "biufc"
# Largest array that may sit inside JSON (as a nested list); bigger ones belong in .npy files.
_MAX_ARRAY_SIZE = 10_000


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
        if arr.size > _MAX_ARRAY_SIZE:
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
