"""BCC lattice primitives: the compact occupancy array, voxel coordinates, neighbour shells.

A periodic BCC crystal of L x L x L cubic cells (lattice constant a) has 2 L^3 sites. jmacro
stores it as an **occupancy** array ``(L, L, L, 2)`` int8: ``occupancy[cx, cy, cz, s]`` is the
species on the site of cell ``(cx, cy, cz)`` and sublattice ``s`` (0: the cell corner, 1: the
body centre). Species codes: 0 vacancy, 1 Nb, 2 Mo, 3 Ta.

Positions are **voxel** coordinates: integers in units of a/2 on the (2L)^3 grid the reference
uses; site ``(c, s)`` sits at voxel ``2 c + s (1, 1, 1)``, so a voxel is a site iff its three
coordinates have the same parity. The reference's voxel grid stores -1 at the other voxels;
``occupancy_to_voxels`` / ``voxels_to_occupancy`` convert. Offsets between sites are voxel
vectors too: the 8 first neighbours at (+-1, +-1, +-1) (distance a sqrt(3)/2), the 6 second
neighbours at (+-2, 0, 0) and permutations (distance a).

Direction order (first shell) is the sign pattern of (dx, dy, dz): ---, --+, -+-, -++, +--,
+-+, ++-, +++; direction ``7 - k`` is the opposite of direction ``k``.
"""

from __future__ import annotations

import functools
import itertools

import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
from jaxtyping import Array, Float, Int, Int8, PRNGKeyArray, Shaped

from jmacro._checks import check_positive_int, is_concrete

VACANCY = 0
NON_SITE = -1
SPECIES = ("vacancy", "Nb", "Mo", "Ta")
"""Name of each species code."""
NUM_SPECIES = 4
"""Codes 0 ... 3, the vacancy included."""

FIRST_SHELL = np.array(list(itertools.product((-1, 1), repeat=3)), dtype=np.int32)
"""(8, 3) voxel offsets of the first neighbours, in the direction order of the module doc."""
SECOND_SHELL = np.array(
    [[-2, 0, 0], [2, 0, 0], [0, -2, 0], [0, 2, 0], [0, 0, -2], [0, 0, 2]], dtype=np.int32
)
"""(6, 3) voxel offsets of the second neighbours."""
SRO_PAIRS = ((1, 1), (1, 2), (1, 3), (2, 2), (2, 3), (3, 3))
"""Species pairs (i, j) of the six SRO numbers: NbNb, NbMo, NbTa, MoMo, MoTa, TaTa."""


def check_occupancy_shape(shape: tuple[int, ...], min_cells: int = 2) -> int:
    """Return L for an occupancy shape ``(L, L, L, 2)`` with L >= ``min_cells``, else raise."""
    shape = tuple(int(s) for s in shape)
    if len(shape) != 4 or shape[3] != 2 or not shape[0] == shape[1] == shape[2]:
        raise ValueError(
            f"a BCC occupancy must have shape (L, L, L, 2) (cells x 2 sublattices), got {shape}; "
            "use jax.vmap for batches and bcc.voxels_to_occupancy for (2L)^3 voxel grids."
        )
    if shape[0] < min_cells:
        raise ValueError(f"need at least {min_cells} cells per side, got L = {shape[0]}.")
    return shape[0]


def site_indices(voxels: Int[Array, "*batch 3"], num_cells: int) -> tuple[Array, ...]:
    """Index tuple into an ``(L, L, L, 2)`` occupancy for site voxels (wrapped periodically).

    The voxels must be sites (coordinates of equal parity); the sublattice is read from x.
    """
    wrapped = jnp.mod(voxels, 2 * num_cells)
    cells = wrapped // 2
    return cells[..., 0], cells[..., 1], cells[..., 2], wrapped[..., 0] % 2


@jax.jit
def gather_sites(
    occupancy: Shaped[Array, "L L L 2"], voxels: Int[Array, "*batch 3"]
) -> Shaped[Array, "*batch"]:
    """Species at the site voxels ``voxels`` (periodic)."""
    return occupancy[site_indices(voxels, occupancy.shape[0])]


@functools.partial(jax.jit, static_argnames="num_cells")
def min_image_sq(delta: Int[Array, "*batch 3"], num_cells: int) -> Int[Array, "*batch"]:
    """Squared minimum-image length (voxel units^2) of voxel differences in a (2L)^3 box."""
    side = 2 * num_cells
    wrapped = jnp.mod(delta, side)
    nearest = jnp.minimum(wrapped, side - wrapped)
    return jnp.sum(nearest * nearest, axis=-1)


# ------------------------------------------------------------------------------ conversions
@jax.jit
def occupancy_to_voxels(occupancy: Shaped[Array, "L L L 2"]) -> Int8[Array, "V V V"]:
    """The reference's (2L)^3 voxel grid: species at site voxels, -1 (``NON_SITE``) elsewhere."""
    num_cells = occupancy.shape[0]
    grid = jnp.full((2 * num_cells,) * 3, NON_SITE, jnp.int8)
    grid = grid.at[0::2, 0::2, 0::2].set(occupancy[..., 0].astype(jnp.int8))
    return grid.at[1::2, 1::2, 1::2].set(occupancy[..., 1].astype(jnp.int8))


