"""Training pairs from partial evolution: the "ours", "baseline", "patch" and full formulas."""

from __future__ import annotations

import functools

import chex
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

from jmacro import lattice, observables
from jmacro.models import ising_periodic_observables, make_spin_autoencoder
from jmacro.training import (
    IncrementPairs,
    encode_configurations,
    encode_full_pairs,
    encode_partial_evolution_pairs,
    fit_normaliser,
    normalise_pairs,
)

rbg_key = functools.partial(jr.key, impl="rbg")  # fast-compiling keys on a 2-core CPU

NUM = 6


@pytest.fixture(scope="module")
def data():
    # 8x8 lattices of 4x4 patches (K = 4); known observables only (m, domain walls), so the
    # expected values are plain observables.
    rng = np.random.default_rng(0)
    model = make_spin_autoencoder(rbg_key(0), 8, 4, closure_dim=0, known="ising")
    snapshots = np.where(rng.random((NUM, 8, 8)) < 0.5, 1, -1).astype(np.int8)
    evolved = np.where(rng.random((NUM, 4, 4)) < 0.5, 1, -1).astype(np.int8)
    index = rng.integers(0, 4, NUM)
    dt = rng.uniform(0.1, 0.2, NUM).astype(np.float32)
    return model, snapshots, index, evolved, dt


def patch_code(model, patch):
    return np.asarray(model.encode_patch(jnp.asarray(patch)))


def test_ours_pairs_end_at_the_encoding_of_the_modified_lattice(data):
    # z~ = z_t + K (phi(x') - phi(x_t)): with the known observables read through the lattice
    # the increment includes the bonds of the neighbouring patches that point into the patch.
    model, snapshots, index, evolved, dt = data
    pairs = encode_partial_evolution_pairs(model, snapshots, index, evolved, dt, method="ours")
    chex.assert_shape((pairs.z0, pairs.z1, pairs.dt), ((NUM, 2), (NUM, 2), (NUM,)))
    for n in range(NUM):
        x = jnp.asarray(snapshots[n])
        moved = model.encode(lattice.insert_patch(x, int(index[n]), jnp.asarray(evolved[n])))
        chex.assert_trees_all_close(pairs.z0[n], np.asarray(model.encode(x)), atol=1e-6)
        chex.assert_trees_all_close(pairs.z0[n] + (pairs.z1[n] - pairs.z0[n]) / 4, moved, atol=1e-6)
        # (m, domain-wall density) of the modified lattice itself.
        x_new = lattice.insert_patch(x, int(index[n]), jnp.asarray(evolved[n]))
        lattice_values = [observables.magnetisation(x_new), observables.domain_wall_density(x_new)]
        chex.assert_trees_all_close(moved, jnp.stack(lattice_values), atol=1e-6)
    chex.assert_trees_all_close(pairs.dt, dt)


def test_ours_pairs_with_a_learned_closure():
    # closure_dim > 0: the closure part moves by phi_loc(new) - phi_loc(old), the known part
    # by all the bonds touching the patch; together K times the change of the encoding.
    rng = np.random.default_rng(1)
    model = make_spin_autoencoder(rbg_key(1), 16, 4, closure_dim=2, base_channels=4)
    snapshots = np.where(rng.random((NUM, 16, 16)) < 0.5, 1, -1).astype(np.int8)
    evolved = np.where(rng.random((NUM, 4, 4)) < 0.5, 1, -1).astype(np.int8)
    index = rng.integers(0, 16, NUM)
    dt = np.full(NUM, 0.1, np.float32)
    pairs = encode_partial_evolution_pairs(model, snapshots, index, evolved, dt, chunk_size=4)
    x_new = np.array(snapshots)
    for n in range(NUM):
        r, c = divmod(int(index[n]), 4)
        x_new[n, 4 * r : 4 * r + 4, 4 * c : 4 * c + 4] = evolved[n]
    moved = encode_configurations(model, x_new)
    chex.assert_trees_all_close(pairs.z0, encode_configurations(model, snapshots), atol=1e-6)
    chex.assert_trees_all_close(pairs.z0 + (pairs.z1 - pairs.z0) / 16, moved, atol=1e-6)


