"""Input validation shared by the public API.

Checks run eagerly on concrete values and are skipped on tracers (inside ``jit``/``vmap`` the
values are unknown; drivers validate before they trace). Every error says what was wrong and
how to fix it.
"""

from __future__ import annotations

import numbers

import jax
import numpy as np


def is_concrete(x) -> bool:
    """True if ``x`` holds known values (not a JAX tracer)."""
    return not isinstance(x, jax.core.Tracer)


def check_positive_int(value, name: str) -> int:
    """Return ``value`` as an int if it is a positive integer, else raise ``ValueError``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral | np.integer):
        raise ValueError(f"{name} must be a positive integer, got {value!r}.")
    if value <= 0:
        raise ValueError(f"{name} must be a positive integer, got {value}.")
    return int(value)


def check_lattice_shape(shape, min_side: int = 2) -> tuple[int, int]:
    """Validate a 2D lattice shape ``(H, W)`` with both sides at least ``min_side``."""
    if isinstance(shape, numbers.Integral):
        shape = (shape, shape)
    shape = tuple(shape)
    if len(shape) != 2:
        raise ValueError(f"a 2D lattice shape needs two sides (H, W), got {shape!r}.")
    height = check_positive_int(shape[0], "lattice height")
    width = check_positive_int(shape[1], "lattice width")
    if height < min_side or width < min_side:
        raise ValueError(f"lattice sides must be at least {min_side}, got {shape!r}.")
    return height, width


def _show(arr: np.ndarray) -> str:
    """Values for a message: ``-1.0`` or ``[0.5, nan]``, not numpy's ``array(-1.)``."""
    return str(arr.item()) if arr.size == 1 else np.array2string(arr, separator=", ")


def check_positive_array(value, name: str):
    """Raise if a concrete ``value`` has any entry <= 0 or non-finite; return it unchanged."""
    if is_concrete(value):
        arr = np.asarray(value)
        if not np.all(np.isfinite(arr)) or np.any(arr <= 0):
            raise ValueError(f"{name} must be finite and > 0, got {_show(arr)}.")
    return value


def check_finite_array(value, name: str):
    """Raise if a concrete ``value`` has a NaN or infinite entry; return it unchanged."""
    if is_concrete(value) and not np.all(np.isfinite(np.asarray(value))):
        raise ValueError(f"{name} must be finite, got {_show(np.asarray(value))}.")
    return value


# Entries scanned per slice by ``check_spins``: bounds the temporary boolean arrays (and the
# pages of a memory-mapped dataset held at once) to a few tens of MB.
_SPIN_SCAN_ENTRIES = 1 << 24


def check_spins(spins, name: str = "spins"):
    """Raise ``ValueError`` unless a concrete ``spins`` array holds only the values -1 and +1.

    The one value check of spin states (``AbstractHeatBathSpins.check_states`` and the patch
    drivers call it): anything else (0, 2, 0.5, NaN, a boolean array) is refused instead of
    being cast to int8 by a driver. Any integer or float dtype is accepted (the drivers cast to
    int8 after the check). Large (e.g. memory-mapped) arrays are scanned in slices along the
    first axis, so the check never holds more than ~16M entries' temporaries at once.
    Tracers pass through untouched (inside ``jit``/``vmap`` the values are unknown).
    """
    if not is_concrete(spins):
        return spins
    arr = spins if isinstance(spins, np.ndarray) else np.asarray(spins)
    if arr.size == 0:
        raise ValueError(f"{name} is empty.")
    if not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
        raise ValueError(f"{name} must be a numeric array of -1/+1, got dtype {arr.dtype}.")
    flat = arr.reshape(1, -1) if arr.ndim == 0 else arr
    rows = max(1, _SPIN_SCAN_ENTRIES // max(1, flat[0].size))
    num_bad, example = 0, None
    for start in range(0, len(flat), rows):
        part = np.asarray(flat[start : start + rows])
        bad = (part != 1) & (part != -1)
        count = int(np.count_nonzero(bad))
        if count and example is None:
            example = part[bad].flat[0].item()
        num_bad += count
    if num_bad:
        raise ValueError(
            f"{name} must contain only -1 and +1; found {num_bad} other entries "
            f"(e.g. {example!r}). Build states with `init_state` or `2 * (x > 0) - 1`."
        )
    return spins


def check_save_grid(num_steps, save_every) -> tuple[int, int]:
    """``(num_steps, save_every)`` as ints if both are positive and ``save_every`` divides
    ``num_steps`` (one state saved every ``save_every`` steps), else ``ValueError``."""
    num_steps = check_positive_int(num_steps, "num_steps")
    save_every = check_positive_int(save_every, "save_every")
    if num_steps % save_every:
        raise ValueError(
            f"num_steps ({num_steps}) must be a multiple of save_every ({save_every})."
        )
    return num_steps, save_every
