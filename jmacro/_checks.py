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


def check_positive_array(value, name: str):
    """Raise if a concrete ``value`` has any entry <= 0 or non-finite; return it unchanged."""
    if is_concrete(value):
        arr = np.asarray(value)
        if not np.all(np.isfinite(arr)) or np.any(arr <= 0):
            raise ValueError(f"{name} must be finite and > 0, got {arr!r}.")
    return value


def check_finite_array(value, name: str):
    """Raise if a concrete ``value`` has a NaN or infinite entry; return it unchanged."""
    if is_concrete(value) and not np.all(np.isfinite(np.asarray(value))):
        raise ValueError(f"{name} must be finite, got {np.asarray(value)!r}.")
    return value


def check_spins(spins, name: str = "spins"):
    """Raise unless a concrete ``spins`` array is integer-valued with entries in {-1, +1}.

    Tracers pass through untouched. Accepts any integer dtype; callers cast to int8.
    """
    if not is_concrete(spins):
        return spins
    arr = np.asarray(spins)
    if arr.size == 0:
        raise ValueError(f"{name} is empty.")
    if not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
        raise ValueError(f"{name} must be a numeric array of -1/+1, got dtype {arr.dtype}.")
    bad = (arr != 1) & (arr != -1)
    if np.any(bad):
        example = arr[bad].flat[0]
        raise ValueError(
            f"{name} must contain only -1 and +1; found {int(bad.sum())} other entries "
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