def voxels_to_occupancy(grid: Shaped[Array, "V V V"]) -> Int8[Array, "L L L 2"]:
    """The ``(L, L, L, 2)`` occupancy of a (2L)^3 voxel grid (-1 at non-site voxels).

    A concrete grid is checked: even cubic side, -1 exactly at the non-site voxels, codes 0-3
    at the sites; otherwise ``ValueError``.
    """
    side = grid.shape[0]
    if grid.ndim != 3 or side % 2 or not grid.shape[0] == grid.shape[1] == grid.shape[2]:
        raise ValueError(f"a BCC voxel grid must be (2L, 2L, 2L), got shape {grid.shape}.")
    if is_concrete(grid):
        _check_voxel_values(np.asarray(grid))
    occupancy = jnp.stack([grid[0::2, 0::2, 0::2], grid[1::2, 1::2, 1::2]], axis=-1)
    return occupancy.astype(jnp.int8)


def _check_voxel_values(grid: np.ndarray) -> None:
    i, j, k = np.indices(grid.shape)
    is_site = (i % 2 == j % 2) & (j % 2 == k % 2)
    if np.any(grid[~is_site] != NON_SITE):
        raise ValueError("a BCC voxel grid must hold -1 at every voxel of mixed parity.")
    sites = grid[is_site]
    if np.any((sites < 0) | (sites >= NUM_SPECIES)):
        raise ValueError(f"site codes must be 0 (vacancy) ... 3, got {np.unique(sites)}.")


def voxels_from_positions(
    positions: Float[np.ndarray, "n 3"], species: Int[np.ndarray, " n"], voxel_size: float, side
) -> np.ndarray:
    """A (side)^3 voxel grid (host numpy, int8) from Cartesian positions: voxel =
    round(x / voxel_size) mod side; raises if two atoms share a voxel or one is off-site."""
    voxels = np.mod(np.rint(np.asarray(positions) / voxel_size).astype(np.int64), side)
    parity = voxels % 2
    if np.any(parity != parity[:, :1]):
        raise ValueError("some positions do not round to BCC site voxels; check voxel_size.")
    grid = np.full((side,) * 3, NON_SITE, np.int8)
    if len(np.unique(voxels @ np.array([side * side, side, 1]))) != len(voxels):
        raise ValueError("two positions round to the same voxel; check voxel_size and side.")
    grid[voxels[:, 0], voxels[:, 1], voxels[:, 2]] = species
    return grid


