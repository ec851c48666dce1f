"""Scaling up the BCC alloy: tiling upsampling and vacancy-centred partial evolution.

- ``tile_upsample``: a large periodic crystal of K = n^3 tiles of l^3 cells, each tile a
  small-system frame from a pool, translated by a random whole number of cells (an even voxel
  offset, so sites map to sites); then ``restore_composition`` (relabel random atoms of the
  over-represented species to the under-represented ones, exactly) and
  ``recentre_vacancies`` (in each tile, its vacancy exchanges with the atom at the tile's
  centre site: one vacancy per tile, at the centre; the reference's global reassignment can
  leave a tile with two).
- ``evolve_vacancy_window``: partial evolution as in the reference: a vacancy m drawn
  uniformly, the periodic window of l^3 cells centred on it (``bcc.window``), evolved as an
  isolated periodic crystal for a fixed number of events (the reference: 124 events of the
  1,024-site window with mean waiting times, ``VacancyKMC(..., waiting_time="mean")``).

All functions act on one configuration and are jittable (``jax.vmap`` for batches).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
from jaxtyping import Array, Float, Int, Int8, PRNGKeyArray, Shaped

from jmacro import bcc
from jmacro._checks import check_positive_int, is_concrete
from jmacro.systems.alloy_kmc import AlloyState, VacancyKMC


def _target_counts(occupancy: Shaped[Array, "..."], composition) -> Int[Array, "4"]:
    """Per-code target counts with the current vacancy count (as ``bcc.species_counts``)."""
    share = np.asarray(composition, np.float64)
    share = jnp.asarray(share / share.sum(), jnp.float32)
    num_vacancies = jnp.sum(occupancy == bcc.VACANCY).astype(jnp.int32)
    atoms = occupancy.size - num_vacancies
    exact = atoms.astype(jnp.float32) * share
    floor = jnp.floor(exact).astype(jnp.int32)
    # The (atoms - sum floor) largest remainders get one more (stable: ties to the lower code).
    order = jnp.argsort(-(exact - floor.astype(jnp.float32)), stable=True)
    extra = (jnp.arange(3) < atoms - floor.sum()).astype(jnp.int32)
    extra = jnp.zeros(3, jnp.int32).at[order].set(extra)
    return jnp.concatenate([num_vacancies[None], floor + extra])


def restore_composition(
    key: PRNGKeyArray, occupancy: Shaped[Array, "L L L 2"], composition=(1.0, 1.0, 1.0)
) -> Int8[Array, "L L L 2"]:
    """Relabel the fewest atoms so the atom counts are exactly ``composition``'s (as
    ``bcc.species_counts``); vacancies are untouched.

    Each over-represented species gives up a uniformly random subset of its atoms (its
    excess); those sites, in random order, take the missing labels of the under-represented
    species.
    """
    flat = occupancy.reshape(-1).astype(jnp.int32)
    counts = jnp.sum(flat[:, None] == jnp.arange(bcc.NUM_SPECIES), axis=0).astype(jnp.int32)
    target = _target_counts(flat, composition)
    excess, deficit = jnp.maximum(counts - target, 0), jnp.maximum(target - counts, 0)
    # One sort: sites by species, in random order within each (uniform in [0, 1) added to the
    # code); the first `excess` of each species are given up, and the given-up sites, in
    # that order, take the missing labels (with three species, one side of the exchange is a
    # single species, so this is a uniformly random relabelling of a uniformly random subset).
    order = jnp.argsort(flat.astype(jnp.float32) + jr.uniform(key, flat.shape, maxval=0.5))
    species = flat[order]
    start = jnp.cumsum(counts) - counts
    give_up = (species != bcc.VACANCY) & (jnp.arange(flat.size) - start[species] < excess[species])
    position = jnp.cumsum(give_up) - 1
    labels = jnp.repeat(jnp.arange(bcc.NUM_SPECIES), deficit, total_repeat_length=flat.size)
    sorted_labels = jnp.where(give_up, labels[jnp.maximum(position, 0)], species)
    relabelled = jnp.zeros_like(flat).at[order].set(sorted_labels)
    return relabelled.astype(jnp.int8).reshape(occupancy.shape)


def tile_centres(num_cells: int, tile_cells: int) -> Int[Array, "K 3"]:
    """Voxel of the centre site of each tile (``BCCTiling3D`` order): origin + l (1, 1, 1)."""
    per_side = num_cells // tile_cells
    grid = jnp.stack(jnp.meshgrid(*[jnp.arange(per_side)] * 3, indexing="ij"), -1)
    return (2 * tile_cells * grid.reshape(-1, 3) + tile_cells).astype(jnp.int32)


def _tiles(occupancy, tile_cells):
    per_side = occupancy.shape[0] // tile_cells
    tiles = occupancy.reshape((per_side, tile_cells) * 3 + (2,))
    return tiles.transpose(0, 2, 4, 1, 3, 5, 6).reshape((-1,) + (tile_cells,) * 3 + (2,))


def _untile(tiles, per_side):
    tile_cells = tiles.shape[1]
    grid = tiles.reshape((per_side,) * 3 + (tile_cells,) * 3 + (2,))
    return grid.transpose(0, 3, 1, 4, 2, 5, 6).reshape((per_side * tile_cells,) * 3 + (2,))


def recentre_vacancies(
    occupancy: Shaped[Array, "L L L 2"], tile_cells: int
) -> tuple[Int8[Array, "L L L 2"], Int[Array, "K 3"]]:
    """In every tile, exchange its vacancy with the atom at the tile's centre site; returns
    the occupancy and the K vacancy voxels (``tile_centres``). Every tile must hold exactly
    one vacancy (checked when concrete)."""
    num_cells = occupancy.shape[0]
    if num_cells % tile_cells:
        raise ValueError(f"tile_cells = {tile_cells} must divide the {num_cells} cells per side.")
    tiles = _tiles(occupancy.astype(jnp.int8), tile_cells)
    if is_concrete(tiles):
        per_tile = np.sum(np.asarray(tiles) == bcc.VACANCY, axis=(1, 2, 3, 4))
        if np.any(per_tile != 1):
            raise ValueError(f"every tile needs exactly one vacancy, got counts {per_tile}.")
    centre = jnp.full(3, tile_cells, jnp.int32)

    def recentre(tile):
        vacancy = bcc.find_vacancies(tile, 1)[0]
        atom = bcc.gather_sites(tile, centre)
        tile = tile.at[bcc.site_indices(vacancy, tile_cells)].set(atom)
        return tile.at[bcc.site_indices(centre, tile_cells)].set(jnp.int8(bcc.VACANCY))

    tiles = jax.vmap(recentre)(tiles)
    return _untile(tiles, num_cells // tile_cells), tile_centres(num_cells, tile_cells)


def tile_upsample(
    key: PRNGKeyArray,
    frames: Shaped[Array, "P l l l 2"],
    tiles_per_side: int,
    composition=(1.0, 1.0, 1.0),
    picks: Int[Array, " K"] | None = None,
) -> AlloyState:
    """A crystal of ``tiles_per_side``^3 tiles, each a random frame of the pool ``frames``
    (one vacancy each) rolled by a random cell offset; composition restored, vacancies at
    the tile centres. Returns the state with its K vacancies in tile order.

    ``picks``: the K frame indices of the tiles (tile order), e.g. drawn by the caller from a
    time window of the small runs; default K uniform draws (with replacement) from the pool.
    The random shifts and relabelling draw from ``key`` either way."""
    tiles_per_side = check_positive_int(tiles_per_side, "tiles_per_side")
    num_tiles, tile_cells = tiles_per_side**3, frames.shape[1]
    key_pick, key_shift, key_relabel = jr.split(key, 3)
    if picks is None:
        picks = jr.randint(key_pick, (num_tiles,), 0, frames.shape[0])
    elif jnp.shape(picks) != (num_tiles,):
        raise ValueError(f"picks must hold K = {num_tiles} frame indices, got {jnp.shape(picks)}.")
    shifts = jr.randint(key_shift, (num_tiles, 3), 0, tile_cells)

    def place(pick, shift):
        frame = frames[pick]
        for axis in range(3):
            frame = jnp.roll(frame, shift[axis], axis=axis)
        return frame

    tiles = jax.vmap(place)(picks, shifts).astype(jnp.int8)
    occupancy = restore_composition(key_relabel, _untile(tiles, tiles_per_side), composition)
    occupancy, vacancies = recentre_vacancies(occupancy, tile_cells)
    return AlloyState(occupancy, vacancies)


def evolve_vacancy_window(
    kmc: VacancyKMC,
    state: AlloyState,
    key: PRNGKeyArray,
    window_cells: int = 8,
    num_events: int = 124,
) -> tuple[Int8[Array, "l l l 2"], Int8[Array, "l l l 2"], Float[Array, ""], Int[Array, ""]]:
    """Partial evolution of one vacancy-centred window.

    Draws a vacancy m uniformly, cuts the ``window_cells``^3-cell periodic window centred on it
    (origin ``v_m - l (1, 1, 1)``, so v_m sits at local voxel (l, l, l)) and runs
    ``num_events`` exchanges of that vacancy with the window as an isolated periodic crystal.
    Other vacancies that fall inside the window stay frozen (code 0; exchanges with them are
    forbidden). Returns ``(window_before, window_after, dt, m)``, dt in seconds.
    """
    key_pick, key_run = jr.split(key)
    which = jr.randint(key_pick, (), 0, state.vacancies.shape[0])
    origin = state.vacancies[which] - window_cells
    before = bcc.window(state.occupancy, origin, window_cells)
    centre = jnp.full((1, 3), window_cells, jnp.int32)
    after, dt = kmc.advance_events(AlloyState(before, centre), key_run, num_events)
    return before, after.occupancy, dt, which


__all__ = [
    "evolve_vacancy_window",
    "recentre_vacancies",
    "restore_composition",
    "tile_centres",
    "tile_upsample",
]
