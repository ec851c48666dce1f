"""Partial evolution, hierarchical upsampling and the dataset builder."""

import dataclasses
import json
import os
import subprocess
import sys

import chex
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

from jmacro import lattice, observables
from jmacro.scale.builder import SpinDatasetConfig, build_spin_datasets, small_trajectories
from jmacro.scale.partial import PartialEvolution, apply_patch, evolve_patch, evolve_patches
from jmacro.scale.upsample import (
    HierarchicalUpsampling,
    LocalRelax,
    hierarchical_upsample,
    local_relax,
    upsample_spins,
)
from jmacro.systems import CurieWeiss, GlauberIsing

ISING = GlauberIsing(2.5, 0.1)


def random_lattices(num, size, seed=0):
    return jax.vmap(lambda k: ISING.init_state(k, (size, size)))(jr.split(jr.key(seed), num))


@pytest.mark.parametrize("boundary", ["periodic", "halo"])
def test_partial_evolution_touches_only_the_chosen_patch(boundary):
    scheme = PartialEvolution(8, boundary)
    snapshots = random_lattices(64, 32)

    def full_after(x, k):
        patch, dt, index = evolve_patch(ISING, x, k, scheme)
        return apply_patch(x, index, patch), dt, index

    after, dt, index = jax.jit(jax.vmap(full_after))(snapshots, jr.split(jr.key(1), 64))
    for x, y, i in zip(np.asarray(snapshots), np.asarray(after), np.asarray(index), strict=True):
        inside = np.zeros((32, 32), bool)
        row, col = (i // 4) * 8, (i % 4) * 8
        inside[row : row + 8, col : col + 8] = True
        np.testing.assert_array_equal(x[~inside], y[~inside])
        assert (x[inside] != y[inside]).any()  # 64 flips in 64 sites cannot all cancel here
    assert np.all(np.asarray(dt) > 0)
    # The patch index is uniform over the K = 16 patches.
    assert len(np.unique(np.asarray(index))) > 10


def test_k_equal_one_is_the_full_dynamics():
    """With the patch = the whole lattice (K = 1) partial evolution IS full evolution: same
    key, bit-identical states and times (so the same law), for Ising and Curie-Weiss."""
    x = random_lattices(1, 16)[0]
    key = jr.key(2)
    _, key_run = jr.split(key)
    patch, dt, index = evolve_patch(ISING, x, key, PartialEvolution(16))
    chex.assert_trees_all_equal((patch, dt, index), (*ISING.advance_events(x, key_run), 0))
    cw = CurieWeiss()
    patch, dt, _ = evolve_patch(cw, x, key, PartialEvolution(16, "mean_field"))
    chex.assert_trees_all_equal((patch, dt), cw.advance_events(x, key_run))


def test_frozen_halo_reads_the_real_neighbours():
    """An all-down patch inside an all-up sea (h = 0): with the halo it is pulled up, as an
    isolated periodic system it stays down."""
    model = GlauberIsing(2.5, 0.0)
    x = jnp.ones((16, 16), jnp.int8).at[:8, :8].set(-1)
    keys = jr.split(jr.key(3), 400)

    def patch_mag(boundary):
        scheme = PartialEvolution(8, boundary, duration=2.0)

        def one(k):
            # Force patch 0 by evolving the lattice rolled so the chosen patch is patch 0.
            cut = lattice.extract_patch(x, 0, 8, halo=1)
            halo = cut if boundary == "halo" else None
            after = model.advance_time(cut[1:-1, 1:-1], k, scheme.duration, halo=halo)
            return observables.magnetisation(after)

        return np.asarray(jax.jit(jax.vmap(one))(keys))

    with_halo, isolated = patch_mag("halo"), patch_mag("periodic")
    se = np.hypot(with_halo.std(), isolated.std()) / np.sqrt(len(keys))
    assert with_halo.mean() - isolated.mean() > 10 * se


def test_mean_field_patch_uses_the_large_magnetisation():
    """A Curie-Weiss patch inside a strongly positive large system flips up faster than the
    same patch as an isolated system."""
    cw = CurieWeiss(1.1, 0.0)
    x = jnp.ones((32, 32), jnp.int8).at[:8, :8].set(-1)  # patch 0 down, m = 0.875
    keys = jr.split(jr.key(4), 300)

    def mag(boundary):
        scheme = PartialEvolution(8, boundary, duration=1.0)
        out = jax.jit(jax.vmap(lambda k: evolve_patch(cw, x, k, scheme)))(keys)
        patches, _, index = out
        return np.asarray(jax.vmap(observables.magnetisation)(patches)), np.asarray(index)

    mf, idx_mf = mag("mean_field")
    iso, idx_iso = mag("periodic")
    # Only the draws that picked the all-down patch 0 are comparable.
    mf, iso = mf[idx_mf == 0], iso[idx_iso == 0]
    assert len(mf) > 5 and len(iso) > 5
    assert mf.mean() > iso.mean() + 0.5


def test_upsample_preserves_magnetisation_exactly():
    x = random_lattices(5, 8)
    for factor in (2, 3):
        up = jax.vmap(lambda s, f=factor: upsample_spins(s, f))(x)
        chex.assert_shape(up, (5, 8 * factor, 8 * factor))
        np.testing.assert_array_equal(
            np.asarray(up, np.int64).sum(axis=(1, 2)),
            factor**2 * np.asarray(x, np.int64).sum(axis=(1, 2)),
        )


def test_local_relax_changes_nothing_outside_its_windows():
    """Windows of side 4 every 8 sites leave the other sites untouched (sequential schedule;
    with the halo each window sees but never writes its neighbours)."""
    x = random_lattices(1, 16)[0]
    cfg = LocalRelax(window=4, stride=8, num_events=40)
    y = np.asarray(jax.jit(lambda x, k: local_relax(ISING, x, k, cfg))(x, jr.key(5)))
    inside = np.zeros((16, 16), bool)
    for r in (0, 8):
        for c in (0, 8):
            inside[r : r + 4, c : c + 4] = True
    np.testing.assert_array_equal(np.asarray(x)[~inside], y[~inside])
    assert (np.asarray(x)[inside] != y[inside]).any()


@pytest.mark.parametrize("schedule", ["sequential", "parallel"])
def test_local_relax_heals_blocky_configurations(schedule):
    """Upsampled 2x2-block lattices have half the domain-wall density of the small system;
    LocalRelax brings it back to within 15% of the equilibrium small-system value, while
    the un-relaxed one stays at ~half (the spread of 64 lattices' mean is < 1%)."""
    small = jax.jit(jax.vmap(lambda x, k: ISING.advance_time(x, k, 30.0)))(
        random_lattices(64, 16), jr.split(jr.key(6), 64)
    )
    target = float(jax.vmap(observables.domain_wall_density)(small).mean())
    cfg = HierarchicalUpsampling(32, relax=LocalRelax(schedule=schedule))
    relaxed = jax.jit(lambda s, k: hierarchical_upsample(ISING, s, k, cfg))(small, jr.key(7))
    blocky = jax.vmap(lambda s: upsample_spins(s, 2))(small)
    dw_relaxed = float(jax.vmap(observables.domain_wall_density)(relaxed).mean())
    dw_blocky = float(jax.vmap(observables.domain_wall_density)(blocky).mean())
    assert dw_blocky == pytest.approx(target / 2, rel=1e-6)
    assert abs(dw_relaxed - target) < 0.15 * target


def test_fixed_time_relaxation_avoids_the_jump_chain_tilt():
    """Relaxing windows by a fixed flip count samples the jump chain, tilted by the total flip
    rate towards disordered states: under the true dynamics the domain-wall density of such
    snapshots then falls (measured -0.012 per sweep). Fixed-time windows give snapshots whose
    density drifts at most a third as much (measured -0.002). 256 lattices: SE ~ 1e-3."""
    small = jax.jit(jax.vmap(lambda x, k: ISING.advance_time(x, k, 30.0)))(
        random_lattices(256, 16), jr.split(jr.key(6), 256)
    )
    dw = jax.vmap(observables.domain_wall_density)
    drifts = {}
    for name, relax in [
        ("events", LocalRelax(8, 4, schedule="parallel")),
        ("time", LocalRelax(8, 4, schedule="parallel", duration=2.0)),
    ]:
        cfg = HierarchicalUpsampling(32, relax=relax)
        large = jax.jit(lambda s, k, c=cfg: hierarchical_upsample(ISING, s, k, c))(small, jr.key(7))
        later = jax.jit(jax.vmap(lambda x, k: ISING.advance_time(x, k, 1.0)))(
            large, jr.split(jr.key(8), 256)
        )
        change = np.asarray(dw(later) - dw(large))
        drifts[name] = (change.mean(), change.std() / np.sqrt(len(change)))
    (events, se_events), (fixed, _) = drifts["events"], drifts["time"]
    assert events < -5 * se_events, drifts
    assert abs(fixed) < abs(events) / 3, drifts


def test_small_trajectories_on_a_fixed_time_grid():
    """``step_time`` steps: times are exactly k * step_time; flip-count steps: random times
    whose mean per step is about l^2 flips / (l^2 <w>) > 0."""
    fixed = small_trajectories(ISING, jr.key(3), 3, 4, 8, step_time=0.5, progress=False)
    np.testing.assert_array_equal(fixed["times"], np.tile(0.5 * np.arange(5), (3, 1)))
    assert fixed["snapshots"].shape == (3, 5, 8, 8) and fixed["snapshots"].dtype == np.int8
    events = small_trajectories(ISING, jr.key(3), 3, 4, 8, progress=False)
    steps = np.diff(events["times"], axis=1)
    assert np.all(steps > 0) and len(np.unique(steps)) > 1


def test_bad_sizes_raise_before_compute():
    with pytest.raises(ValueError, match="does not tile"):
        PartialEvolution(6).check((16, 16))
    with pytest.raises(ValueError, match="power"):
        HierarchicalUpsampling(48).num_iterations(16)
    with pytest.raises((ValueError, TypeError), match="boundary"):
        PartialEvolution(8, "open")
    with pytest.raises(ValueError, match="stride"):
        LocalRelax(16, 6).check(64)
    with pytest.raises(ValueError, match="duration"):
        LocalRelax(16, 8, duration=-1.0)
    with pytest.raises(ValueError, match="small_step_time"):
        SpinDatasetConfig(small_step_time=0.0)
    with pytest.raises(ValueError, match="power"):
        SpinDatasetConfig(small_size=12, large_size=40)


SMOKE = SpinDatasetConfig(
    small_size=8,
    large_size=16,
    num_trajectories=6,
    num_steps=4,
    num_large=12,
    num_random=4,
    relax=LocalRelax(8, 4),
)


def test_builder_is_reproducible_cached_and_recomputes_only_what_changed(tmp_path):
    first = build_spin_datasets(SMOKE, tmp_path / "a", progress=False)
    second = build_spin_datasets(SMOKE, tmp_path / "b", progress=False)
    for name in ("small", "large", "pairs"):
        assert first[name].dataset.fingerprint() == second[name].dataset.fingerprint()
    assert first["small"].dataset["snapshots"].shape == (6, 5, 8, 8)
    assert first["large"].dataset["snapshots"].shape == (16, 16, 16)
    assert first["pairs"].dataset["patch_after"].shape == (16, 8, 8)
    again = build_spin_datasets(SMOKE, tmp_path / "a", progress=False)
    assert not any(stage.built for stage in again.values())
    halo = build_spin_datasets(
        dataclasses.replace(SMOKE, boundary="halo"), tmp_path / "a", progress=False
    )
    assert [halo[n].built for n in ("small", "large", "pairs")] == [False, False, True]
    meta = json.loads((tmp_path / "a" / "pairs" / "meta.json").read_text())
    assert "jmacro_version" in meta


_CHILD = """
import json, sys
import jax, jax.random as jr, numpy as np
from jmacro.systems import GlauberIsing
from jmacro.scale.partial import PartialEvolution, evolve_patches
model = GlauberIsing(2.5, 0.1)
x = jax.vmap(lambda k: model.init_state(k, (16, 16)))(jr.split(jr.key(0), 10))
out = evolve_patches(model, np.asarray(x), jr.key(1), PartialEvolution(8), batch_size=6,
                     progress=False)
print(json.dumps({"devices": jax.device_count(),
                  **{k: np.asarray(v).tolist() for k, v in out.items()}}))
"""


def test_sharded_partial_evolution_equals_unsharded():
    """Four host devices vs one, batches of 6 (not divisible by 4): identical pairs."""
    results = []
    for count in (4, 1):
        env = dict(
            os.environ,
            XLA_FLAGS=f"--xla_force_host_platform_device_count={count}",
            JAX_PLATFORMS="cpu",
        )
        done = subprocess.run(
            [sys.executable, "-c", _CHILD],
            env=env,
            capture_output=True,
            text=True,
            check=True,
            timeout=300,
        )
        results.append(json.loads(done.stdout.strip().splitlines()[-1]))
    assert results[0].pop("devices") == 4 and results[1].pop("devices") == 1
    assert results[0] == results[1]


def test_evolve_patches_matches_vmapped_evolve_patch():
    x = random_lattices(10, 16)
    key = jr.key(8)
    scheme = PartialEvolution(8, "halo")
    out = evolve_patches(ISING, np.asarray(x), key, scheme, batch_size=4, progress=False)
    direct = jax.vmap(lambda s, i: evolve_patch(ISING, s, jr.fold_in(key, i), scheme))(
        x, jnp.arange(10)
    )
    chex.assert_trees_all_equal(
        (out["patch_after"], out["dt"], out["patch_index"]), tuple(np.asarray(d) for d in direct)
    )