@functools.partial(jax.jit, static_argnames="num_vacancies")
def find_vacancies(
    occupancy: Shaped[Array, "L L L 2"], num_vacancies: int
) -> Int[Array, "num_vacancies 3"]:
    """Voxel coordinates of the first ``num_vacancies`` vacant sites (flat order); jittable.

    If there are fewer vacancies the remaining rows repeat the first (check on the host)."""
    flat = jnp.nonzero(occupancy.reshape(-1) == VACANCY, size=num_vacancies)[0]
    num_cells = occupancy.shape[0]
    cells = jnp.stack(jnp.unravel_index(flat // 2, (num_cells,) * 3), axis=-1)
    return (2 * cells + (flat % 2)[:, None]).astype(jnp.int32)


# ------------------------------------------------------------------------------ windows
def window_voxels(origin: Int[Array, "3"], num_cells: int) -> Int[Array, "t t t 2 3"]:
    """Global voxels of the sites of a window of ``num_cells``^3 cells with its local voxel 0
    at the site voxel ``origin``: local site (c, s) sits at ``origin + 2 c + s (1, 1, 1)``.

    BCC is invariant under the half-diagonal shift, so a window may start on either
    sublattice; an odd origin swaps the sublattices. The window of a vacancy v centred in
    2t voxels has ``origin = v - t (1, 1, 1)`` and holds v at local cell (t/2, t/2, t/2), s = 0
    (for even t)."""
    cells = jnp.stack(jnp.meshgrid(*[jnp.arange(num_cells)] * 3, indexing="ij"), axis=-1)
    local = 2 * cells[..., None, :] + jnp.arange(2)[:, None]  # (t, t, t, 2, 3)
    return (jnp.asarray(origin, jnp.int32) + local).astype(jnp.int32)


@functools.partial(jax.jit, static_argnames="num_cells")
def window(
    occupancy: Shaped[Array, "L L L 2"], origin: Int[Array, "3"], num_cells: int
) -> Shaped[Array, "t t t 2"]:
    """The ``(t, t, t, 2)`` occupancy of a window (``window_voxels``), periodic wrap."""
    return gather_sites(occupancy, window_voxels(origin, num_cells))


@jax.jit
def insert_window(
    occupancy: Shaped[Array, "L L L 2"], origin: Int[Array, "3"], patch: Shaped[Array, "t t t 2"]
) -> Shaped[Array, "L L L 2"]:
    """``occupancy`` with the window at ``origin`` replaced by ``patch`` (t <= L)."""
    voxels = window_voxels(origin, patch.shape[0])
    return occupancy.at[site_indices(voxels, occupancy.shape[0])].set(patch.astype(occupancy.dtype))


# ------------------------------------------------------------------------------ construction
def random_occupancy(
    key: PRNGKeyArray,
    num_cells: int,
    num_vacancies: int = 1,
    composition=(1.0, 1.0, 1.0),
) -> Int8[Array, "L L L 2"]:
    """A uniformly random arrangement of ``num_vacancies`` vacancies and atoms in the exact
    proportions ``composition`` (Nb, Mo, Ta; normalised) on 2 L^3 sites.

    Atom counts are floor(share x atoms) plus one for the species with the largest remainders
    (ties to the lighter code), so an equimolar 1,024-site cell with one vacancy has 341 each.
    """
    num_cells = check_positive_int(num_cells, "num_cells")
    counts = species_counts(2 * num_cells**3, num_vacancies, composition)
    labels = np.repeat(np.arange(NUM_SPECIES, dtype=np.int8), counts)
    return _shuffle(key, jnp.asarray(labels), num_cells)


@functools.partial(jax.jit, static_argnames="num_cells")
def _shuffle(key, labels, num_cells):
    return jr.permutation(key, labels).reshape(num_cells, num_cells, num_cells, 2)


def species_counts(num_sites: int, num_vacancies: int, composition) -> np.ndarray:
    """(4,) site counts per code: vacancies, then atoms split by ``composition`` (see
    ``random_occupancy``)."""
    share = np.asarray(composition, np.float64)
    if share.shape != (3,) or np.any(share < 0) or share.sum() <= 0:
        raise ValueError(f"composition must be 3 non-negative shares, got {composition!r}.")
    if not 0 <= num_vacancies < num_sites:
        raise ValueError(f"num_vacancies must be in [0, {num_sites}), got {num_vacancies}.")
    atoms = num_sites - num_vacancies
    exact = atoms * share / share.sum()
    counts = np.floor(exact).astype(np.int64)
    extra = np.argsort(-(exact - counts), kind="stable")[: atoms - counts.sum()]
    counts[extra] += 1
    return np.concatenate([[num_vacancies], counts])


# ------------------------------------------------------------------------------ bond counts
def _one_hot(occupancy: Shaped[Array, "..."]) -> Float[Array, "... 4"]:
    codes = jnp.arange(NUM_SPECIES, dtype=occupancy.dtype)
    return (occupancy[..., None] == codes).astype(jnp.float32)


@functools.partial(jax.jit, static_argnames="shell")
def bond_counts(occupancy: Shaped[Array, "L L L 2"], shell: int = 1) -> Float[Array, "4 4"]:
    """C[i, j]: the number of (periodic) bonds of the given shell (1 or 2) with an i site at
    one end and a j site at the other, each bond counted once (so C + C^T counts ordered
    pairs). Codes include the vacancy (row/column 0). Float32, exact below 2^24 bonds.

    Shell 1: every first-neighbour bond joins sublattice 0 at cell c to sublattice 1 at cell
    c + s, s in {-1, 0}^3. Shell 2: the bonds (c, c + e_a), a = x, y, z, on each sublattice.
    On an L = 2 box both images of a periodic bond count (the multiplicity the local rules see).
    """
    hot = _one_hot(occupancy)
    if shell == 1:
        corner, centre = hot[..., 0, :], hot[..., 1, :]
        total = jnp.zeros((NUM_SPECIES, NUM_SPECIES), jnp.float32)
        for shift in itertools.product((0, 1), repeat=3):
            neighbour = jnp.roll(centre, shift, axis=(0, 1, 2))  # centre of cell c - shift
            total = total + jnp.einsum("xyzi,xyzj->ij", corner, neighbour)
        return total
    if shell == 2:
        return sum(
            jnp.einsum("xyzsi,xyzsj->ij", hot, jnp.roll(hot, -1, axis=axis)) for axis in range(3)
        )
    raise ValueError(f"shell must be 1 or 2, got {shell!r}.")


__all__ = [
    "FIRST_SHELL",
    "NON_SITE",
    "NUM_SPECIES",
    "SECOND_SHELL",
    "SPECIES",
    "SRO_PAIRS",
    "VACANCY",
    "bond_counts",
    "check_occupancy_shape",
    "find_vacancies",
    "gather_sites",
    "insert_window",
    "min_image_sq",
    "occupancy_to_voxels",
    "random_occupancy",
    "site_indices",
    "species_counts",
    "voxels_from_positions",
    "voxels_to_occupancy",
    "window",
    "window_voxels",
]
