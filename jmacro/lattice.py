"""Spatial primitives for 2D lattices: neighbour tables, neighbour sums, checkerboard masks.

Every function here acts on ONE lattice of shape ``(H, W)`` (batch with ``jax.vmap``). The
lattice is periodic unless a frozen halo is given explicitly: a halo is the ring of sites
around a patch, stored as a padded array of shape ``(H + 2, W + 2)`` whose border is read but
never written. Partial evolution and LocalRelax cut patches and windows through the tilings of
``jmacro.geometry`` (``SquareTiling2D`` uses the patch order of ``tile``).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, Int, Shaped

from jmacro._checks import check_lattice_shape

# Order of the four nearest neighbours used throughout: up, down, left, right.
_OFFSETS = ((-1, 0), (1, 0), (0, -1), (0, 1))


@functools.lru_cache(maxsize=64)
def neighbour_table(shape: tuple[int, int], halo: bool = False) -> np.ndarray:
    """Flat indices of the four nearest neighbours of every updatable site.

    Args:
        shape: ``(H, W)`` of the updatable lattice (the patch interior when ``halo``).
        halo: if False, the lattice is periodic and indices point into the flat ``(H*W,)``
            array. If True, the state is the padded ``(H+2, W+2)`` array and indices point into
            its flat form; updatable site ``k`` is interior site ``(k // W, k % W)``.

    Returns:
        ``int32`` array of shape ``(H*W, 4)`` (up, down, left, right). A NumPy constant, so it
        is baked into jitted code as a literal.
    """
    height, width = check_lattice_shape(shape)
    rows, cols = np.divmod(np.arange(height * width), width)
    table = np.empty((height * width, 4), dtype=np.int32)
    for j, (dr, dc) in enumerate(_OFFSETS):
        if halo:
            table[:, j] = (rows + 1 + dr) * (width + 2) + (cols + 1 + dc)
        else:
            table[:, j] = ((rows + dr) % height) * width + (cols + dc) % width
    return table


@functools.lru_cache(maxsize=64)
def interior_indices(shape: tuple[int, int]) -> np.ndarray:
    """Flat indices, in the padded ``(H+2, W+2)`` array, of the ``H*W`` interior sites."""
    height, width = check_lattice_shape(shape)
    rows, cols = np.divmod(np.arange(height * width), width)
    return ((rows + 1) * (width + 2) + cols + 1).astype(np.int32)


def pad_periodic(x: Shaped[Array, "H W"]) -> Shaped[Array, "H+2 W+2"]:
    """Pad a lattice by one site on each side with its own periodic images."""
    return jnp.pad(x, 1, mode="wrap")


def neighbour_sum_padded(padded: Shaped[Array, "Hp Wp"]) -> Int[Array, "Hp-2 Wp-2"]:
    """Sum of the four nearest neighbours of every interior site of a padded lattice.

    The result is ``int32`` so that int8 spins never overflow.
    """
    p = padded.astype(jnp.int32)
    return p[:-2, 1:-1] + p[2:, 1:-1] + p[1:-1, :-2] + p[1:-1, 2:]


def neighbour_sum(spins: Shaped[Array, "H W"]) -> Int[Array, "H W"]:
    """Sum of the four nearest neighbours of every site of a periodic lattice (``int32``)."""
    return neighbour_sum_padded(pad_periodic(spins))


def neighbour_min_padded(padded: Float[Array, "Hp Wp"]) -> Float[Array, "Hp-2 Wp-2"]:
    """Minimum over the four nearest neighbours of every interior site of a padded array."""
    return jnp.minimum(
        jnp.minimum(padded[:-2, 1:-1], padded[2:, 1:-1]),
        jnp.minimum(padded[1:-1, :-2], padded[1:-1, 2:]),
    )


def checkerboard_mask(shape: tuple[int, int], colour: int) -> np.ndarray:
    """Boolean ``(H, W)`` mask of the sites with ``(row + col) % 2 == colour``.

    On a periodic lattice this is a proper two-colouring only if H and W are even.
    """
    height, width = check_lattice_shape(shape)
    rows, cols = np.indices((height, width))
    return (rows + cols) % 2 == colour


# ---------------------------------------------------------------------------------- patches
def check_patch_size(shape: tuple[int, int], patch: int | tuple[int, int]) -> tuple[int, int]:
    """Validate that ``patch`` (side, or (height, width)) tiles a lattice of ``shape`` exactly."""
    height, width = check_lattice_shape(shape, min_side=1)
    ph, pw = check_lattice_shape(patch, min_side=1)
    if height % ph or width % pw:
        raise ValueError(
            f"patch size {(ph, pw)} does not tile the lattice {(height, width)}: each lattice "
            f"side must be a multiple of the patch side (try one of "
            f"{[d for d in range(1, height + 1) if height % d == 0 and width % d == 0]})."
        )
    return ph, pw


def num_patches(shape: tuple[int, int], patch: int | tuple[int, int]) -> int:
    """K = (H / l_h) (W / l_w), the number of patches tiling the lattice."""
    ph, pw = check_patch_size(shape, patch)
    return (shape[0] // ph) * (shape[1] // pw)


def tile(
    x: Shaped[Array, "H W *rest"], patch: int | tuple[int, int]
) -> Shaped[Array, "K h w *rest"]:
    """Cut a lattice into its K non-overlapping patches, in row-major patch order.

    Patch ``k`` covers rows ``(k // (W/w)) * h ...`` and columns ``(k % (W/w)) * w ...``.
    Trailing axes (channels) are carried along. Inverse: ``untile``.
    """
    ph, pw = check_patch_size(x.shape[:2], patch)
    rows, cols = x.shape[0] // ph, x.shape[1] // pw
    rest = x.shape[2:]
    y = x.reshape(rows, ph, cols, pw, *rest)
    y = jnp.moveaxis(y, 2, 1)  # (rows, cols, ph, pw, *rest)
    return y.reshape(rows * cols, ph, pw, *rest)


def tile_with_halo(
    x: Shaped[Array, "H W *rest"], patch: int | tuple[int, int], halo: int = 1
) -> Shaped[Array, "K hh ww *rest"]:
    """The K patches of ``tile``, each with the ``halo`` rows below it and the ``halo``
    columns to its right (and the corner between them) of the periodic lattice.

    Window ``k`` is ``x[r0 : r0 + h + halo, c0 : c0 + w + halo]`` (indices modulo ``H``, ``W``)
    with ``(r0, c0)`` the origin of patch ``k``; ``window[:h, :w]`` is ``tile(x, patch)[k]``.
    Neighbouring windows overlap by ``halo`` rows / columns. ``0 <= halo <= min(h, w)``.
    """
    ph, pw = check_patch_size(x.shape[:2], patch)
    if not 0 <= halo <= min(ph, pw):
        raise ValueError(f"halo must lie in [0, {min(ph, pw)}] for patches {(ph, pw)}, got {halo}.")
    if not halo:
        return tile(x, (ph, pw))
    # Slices and reshapes only (a gather of the windows is 3-4x slower on CPU): each row of
    # patches gets the next `halo` rows, then each patch the next `halo` columns.
    rows, cols, rest = x.shape[0] // ph, x.shape[1] // pw, x.shape[2:]
    below = jnp.roll(x, -ph, axis=0).reshape(rows, ph, *x.shape[1:])[:, :halo]
    y = jnp.concatenate([x.reshape(rows, ph, *x.shape[1:]), below], axis=1)  # (R, h+halo, W)
    right = jnp.roll(y, -pw, axis=2).reshape(rows, ph + halo, cols, pw, *rest)[:, :, :, :halo]
    y = jnp.concatenate([y.reshape(rows, ph + halo, cols, pw, *rest), right], axis=3)
    y = jnp.moveaxis(y, 2, 1)  # (R, C, h+halo, w+halo, *rest)
    return y.reshape(rows * cols, ph + halo, pw + halo, *rest)


def untile(
    patches: Shaped[Array, "K h w *rest"], shape: tuple[int, int]
) -> Shaped[Array, "H W *rest"]:
    """Reassemble the output of ``tile`` into the ``shape = (H, W)`` lattice."""
    ph, pw = patches.shape[1:3]
    check_patch_size(shape, (ph, pw))
    rows, cols = shape[0] // ph, shape[1] // pw
    if patches.shape[0] != rows * cols:
        raise ValueError(
            f"expected {rows * cols} patches of {(ph, pw)} for {shape}, got {patches.shape[0]}."
        )
    rest = patches.shape[3:]
    y = patches.reshape(rows, cols, ph, pw, *rest)
    y = jnp.moveaxis(y, 1, 2)
    return y.reshape(shape[0], shape[1], *rest)


def patch_origin(shape: tuple[int, int], patch: tuple[int, int], index):
    """Top-left ``(row, col)`` of patch ``index`` (may be traced) in row-major order."""
    cols = shape[1] // patch[1]
    return (index // cols) * patch[0], (index % cols) * patch[1]


def extract_patch(
    x: Shaped[Array, "H W"], index, patch: int | tuple[int, int], halo: int = 0
) -> Shaped[Array, "hh ww"]:
    """Patch ``index`` of a periodic lattice, with ``halo`` extra rings of its real neighbours.

    ``index`` may be traced (one ``dynamic_slice``). With ``halo = 1`` the result is the padded
    array expected by the ``halo=`` argument of the simulators.
    """
    ph, pw = check_patch_size(x.shape, patch)
    if halo < 0:
        raise ValueError(f"halo must be >= 0, got {halo}.")
    row, col = patch_origin(x.shape, (ph, pw), index)
    padded = jnp.pad(x, halo, mode="wrap") if halo else x
    return jax.lax.dynamic_slice(padded, (row, col), (ph + 2 * halo, pw + 2 * halo))


def insert_patch(
    x: Shaped[Array, "H W"], index, values: Shaped[Array, "h w"]
) -> Shaped[Array, "H W"]:
    """Return ``x`` with patch ``index`` replaced by ``values`` (``index`` may be traced)."""
    ph, pw = check_patch_size(x.shape, values.shape)
    row, col = patch_origin(x.shape, (ph, pw), index)
    return jax.lax.dynamic_update_slice(x, values.astype(x.dtype), (row, col))
