"""Reference-style numpy vacancy KMC drivers: the baseline ``bench_alloy.py`` measures against.

Re-implemented from the reference's description (not its code): the state is the (2L)^3 voxel
grid (-1 non-site, 0 vacancy, 1-3 species) with the vacancy position kept, and every event

1. cuts the 9x9x9 periodic crop around the vacancy, zeroes non-sites and voxels beyond 7.5
   Angstrom, and builds the 8 rotated / mirrored copies (``np.rot90`` about z, a z flip), each
   flattened to 729 inputs;
2. runs the NNK MLP in numpy on the (8, 729) batch, BatchNorm unfolded, float32;
3. draws the event from the rates nu0 exp(-E_b / k_B T) and an Exp(1) / R waiting time, and
   swaps the vacancy with the chosen neighbour in the grid.

``KRADriver`` is the same loop with the KRA barriers computed in numpy from neighbour lookups
(the reference has no such model; it is the like-for-like baseline of jmacro's KRA kernel).
"""

from __future__ import annotations

import itertools

import numpy as np

BOLTZMANN_EV = 8.617333e-5
DIRECTIONS = np.array(list(itertools.product((-1, 1), repeat=3)))
_TURNS = {(1, 1): 0, (1, -1): 1, (-1, -1): 2, (-1, 1): 3}  # np.rot90 turns bringing d to (1, 1)


class _Driver:
    """One configuration, one event at a time, like the reference's numpy loop."""

    def __init__(self, grid, vacancy, temperature, seed=0, nu0=1e13):
        self.grid = np.array(grid, np.int8)
        self.vacancy = np.array(vacancy, np.int64)
        self.kt, self.nu0 = BOLTZMANN_EV * temperature, nu0
        self.rng = np.random.default_rng(seed)
        self.time = 0.0

    def barriers(self) -> np.ndarray:
        raise NotImplementedError

    def step(self) -> None:
        rates = self.nu0 * np.exp(-self.barriers().astype(np.float64) / self.kt)
        cumulative = np.cumsum(rates)
        k = int(np.searchsorted(cumulative, self.rng.random() * cumulative[-1], side="right"))
        self.time += -np.log(1.0 - self.rng.random()) / cumulative[-1]
        side = self.grid.shape[0]
        target = (self.vacancy + DIRECTIONS[k]) % side
        self.grid[tuple(self.vacancy)] = self.grid[tuple(target)]
        self.grid[tuple(target)] = 0
        self.vacancy = target

    def run(self, num_events: int) -> None:
        for _ in range(num_events):
            self.step()


class NNKDriver(_Driver):
    """The reference's loop: 8 rotated crops and the unfolded NNK MLP per event."""

    def __init__(self, arrays, grid, vacancy, temperature, seed=0, nu0=1e13):
        super().__init__(grid, vacancy, temperature, seed, nu0)
        self.layers = [
            [np.asarray(a, np.float32) for a in arrays[6 * i : 6 * i + 6]] for i in range(4)
        ]
        self.w_out, self.b_out = (np.asarray(a, np.float32) for a in arrays[24:26])
        o = np.arange(-4, 5)
        r2 = o[:, None, None] ** 2 + o[None, :, None] ** 2 + o[None, None, :] ** 2
        self.mask = r2 * 1.62**2 <= 7.5**2
        self.offsets = o

    def inputs(self) -> np.ndarray:
        side = self.grid.shape[0]
        ix, iy, iz = ((self.vacancy[a] + self.offsets) % side for a in range(3))
        crop = self.grid[np.ix_(ix, iy, iz)]
        crop = np.where(self.mask & (crop > 0), crop, 0).astype(np.float32)
        views = []
        for dx, dy, dz in DIRECTIONS:
            view = np.rot90(crop, _TURNS[(dx, dy)], axes=(0, 1))
            views.append((view[:, :, ::-1] if dz < 0 else view).reshape(-1))
        return np.stack(views)

    def barriers(self) -> np.ndarray:
        x = self.inputs()
        for w, b, gamma, beta, mean, var in self.layers:
            x = np.maximum(gamma * (x @ w + b - mean) / np.sqrt(var + 1e-5) + beta, 0)
        return (x @ self.w_out + self.b_out)[:, 0]


class KRADriver(_Driver):
    """The same loop with KRA barriers: E0[A] + (E_f - E_i) / 2, first two shells, numpy."""

    SECOND = np.array([[-2, 0, 0], [2, 0, 0], [0, -2, 0], [0, 2, 0], [0, 0, -2], [0, 0, 2]])

    def __init__(self, e0, v1, v2, grid, vacancy, temperature, seed=0, nu0=1e13):
        super().__init__(grid, vacancy, temperature, seed, nu0)
        self.e0, self.v1, self.v2 = (np.asarray(a, np.float64) for a in (e0, v1, v2))

    def _species(self, sites) -> np.ndarray:
        side = self.grid.shape[0]
        wrapped = np.mod(sites, side)
        return self.grid[wrapped[..., 0], wrapped[..., 1], wrapped[..., 2]].astype(np.int64)

    def barriers(self) -> np.ndarray:
        jumpers = self.vacancy + DIRECTIONS  # (8, 3)
        atoms = self._species(jumpers)
        around_v1 = atoms
        around_v2 = self._species(self.vacancy + self.SECOND)
        around_a1 = self._species(jumpers[:, None] + DIRECTIONS[None])
        around_a2 = self._species(jumpers[:, None] + self.SECOND[None])
        out = np.empty(8)
        for k, a in enumerate(atoms):
            gain = self.v1[a, around_v1].sum() - self.v1[a, a] + self.v2[a, around_v2].sum()
            loss = self.v1[a, around_a1[k]].sum() + self.v2[a, around_a2[k]].sum()
            out[k] = self.e0[a] + 0.5 * (gain - loss)
        return out
