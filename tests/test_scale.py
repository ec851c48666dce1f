"""Partial evolution and hierarchical upsampling."""

import json
import os
import subprocess
import sys
from typing import ClassVar

import chex
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

from jmacro import lattice, observables
from jmacro.geometry import Ghosts, MeanField, Periodic, Segments1D, SquareTiling2D
from jmacro.scale.partial import PartialEvolution, apply_patch, evolve_patch, evolve_patches
from jmacro.scale.upsample import (
    HierarchicalUpsampling,
    LocalRelax,
    hierarchical_upsample,
    local_relax,
    upsample_spins,
)
from jmacro.simulate import random_trajectories
from jmacro.systems import (
    AbstractSPDE,
    CurieWeiss,
    GlauberIsing,
    PredatorPrey,
    predator_prey_initial_condition,
)
from jmacro.systems._spde import laplacian_padded, pad_fields

ISING = GlauberIsing(2.5, 0.1)


def random_lattices(num, size, seed=0):
    return jax.vmap(lambda k: ISING.init_state(k, (size, size)))(jr.split(jr.key(seed), num))


@pytest.mark.parametrize("boundary", ["periodic", "halo"])
def test_partial_evolution_touches_only_the_chosen_patch(boundary):
    scheme = PartialEvolution(SquareTiling2D(8), boundary)
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
    patch, dt, index = evolve_patch(ISING, x, key, PartialEvolution(SquareTiling2D(16)))
    chex.assert_trees_all_equal((patch, dt, index), (*ISING.advance_events(x, key_run), 0))
    cw = CurieWeiss()
    patch, dt, _ = evolve_patch(cw, x, key, PartialEvolution(SquareTiling2D(16), "mean_field"))
    chex.assert_trees_all_equal((patch, dt), cw.advance_events(x, key_run))


def test_frozen_halo_reads_the_real_neighbours():
    """An all-down patch inside an all-up sea (h = 0): with the halo it is pulled up, as an
    isolated periodic system it stays down."""
    model = GlauberIsing(2.5, 0.0)
    x = jnp.ones((16, 16), jnp.int8).at[:8, :8].set(-1)
    keys = jr.split(jr.key(3), 400)

    def patch_mag(boundary):
        scheme = PartialEvolution(SquareTiling2D(8), boundary, duration=2.0)

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
        scheme = PartialEvolution(SquareTiling2D(8), boundary, duration=1.0)
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
    cfg = LocalRelax(SquareTiling2D(4, stride=8), num_events=40)
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
        ("events", LocalRelax(SquareTiling2D(8, stride=4), schedule="parallel")),
        ("time", LocalRelax(SquareTiling2D(8, stride=4), schedule="parallel", duration=2.0)),
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


def small_trajectories(system, key, num, steps, size, step_time=None):
    """Small-system data: m0 ~ U(-1, 1), steps of l^2 flips or of ``step_time``."""
    return random_trajectories(
        system,
        key,
        num,
        (size, size),
        steps,
        initial_condition=lambda k: {"magnetisation": jr.uniform(k, minval=-1.0, maxval=1.0)},
        step_duration=step_time,
    )


def test_small_trajectories_on_a_fixed_time_grid():
    """``step_time`` steps: times are exactly k * step_time; flip-count steps: random times
    whose mean per step is about l^2 flips / (l^2 <w>) > 0."""
    fixed = small_trajectories(ISING, jr.key(3), 3, 4, 8, step_time=0.5)
    np.testing.assert_array_equal(fixed["times"], np.tile(0.5 * np.arange(5), (3, 1)))
    assert fixed["snapshots"].shape == (3, 5, 8, 8) and fixed["snapshots"].dtype == np.int8
    events = small_trajectories(ISING, jr.key(3), 3, 4, 8)
    steps = np.diff(events["times"], axis=1)
    assert np.all(steps > 0) and len(np.unique(steps)) > 1


