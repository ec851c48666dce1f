# ruff: noqa: NPY002  (numba implements the legacy np.random API inside jitted code)
"""The reference's exact simulator, in numba: the baseline of ``bench_glauber.py``.

Rejection-free continuous-time Glauber heat-bath dynamics (kinetic Monte Carlo, as in the
reference implementation): every site keeps its flip rate w_i; each event

1. recomputes the cumulative rates (O(n)),
2. draws u ~ U[0, total) and finds the site whose cumulative interval holds it (binary search),
3. flips it and updates the 5 affected rates (the site and its 4 neighbours),
4. advances the clock by dt ~ Exp(total).

For Curie-Weiss every rate depends on the magnetisation, so step 1 refreshes all n rates from
the two values of the current state (one per spin sign) in the same O(n) pass.

A step is n flips (the reference's unit). Batches of patches run one after another in one
thread (numba, no parallel loop), as the per-core baseline. numba is optional
(``pip install jmacro[bench]``); ``available()`` says whether it is installed.
"""

from __future__ import annotations

import math

import numpy as np

try:
    import numba
except ImportError:  # pragma: no cover - optional dependency
    numba = None


def available() -> bool:
    return numba is not None


def _njit(fn):
    return numba.njit(cache=False, fastmath=False)(fn) if numba is not None else fn


def neighbour_table(height: int, width: int) -> np.ndarray:
    """Flat indices of the 4 periodic neighbours of every site, ``(n, 4)`` int64."""
    rows, cols = np.divmod(np.arange(height * width), width)
    return np.stack(
        [
            ((rows - 1) % height) * width + cols,
            ((rows + 1) % height) * width + cols,
            rows * width + (cols - 1) % width,
            rows * width + (cols + 1) % width,
        ],
        axis=1,
    )


@_njit
def _seed(seed):
    np.random.seed(seed)


@_njit
def _ising_rate(spins, neighbours, i, beta, coupling, field):
    total = 0.0
    for j in range(4):
        total += spins[neighbours[i, j]]
    d_energy = 2.0 * spins[i] * (coupling * total + field)
    return 1.0 / (1.0 + math.exp(beta * d_energy))


@_njit
def ising_events(spins, neighbours, beta, coupling, field, num_events):
    """``num_events`` flips of one periodic lattice (flat int8 ``spins``, in place);
    returns the elapsed time."""
    n = spins.shape[0]
    rates = np.empty(n)
    cumulative = np.empty(n)
    for i in range(n):
        rates[i] = _ising_rate(spins, neighbours, i, beta, coupling, field)
    elapsed = 0.0
    for _ in range(num_events):
        acc = 0.0
        for i in range(n):
            acc += rates[i]
            cumulative[i] = acc
        total = cumulative[n - 1]
        k = np.searchsorted(cumulative, np.random.random() * total, side="right")
        k = min(k, n - 1)
        spins[k] = -spins[k]
        rates[k] = _ising_rate(spins, neighbours, k, beta, coupling, field)
        for j in range(4):
            m = neighbours[k, j]
            rates[m] = _ising_rate(spins, neighbours, m, beta, coupling, field)
        elapsed += -math.log(1.0 - np.random.random()) / total
    return elapsed


@_njit
def ising_patches(patches, neighbours, beta, coupling, field, num_events):
    """``num_events`` flips of each flat lattice of ``patches`` ``(B, n)``, one after another."""
    elapsed = 0.0
    for b in range(patches.shape[0]):
        elapsed += ising_events(patches[b], neighbours, beta, coupling, field, num_events)
    return elapsed


@_njit
def curie_weiss_events(spins, beta, coupling, field, num_events):
    """``num_events`` flips of one Curie-Weiss system (flat int8 ``spins``, in place)."""
    n = spins.shape[0]
    cumulative = np.empty(n)
    total_sum = 0
    for i in range(n):
        total_sum += spins[i]
    elapsed = 0.0
    for _ in range(num_events):
        # w(s) = 1 / (1 + exp(beta 2 s (J (M - s) / N + h))) for s = +1 and s = -1.
        rate_up = 1.0 / (1.0 + math.exp(beta * 2.0 * (coupling * (total_sum - 1) / n + field)))
        rate_down = 1.0 / (1.0 + math.exp(-beta * 2.0 * (coupling * (total_sum + 1) / n + field)))
        acc = 0.0
        for i in range(n):
            acc += rate_up if spins[i] > 0 else rate_down
            cumulative[i] = acc
        total = cumulative[n - 1]
        k = np.searchsorted(cumulative, np.random.random() * total, side="right")
        k = min(k, n - 1)
        total_sum -= 2 * spins[k]
        spins[k] = -spins[k]
        elapsed += -math.log(1.0 - np.random.random()) / total
    return elapsed


@_njit
def curie_weiss_patches(patches, beta, coupling, field, num_events):
    elapsed = 0.0
    for b in range(patches.shape[0]):
        elapsed += curie_weiss_events(patches[b], beta, coupling, field, num_events)
    return elapsed


@_njit
def checkerboard_sweeps(spins, beta, coupling, field, num_sweeps):
    """Discrete-time heat-bath checkerboard sweeps of a periodic ``(H, W)`` int8 lattice."""
    height, width = spins.shape
    for _ in range(num_sweeps):
        for colour in range(2):
            for r in range(height):
                up, down = (r - 1) % height, (r + 1) % height
                for c in range((r + colour) % 2, width, 2):
                    total = (
                        spins[up, c]
                        + spins[down, c]
                        + spins[r, (c - 1) % width]
                        + spins[r, (c + 1) % width]
                    )
                    p_up = 1.0 / (1.0 + math.exp(-2.0 * beta * (coupling * total + field)))
                    spins[r, c] = 1 if np.random.random() < p_up else -1


def seed(value: int) -> None:
    """Seed numba's generator (its own state, separate from NumPy's)."""
    _seed(value)
