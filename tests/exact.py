"""Exact references for tiny systems, by enumeration (NumPy, float64)."""

from __future__ import annotations

import itertools

import numpy as np
import scipy.linalg


def all_states(num_sites: int) -> np.ndarray:
    """All 2^n spin configurations, shape (2^n, n), entries -1/+1."""
    return np.array(list(itertools.product((-1, 1), repeat=num_sites)), dtype=np.int64)


def ising_neighbour_sums(states: np.ndarray, shape, halo=None) -> np.ndarray:
    """Neighbour sums (up, down, left, right) of every site; periodic, or inside a frozen halo."""
    height, width = shape
    grids = states.reshape(-1, height, width)
    if halo is None:
        padded = np.pad(grids, ((0, 0), (1, 1), (1, 1)), mode="wrap")
    else:
        padded = np.broadcast_to(np.asarray(halo), (len(grids), height + 2, width + 2)).copy()
        padded[:, 1:-1, 1:-1] = grids
    sums = padded[:, :-2, 1:-1] + padded[:, 2:, 1:-1] + padded[:, 1:-1, :-2] + padded[:, 1:-1, 2:]
    return sums.reshape(len(states), -1)


def ising_rates(states, shape, temperature, field, coupling=1.0, halo=None) -> np.ndarray:
    """Heat-bath flip rates w_i(x) = 1 / (1 + exp(beta dE_i)), shape (num_states, n)."""
    d_energy = 2.0 * states * (coupling * ising_neighbour_sums(states, shape, halo) + field)
    return 1.0 / (1.0 + np.exp(d_energy / temperature))


def ising_energy(states, shape, field, coupling=1.0) -> np.ndarray:
    """Total periodic energy -J sum_i s_i (s_down + s_right) - h sum_i s_i."""
    height, width = shape
    grids = states.reshape(-1, height, width)
    bonds = grids * np.roll(grids, -1, axis=1) + grids * np.roll(grids, -1, axis=2)
    return -coupling * bonds.sum(axis=(1, 2)) - field * grids.sum(axis=(1, 2))


def boltzmann(energies: np.ndarray, temperature: float) -> np.ndarray:
    """Normalised exp(-E / T)."""
    weights = np.exp(-(energies - energies.min()) / temperature)
    return weights / weights.sum()


def generator(states: np.ndarray, rates: np.ndarray) -> np.ndarray:
    """Q[x, y] of the single-spin-flip process; rows sum to zero. States indexed as in
    ``all_states`` (the last site is the least significant bit)."""
    num_states, num_sites = states.shape
    q = np.zeros((num_states, num_states))
    index = np.arange(num_states)
    for i in range(num_sites):
        flipped = index ^ (1 << (num_sites - 1 - i))
        q[index, flipped] += rates[:, i]
    q[index, index] -= rates.sum(axis=1)
    return q


def transient(q: np.ndarray, start: int, time: float) -> np.ndarray:
    """Law of the state at ``time`` from state ``start``: row ``start`` of exp(Q t)."""
    return scipy.linalg.expm(q * time)[start]


def stationary(q: np.ndarray) -> np.ndarray:
    """Stationary law pi Q = 0 of an irreducible generator."""
    values, vectors = np.linalg.eig(q.T)
    pi = np.real(vectors[:, np.argmin(np.abs(values))])
    return pi / pi.sum()


def assert_mean_within(samples, expected, num_se=4.0, what="mean"):
    """Assert that the sample mean is within ``num_se`` standard errors of ``expected``.

    With independent samples, 4 SE gives a false-failure probability of 6e-5 per check
    (keys are fixed, so a passing test stays passing).
    """
    samples = np.asarray(samples, dtype=np.float64)
    mean = samples.mean()
    se = samples.std(ddof=1) / np.sqrt(samples.size)
    assert abs(mean - expected) <= num_se * se, (
        f"{what}: sample {mean:.6g} vs exact {expected:.6g}, |diff| = {abs(mean - expected):.3g}"
        f" > {num_se} SE = {num_se * se:.3g}"
    )