def test_bad_sizes_raise_before_compute():
    with pytest.raises(ValueError, match="does not tile"):
        PartialEvolution(SquareTiling2D(6)).check((16, 16))
    with pytest.raises(ValueError, match="power"):
        HierarchicalUpsampling(48).num_iterations(16)
    with pytest.raises((ValueError, TypeError), match="boundary"):
        PartialEvolution(SquareTiling2D(8), "open")
    with pytest.raises(ValueError, match="stride"):
        LocalRelax(SquareTiling2D(16, stride=6)).check(64)
    with pytest.raises(ValueError, match="duration"):
        LocalRelax(SquareTiling2D(16, stride=8), duration=-1.0)


_CHILD = """
import json, sys
import jax, jax.random as jr, numpy as np
from jmacro.systems import GlauberIsing
from jmacro.geometry import SquareTiling2D
from jmacro.scale.partial import PartialEvolution, evolve_patches
model = GlauberIsing(2.5, 0.1)
x = jax.vmap(lambda k: model.init_state(k, (16, 16)))(jr.split(jr.key(0), 10))
out = evolve_patches(model, np.asarray(x), jr.key(1), PartialEvolution(SquareTiling2D(8)),
                     batch_size=6, progress=False)
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
    scheme = PartialEvolution(SquareTiling2D(8), "halo")
    out = evolve_patches(ISING, np.asarray(x), key, scheme, batch_size=4, progress=False)
    direct = jax.vmap(lambda s, i: evolve_patch(ISING, s, jr.fold_in(key, i), scheme))(
        x, jnp.arange(10)
    )
    chex.assert_trees_all_equal(
        (out["patch_after"], out["dt"], out["patch_index"]), tuple(np.asarray(d) for d in direct)
    )


# ---------------------------------------------------------------------------------- contract
def test_unsupported_boundaries_and_sizes_raise_before_compute(monkeypatch):
    """Incompatible system/boundary pairs and sizes that do not tile fail with a message that
    names both sides, before any batch is simulated."""
    import jmacro.scale.partial as partial_module

    monkeypatch.setattr(
        partial_module, "map_in_batches", lambda *a, **k: pytest.fail("simulated anyway")
    )
    x = np.asarray(random_lattices(2, 16))
    with pytest.raises(TypeError, match="GlauberIsing cannot evolve a patch with a MeanField"):
        evolve_patches(ISING, x, jr.key(0), PartialEvolution(SquareTiling2D(8), MeanField))
    with pytest.raises(TypeError, match="CurieWeiss cannot evolve a patch with a FrozenHalo"):
        evolve_patches(CurieWeiss(), x, jr.key(0), PartialEvolution(SquareTiling2D(8), "halo"))
    with pytest.raises(ValueError, match="does not tile"):
        evolve_patches(ISING, x, jr.key(0), PartialEvolution(SquareTiling2D(6)))
    with pytest.raises(ValueError, match="Segments1D cannot build a Periodic boundary"):
        PartialEvolution(Segments1D(5), Periodic)
    with pytest.raises(ValueError, match="SquareTiling2D cannot build a Ghosts boundary"):
        LocalRelax(SquareTiling2D(8, stride=4), Ghosts)
    with pytest.raises(TypeError, match="PredatorPrey cannot evolve a patch with a Periodic"):
        PredatorPrey().patch_events(jnp.zeros((4, 2)), jr.key(0), 1, Periodic())
    with pytest.raises(TypeError, match="CurieWeiss cannot evolve a patch with a FrozenHalo"):
        local_relax(
            CurieWeiss(), jnp.asarray(x[0]), jr.key(0), LocalRelax(SquareTiling2D(8, stride=4))
        )


K1_CASES = {
    "ising-periodic": (ISING, SquareTiling2D(16), Periodic),
    "curie-weiss-mean-field": (CurieWeiss(), SquareTiling2D(16), MeanField),
    "curie-weiss-periodic": (CurieWeiss(), SquareTiling2D(16), Periodic),
    "predator-prey-ghosts": (PredatorPrey(diffusion=0.3), Segments1D(1), Ghosts),
}


@pytest.mark.parametrize("case", sorted(K1_CASES))
def test_k_equal_one_is_full_evolution_for_every_system(case):
    """With one patch the patch is the whole state and its boundary is the full system's own
    (periodic lattice; the whole magnetisation; Neumann at both ends): ``evolve_patch`` (one
    implementation for spins and fields) equals ``advance_events`` / ``advance`` of the full
    system with the documented key ``jr.split(key)[1]``, bit for bit, times included."""
    system, tiling, boundary = K1_CASES[case]
    key = jr.key(21)
    _, key_run = jr.split(key)
    if isinstance(tiling, Segments1D):
        x = predator_prey_initial_condition(40, 0.1, 0.5)
        duration, num_events = 3 * 0.01, 3
    else:
        x = random_lattices(1, 16, seed=3)[0]
        duration, num_events = 0.7, 100
    by_events = PartialEvolution(tiling, boundary, num_events=num_events)
    by_time = PartialEvolution(tiling, boundary, duration=duration)
    run = jax.jit(
        lambda x, k: (evolve_patch(system, x, k, by_events), evolve_patch(system, x, k, by_time))
    )
    (patch_e, dt_e, index_e), (patch_t, dt_t, index_t) = run(x, key)
    assert int(index_e) == int(index_t) == 0
    full_e, full_dt = jax.jit(lambda x, k: system.advance_events(x, k, num_events))(x, key_run)
    chex.assert_trees_all_equal((patch_e, dt_e), (full_e, full_dt))
    full_t = jax.jit(lambda x, k: system.advance(x, k, duration))(x, key_run)
    chex.assert_trees_all_equal(patch_t, full_t)
    np.testing.assert_allclose(dt_t, duration, rtol=1e-6)


def test_square_tiling_extract_insert_round_trip():
    """Tiles are ``lattice.tile``'s patches (channels carried along); inserting every tile into
    an empty lattice rebuilds it; windows wrap periodically, each group of the parallel
    schedule holds disjoint windows, and the groups cover every window once."""
    x = jnp.arange(12 * 8 * 3).reshape(12, 8, 3)
    tiling = SquareTiling2D(4)
    assert tiling.check(x.shape) == 6
    rebuilt = jnp.zeros_like(x)
    for k in range(6):
        patch = tiling.extract(x, k)
        np.testing.assert_array_equal(patch, lattice.tile(x, 4)[k])
        chex.assert_trees_all_equal(tiling.insert(x, k, patch), x)
        rebuilt = tiling.insert(rebuilt, k, patch)
    np.testing.assert_array_equal(rebuilt, x)

    y = jnp.arange(64).reshape(8, 8)
    windows = SquareTiling2D(4, stride=2)
    assert windows.check(y.shape) == 16
    marked = windows.insert(jnp.zeros_like(y), 15, jnp.ones((4, 4), y.dtype))
    for j in (0, 5, 15):  # 15: origin (6, 6), wraps around both edges
        row, col = (j // 4) * 2, (j % 4) * 2
        expected = np.roll(np.asarray(y), (-row, -col), axis=(0, 1))[:4, :4]
        np.testing.assert_array_equal(windows.extract(y, j), expected)
    assert int(marked.sum()) == 16 and int(marked[0, 0]) == int(marked[7, 7]) == 1
    cut = windows.cut(y, 5, halo=1)
    np.testing.assert_array_equal(cut[1:-1, 1:-1], windows.extract(y, 5))
    groups = windows.groups(y.shape)
    assert sorted(np.concatenate(groups).tolist()) == list(range(16))
    for group in groups:
        patches = jnp.stack([jnp.full((4, 4), j + 1) for j in group])
        together = windows.insert_many(jnp.zeros_like(y), group, patches)
        one_by_one = jnp.zeros_like(y)
        for j, patch in zip(group, patches, strict=True):
            one_by_one = windows.insert(one_by_one, int(j), patch)
        np.testing.assert_array_equal(together, one_by_one)
        assert int((together > 0).sum()) == 64  # disjoint and covering
    with pytest.raises(ValueError, match="parallel schedule"):
        SquareTiling2D(4, stride=3).groups((12, 12))


def test_segments_extract_insert_round_trip():
    """K segments of n / K cells, and overlapping windows of w cells every s cells without
    wrap; ghosts are the frozen neighbours or, at a physical end, the edge cell (Neumann)."""
    x = jnp.stack([jnp.arange(20.0), 100 + jnp.arange(20.0)], axis=-1)
    tiling = Segments1D(5)
    assert tiling.check(x.shape) == 5
    rebuilt = jnp.zeros_like(x)
    for k in range(5):
        patch = tiling.extract(x, k)
        np.testing.assert_array_equal(patch, x[4 * k : 4 * k + 4])
        chex.assert_trees_all_equal(tiling.insert(x, k, patch), x)
        rebuilt = tiling.insert(rebuilt, k, patch)
        _, ghosts = tiling.patch_with_boundary(x, k, Ghosts)
        np.testing.assert_array_equal(ghosts.neumann, [k == 0, k == 4])
        np.testing.assert_array_equal(
            ghosts.values, x[np.array([max(4 * k - 1, 0), min(4 * k + 4, 19)])]
        )
        assert ghosts.dx == 1 / 20
    np.testing.assert_array_equal(rebuilt, x)

    windows = Segments1D(length=6, stride=2)
    assert windows.check(x.shape) == 8
    for j in range(8):
        np.testing.assert_array_equal(windows.extract(x, j), x[2 * j : 2 * j + 6])
    groups = windows.groups(x.shape)
    assert [g.tolist() for g in groups] == [[0, 3, 6], [1, 4, 7], [2, 5]]
    with pytest.raises(ValueError, match="does not divide the 20 cells"):
        Segments1D(3).check(x.shape)
    with pytest.raises(ValueError, match="stride 4 must divide"):
        Segments1D(length=6, stride=4).check(20)
    with pytest.raises(ValueError, match="exactly one of"):
        Segments1D(2, length=3)


class Heat(AbstractSPDE):
    """A 1D system unknown to jmacro.scale: du = kappa lap(u) dt, one species, no noise."""

    kappa: float
    dt: jax.Array
    method: str = "euler_maruyama"
    num_species: ClassVar[int] = 1

    def __init__(self, kappa=0.2, dt=0.5):
        self.kappa, self.dt = kappa, jnp.float32(dt)

    def drift(self, fields, ghosts=None, *, neumann=None, dx=None):
        return self.kappa * laplacian_padded(pad_fields(fields, ghosts, neumann))

    def noise_scale(self, num_cells, dx=None):
        return jnp.float32(0.0)

    def check_stability(self, num_cells):
        """Explicit Euler is stable for dt kappa <= 1/2: true for the values used here."""

    def init_state(self, key, shape, **initial_condition):
        return jr.uniform(key, (shape[0], 1))


def test_a_new_1d_system_needs_no_change_in_scale():
    """A system defined here runs through evolve_patches and LocalRelax unchanged. Known
    answer (NumPy float64): one explicit step u_i + dt kappa (u_{i-1} - 2 u_i + u_{i+1}) of the
    chosen segment, whose outside neighbours are frozen and whose physical ends replicate the
    edge cell; every other cell untouched; dt = 0.5. Parallel LocalRelax over disjoint windows
    reads the start state everywhere, so one step per window is one full step of the field.
    Tolerance: float32 round-off of O(1) values (1e-6)."""
    system = Heat()
    snapshots = np.asarray(jax.vmap(lambda k: system.init_state(k, (12,)))(jr.split(jr.key(0), 8)))
    out = evolve_patches(
        system, snapshots, jr.key(1), PartialEvolution(Segments1D(4)), batch_size=3, progress=False
    )
    np.testing.assert_array_equal(out["dt"], 0.5)
    assert set(out["patch_index"].tolist()) > {0}
    for x, patch, k in zip(snapshots, out["patch_after"], out["patch_index"], strict=True):
        u = np.concatenate([x[:1], x, x[-1:]])[:, 0].astype(np.float64)
        full = u[1:-1] + 0.5 * 0.2 * (u[:-2] - 2 * u[1:-1] + u[2:])
        np.testing.assert_allclose(patch[:, 0], full[3 * k : 3 * k + 3], atol=1e-6)
    relax = LocalRelax(Segments1D(length=3, stride=3), schedule="parallel", num_events=1)
    relaxed = jax.jit(lambda x, k: local_relax(system, x, k, relax))(snapshots[0], jr.key(2))
    np.testing.assert_allclose(
        relaxed, system.advance(jnp.asarray(snapshots[0]), jr.key(3), 0.5), atol=1e-6
    )
