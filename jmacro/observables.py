"""Macroscopic observables as free functions of ONE state (a full lattice or a patch).

All are spatial means, hence patch-additive on a tiling when the patch version is used
consistently. Batch with ``jax.vmap``. Periodic boundaries are assumed: on a patch, the bonds
that wrap around the patch are counted as if the patch were a small periodic system (the
reference's convention for the known part of the closure encoder).
"""

from __future__ import annotations

import functools
import itertools

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, Shaped

from jmacro import bcc


def magnetisation(spins: Shaped[Array, "H W"]) -> Float[Array, ""]:
    """m = (1/n) sum_i s_i."""
    return jnp.mean(spins.astype(jnp.float32))


def _bond_products(spins: Shaped[Array, "H W"]) -> tuple[Array, Array]:
    s = spins.astype(jnp.float32)
    return s * jnp.roll(s, -1, axis=0), s * jnp.roll(s, -1, axis=1)


def domain_wall_density(spins: Shaped[Array, "H W"]) -> Float[Array, ""]:
    """Mean over the 2n periodic nearest-neighbour bonds of (1 - s_i s_j) / 2, in [0, 1]."""
    vertical, horizontal = _bond_products(spins)
    return 0.5 * (1.0 - 0.5 * (jnp.mean(vertical) + jnp.mean(horizontal)))


def ising_energy_per_site(
    spins: Shaped[Array, "H W"], coupling: float | Array = 1.0, field: float | Array = 0.0
) -> Float[Array, ""]:
    """E / n with E = -J sum_<ij> s_i s_j - h sum_i s_i on a periodic lattice (2n bonds)."""
    vertical, horizontal = _bond_products(spins)
    return -coupling * jnp.mean(vertical + horizontal) - field * magnetisation(spins)


def curie_weiss_energy_per_site(
    spins: Shaped[Array, "H W"], coupling: float | Array = 1.0, field: float | Array = 0.0
) -> Float[Array, ""]:
    """E / N = -(J m^2 / 2 + h m) for the mean-field model."""
    m = magnetisation(spins)
    return -(0.5 * coupling * m**2 + field * m)


# ------------------------------------------------------------------------------ BCC alloy
@jax.jit
def short_range_order(occupancy: Shaped[Array, "L L L 2"]) -> Float[Array, "6"]:
    """The six first-shell SRO numbers of a periodic BCC occupancy (``jmacro.bcc`` layout).

    delta_ij = Z_ij - 8/3, Z_ij = (number of ordered first-neighbour pairs (i atom, j atom)) / N_i,
    the mean number of j-type first neighbours of an i atom; bonds to vacancies are not counted.
    Order (``bcc.SRO_PAIRS``): NbNb, NbMo, NbTa, MoMo, MoTa, TaTa (row species first).

    Exact identities (any vacancy content): N_i Z_ij = N_j Z_ji (each i-j bond is counted once
    from each end), so N_i delta_ij - N_j delta_ji = (8/3)(N_j - N_i): the three off-diagonal
    numbers are symmetric iff the counts are equal; and sum_j Z_ij = 8 - b_i / N_i, b_i the
    number of (i atom, vacancy) first-neighbour pairs. A species absent from the state gives NaN.
    """
    matrix = short_range_order_matrix(occupancy)
    rows, cols = jnp.asarray(bcc.SRO_PAIRS).T
    return matrix[rows - 1, cols - 1]


@jax.jit
def short_range_order_matrix(occupancy: Shaped[Array, "L L L 2"]) -> Float[Array, "3 3"]:
    """delta_ij for i, j in (Nb, Mo, Ta) as a (3, 3) array (see ``short_range_order``)."""
    bonds = bcc.bond_counts(occupancy, shell=1)
    ordered = (bonds + bonds.T)[1:, 1:]
    codes = jnp.arange(1, bcc.NUM_SPECIES, dtype=occupancy.dtype)
    counts = jnp.sum(occupancy[..., None] == codes, axis=(0, 1, 2, 3))
    return ordered / counts.astype(jnp.float32)[:, None] - 8.0 / 3.0