def test_ours_pairs_with_patch_periodic_observables_are_the_reference_formula(data):
    # known="ising_periodic" reads no halo: z~ = z_t + phi_loc(new) - phi_loc(old).
    _, snapshots, index, evolved, dt = data
    model = make_spin_autoencoder(rbg_key(0), 8, 4, closure_dim=0, known="ising_periodic")
    pairs = encode_partial_evolution_pairs(model, snapshots, index, evolved, dt, method="ours")
    for n in range(NUM):
        x = jnp.asarray(snapshots[n])
        old = lattice.extract_patch(x, int(index[n]), 4)
        difference = patch_code(model, evolved[n]) - patch_code(model, old)
        chex.assert_trees_all_close(pairs.z1[n] - pairs.z0[n], difference, atol=1e-6)


def test_baseline_and_patch_pairs(data):
    model, snapshots, index, evolved, dt = data
    baseline = encode_partial_evolution_pairs(
        model, snapshots, index, evolved, dt, method="baseline"
    )
    patch = encode_partial_evolution_pairs(model, snapshots, index, evolved, dt, method="patch")
    for n in range(NUM):
        x = jnp.asarray(snapshots[n])
        new = patch_code(model, evolved[n])
        old = patch_code(model, lattice.extract_patch(x, int(index[n]), 4))
        # The evolved patch is a small periodic system: its own periodic observables.
        chex.assert_trees_all_close(new, ising_periodic_observables(jnp.asarray(evolved[n])))
        # baseline, as in REFERENCE.md: (phi(x_t), phi_loc(x_{t+dt,I}))
        chex.assert_trees_all_close(baseline.z0[n], np.asarray(model.encode(x)), atol=1e-6)
        chex.assert_trees_all_close(baseline.z1[n], new, atol=1e-6)
        chex.assert_trees_all_close((patch.z0[n], patch.z1[n]), (old, new), atol=1e-6)


def test_full_pairs_and_chunking(data):
    model, snapshots, _, _, dt = data
    later = snapshots[::-1].copy()
    full = encode_full_pairs(model, snapshots, later, dt, chunk_size=4)  # 4 + padded 2
    expected0 = np.stack([np.asarray(model.encode(jnp.asarray(x))) for x in snapshots])
    chex.assert_trees_all_close(full.z0, expected0, atol=1e-6)
    chex.assert_trees_all_close(full.z1, expected0[::-1], atol=1e-6)
    chex.assert_trees_all_close(encode_configurations(model, snapshots, chunk_size=5), expected0)


def test_normalisation_of_pairs():
    z0 = np.array([[1.0, 10.0], [3.0, 30.0], [5.0, 20.0]], np.float32)
    pairs = IncrementPairs(z0, z0 + 1.0, np.array([0.5, 1.0, 1.5], np.float32))
    normaliser = fit_normaliser(pairs.z0, validation_dt=np.array([2.0, 4.0]))
    chex.assert_trees_all_close(normaliser.time_scale, jnp.float32(3.0))
    scaled = normalise_pairs(pairs, normaliser)
    chex.assert_trees_all_close(scaled.dt, pairs.dt / 3.0)
    chex.assert_trees_all_close(scaled.z0.mean(axis=0), np.zeros(2), atol=1e-6)
    chex.assert_trees_all_close(scaled.z0.std(axis=0), np.ones(2), atol=1e-6)
    chex.assert_trees_all_close(scaled.z1 - scaled.z0, 1.0 / z0.std(axis=0)[None].repeat(3, 0))


def test_bad_pair_inputs_raise(data):
    model, snapshots, index, evolved, dt = data
    with pytest.raises(ValueError, match="unknown pair method"):
        encode_partial_evolution_pairs(model, snapshots, index, evolved, dt, method="naive")
    with pytest.raises(ValueError, match=r"\[0, K = 4\)"):
        encode_partial_evolution_pairs(model, snapshots, index + 4, evolved, dt)
    bad_dt = dt.copy()
    bad_dt[2] = np.inf
    with pytest.raises(ValueError, match="finite and > 0"):
        encode_partial_evolution_pairs(model, snapshots, index, evolved, bad_dt)
    with pytest.raises(ValueError, match="evolved_patches must have shape"):
        encode_partial_evolution_pairs(model, snapshots, index, evolved[:, :2], dt)
    # Mismatched sample counts: our ValueError, or jaxtyping's TypeError first when runtime
    # type checks are on (as under pytest).
    with pytest.raises((ValueError, TypeError)):
        encode_full_pairs(model, snapshots, snapshots[:3], dt)
    normaliser = fit_normaliser(np.random.default_rng(0).normal(size=(5, 3)), dt)
    with pytest.raises(ValueError, match=r"shape \(n, 3\)"):
        normalise_pairs(IncrementPairs(np.ones((4, 2)), np.ones((4, 2)), np.ones(4)), normaliser)