@functools.partial(jax.jit, static_argnames="tile_cells")
def short_range_order_interior(
    occupancy: Shaped[Array, "L L L 2"], tile_cells: int
) -> Float[Array, "6"]:
    """The six first-shell SRO numbers over the bonds INSIDE the cubic tiles of ``tile_cells``^3
    cells (``BCCTiling3D`` tiles): bonds that cross a tile face, the box's periodic wrap
    included, are not counted. Order as ``short_range_order``.

    delta_ij = Z_ij - 8/3 with Z_ij = 8 B_ij / sum_k B_ik, B_ij the number of ordered
    intra-tile first-neighbour pairs (i atom, j site), k running over the atoms AND the vacancy:
    8 times the probability that an intra-tile bond of an i atom ends on a j atom. Counting
    every bond (no tiles) this is exactly ``short_range_order`` (each atom has 8 bonds, so
    sum_k B_ik = 8 N_i); for a homogeneous crystal it estimates the same number from the
    ~82 % of the bonds that lie inside 8^3-cell tiles.

    Why: a crystal tiled from independent small frames (``jmacro.scale.alloy.tile_upsample``)
    has uncorrelated bonds across its seams (SRO ~ 0 there), so its whole-crystal SRO is
    diluted by the seams (about 18 % of the bonds for 8^3-cell tiles), while the intra-tile SRO
    is the frames' own. A tile taken as its own box (``tile_cells = L``) counts its bonds
    without the periodic wrap: the window a partial evolution evolves is measured by the same
    bonds as the tile it came from.

    Args:
        occupancy: ``(L, L, L, 2)`` (``jmacro.bcc`` layout).
        tile_cells: tile side in cells; must divide L.
    """
    num_cells = occupancy.shape[0]
    if tile_cells <= 0 or num_cells % tile_cells:
        raise ValueError(f"tile_cells = {tile_cells} must divide the {num_cells} cells per side.")
    hot = (occupancy[..., None] == jnp.arange(bcc.NUM_SPECIES, dtype=occupancy.dtype)).astype(
        jnp.float32
    )
    corner, centre = hot[..., 0, :], hot[..., 1, :]
    # The bond (corner of cell c, centre of cell c - s) leaves c's tile along axis a iff
    # s_a = 1 and c_a is the tile's first cell.
    inner = (jnp.arange(num_cells) % tile_cells != 0).astype(jnp.float32)
    total = jnp.zeros((bcc.NUM_SPECIES, bcc.NUM_SPECIES), jnp.float32)
    for shift in itertools.product((0, 1), repeat=3):
        mask = jnp.ones((num_cells,) * 3, jnp.float32)
        for axis, s in enumerate(shift):
            if s:
                mask = mask * jnp.expand_dims(inner, [a for a in range(3) if a != axis])
        neighbour = jnp.roll(centre, shift, axis=(0, 1, 2))  # centre of cell c - shift
        total = total + jnp.einsum("xyz,xyzi,xyzj->ij", mask, corner, neighbour)
    ordered = total + total.T
    matrix = 8.0 * ordered[1:, 1:] / jnp.sum(ordered[1:, :], axis=1, keepdims=True) - 8.0 / 3.0
    rows, cols = jnp.asarray(bcc.SRO_PAIRS).T
    return matrix[rows - 1, cols - 1]


def short_range_order_per_tile(
    occupancy: Shaped[Array, "L L L 2"], tile_cells: int
) -> Float[Array, "K 6"]:
    """``short_range_order`` of each cubic tile of ``tile_cells``^3 cells, each tile taken as a
    small periodic system (this module's patch convention). Tiles in row-major order of their
    cell origins (tile (a, b, c) covers cells [a t, (a + 1) t) x ...); t must divide L."""
    num_cells = occupancy.shape[0]
    if tile_cells <= 0 or num_cells % tile_cells:
        raise ValueError(f"tile_cells = {tile_cells} must divide the {num_cells} cells per side.")
    per_side = num_cells // tile_cells
    tiles = occupancy.reshape((per_side, tile_cells) * 3 + (2,))
    tiles = tiles.transpose(0, 2, 4, 1, 3, 5, 6).reshape(-1, tile_cells, tile_cells, tile_cells, 2)
    return jax.vmap(short_range_order)(tiles)
