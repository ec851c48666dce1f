"""Predator-prey SPDE: deterministic limit, noise law, strong order, partial evolution,
upsampling, LocalRelax and input errors."""

import chex
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

from jmacro.geometry import Ghosts, Segments1D
from jmacro.scale import (
    HierarchicalUpsampling,
    Interpolation,
    LocalRelax,
    PartialEvolution,
    apply_patch,
    evolve_patch,
    evolve_patches,
    local_relax,
    upsample_dataset,
    upsample_field,
)
from jmacro.simulate import trajectories
from jmacro.systems import (
    PredatorPrey,
    SimulationBlowUpError,
    euler_maruyama_step,
    predator_prey_initial_condition,
)

A, B = 3.0, 0.4


def reference_drift(x, a=A, b=B, diffusion=0.0):
    """Independent NumPy float64 right-hand side with Neumann (replicate) boundaries."""
    p = np.concatenate([x[:1], x, x[-1:]])
    lap = p[:-2] - 2 * p[1:-1] + p[2:]
    u, v = x[:, 0], x[:, 1]
    return np.stack([u * (1 - u - v) + diffusion * lap[:, 0], a * v * (u - b) + lap[:, 1]], -1)


def rk4(x, h, num_steps, **kwargs):
    for _ in range(num_steps):
        k1 = reference_drift(x, **kwargs)
        k2 = reference_drift(x + h / 2 * k1, **kwargs)
        k3 = reference_drift(x + h / 2 * k2, **kwargs)
        k4 = reference_drift(x + h * k3, **kwargs)
        x = x + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
    return x


KEY0 = jr.key(0)


@jax.jit
def run_steps(system, x, num_steps):
    """``num_steps`` steps of ``system`` (a pytree argument: one compilation serves all
    parameter values and step counts). Step i uses ``fold_in(key 0, i)``."""
    return jax.lax.fori_loop(0, num_steps, lambda i, y: system.step(y, jr.fold_in(KEY0, i)), x)


# ---------------------------------------------------------------------------------- dynamics
@pytest.mark.parametrize(("method", "order"), [("euler_maruyama", 1), ("heun", 2)])
def test_deterministic_limit_converges_to_rk4(method, order):
    """sigma = 0: the scheme converges to a float64 RK4 solution (h = 1e-3, error ~1e-12) of
    the same method-of-lines ODE at its order: halving dt divides the max error at T = 1 by
    2^order within 10% (leading-order error term; the smallest dt keeps the error 100x above
    float32 round-off). For Euler the error constant e/dt is O(1) for these O(1) fields and
    rates (measured 0.08), so e(dt) < dt: a wrong drift term gives an O(1) error instead."""
    x0 = reference_initial(32, 0.1, 0.5)
    exact = rk4(np.asarray(x0, np.float64), 1e-3, 1000, diffusion=0.5)
    dts = (0.04, 0.02, 0.01)
    errors = []
    for dt in dts:
        system = PredatorPrey(A, B, diffusion=0.5, sigma=0.0, dt=dt, method=method)
        errors.append(np.abs(np.asarray(run_steps(system, x0, round(1 / dt))) - exact).max())
    ratios = np.array(errors[:-1]) / np.array(errors[1:])
    np.testing.assert_allclose(ratios, 2.0**order, rtol=0.1)
    assert errors[-1] < dts[-1]


def test_uniform_state_stays_uniform_and_follows_the_ode():
    """A spatially uniform state has lap = 0 exactly, so it stays exactly uniform and each cell
    follows Euler on u' = u (1-u-v), v' = a v (u-b). Float32 vs float64 Euler over 100 steps:
    round-off ~100 x 6e-8 relative, so 2e-5 absolute bounds it. Row 0 is the initial state and
    save_every = 10 only subsamples the saved path."""
    dt, num_steps = 0.01, 100
    system = PredatorPrey(A, B, diffusion=1.0, sigma=0.0, dt=dt)
    x0 = jnp.broadcast_to(jnp.array([0.6, 0.3]), (16, 2))
    path = np.asarray(jax.jit(lambda x: system.simulate(x, jr.key(0), num_steps, 10))(x0))
    assert path.shape == (11, 16, 2)
    assert np.all(np.ptp(path, axis=1) == 0)
    u, v = 0.6, 0.3
    expected = [(u, v)]
    for _ in range(num_steps):
        u, v = u + dt * u * (1 - u - v), v + dt * A * v * (u - B)
        expected.append((u, v))
    np.testing.assert_allclose(path[:, 0], np.array(expected)[::10], atol=2e-5)
    np.testing.assert_array_equal(path[0], x0)


@pytest.mark.parametrize("scaling", ["lattice", "physical"])
def test_noise_increments_are_independent_gaussians(scaling):
    """At u = v = 0 the drift is exactly 0, so one step is pure noise: mean 0 and variance
    sigma^2 dt (lattice) or sigma^2 dt / dx (physical) per cell, within 4 standard errors
    (SE of the mean sqrt(var/N), of the variance var sqrt(2/(N-1)) for Gaussians); the
    correlation between neighbouring cells, species and trajectories within 4 / sqrt(N)."""
    num_cells, sigma, dt = 100, 0.3, 0.01
    system = PredatorPrey(A, B, diffusion=0.7, sigma=sigma, dt=dt, scaling=scaling)
    zero = jnp.zeros((num_cells, 2))
    steps = jax.jit(jax.vmap(lambda k: system.step(zero, k)))(jr.split(jr.key(1), 200))
    dw = np.asarray(steps, np.float64)
    var = sigma**2 * dt * (num_cells if scaling == "physical" else 1)
    num = dw.size
    assert abs(dw.mean()) < 4 * np.sqrt(var / num)
    assert abs(dw.var() - var) < 4 * var * np.sqrt(2 / (num - 1))
    pairs = {
        "neighbouring cells": (dw[:, :-1].ravel(), dw[:, 1:].ravel()),
        "species": (dw[..., 0].ravel(), dw[..., 1].ravel()),
        "trajectories": (dw[:-1].ravel(), dw[1:].ravel()),
    }
    for what, (x, y) in pairs.items():
        assert abs(np.corrcoef(x, y)[0, 1]) < 4 / np.sqrt(len(x)), what


def _neumann_laplacian(x):
    p = jnp.concatenate([x[:1], x, x[-1:]])
    return p[:-2] - 2 * p[1:-1] + p[2:]


def _strong_order(step_fn, params_fn, x0, shape, num_paths, fine_log, levels, seed):
    """Slope of log E|X_dt(T) - X_fine(T)| (mean over paths and cells, T = 1) vs log dt.

    Every level runs the same 2^fine_log-long scan (one compilation): a coarse step of
    r = 2^fine_log / 2^level fine steps fires at every r-th position with the sum of the r
    fine Brownian increments (the same path) and the other positions keep the state.
    ``step_fn(params, x, dw)`` is one step; ``params_fn(dt)`` builds its parameters."""
    num_fine = 2**fine_log
    rng = np.random.default_rng(seed)
    dw = rng.standard_normal((num_paths, num_fine, *shape), np.float32) / np.sqrt(num_fine)

    @jax.jit
    def run(params, dw, fire):
        def body(x, inputs):
            w, go = inputs
            return jnp.where(go, step_fn(params, x, w), x), None

        return jax.vmap(lambda w: jax.lax.scan(body, x0, (w, fire))[0])(dw)

    def level_run(steps):
        ratio = num_fine // steps
        blocks = dw.reshape(num_paths, steps, ratio, *shape)
        placed = np.zeros_like(blocks)
        placed[:, :, -1] = blocks.sum(2)
        fire = (np.arange(num_fine) % ratio) == ratio - 1
        return np.asarray(run(params_fn(1.0 / steps), placed.reshape(dw.shape), fire))

    reference = level_run(num_fine)
    errors = [np.mean(np.abs(level_run(2**lv) - reference)) for lv in levels]
    return np.polyfit(np.log(2.0 ** -np.asarray(levels)), np.log(errors), 1)[0]


def test_euler_maruyama_strong_order_half_with_multiplicative_noise():
    """dx = (0.2 lap x - 0.5 x) dt + x dW (8 cells, independent noise per cell): EM has strong
    order 1/2 (the Milstein term x (dW^2 - dt) / 2 is dropped). Slope of log error vs log dt
    over dt = 2^-3 ... 2^-8 against a 2^-11 reference on the same paths, 400 paths: measured
    0.58; the asymptotic 0.5 is approached from above (O(dt) drift errors at coarse dt, and
    the reference's own error makes the finest differences slightly smaller) and the Monte
    Carlo error is a few %. [0.35, 0.75] excludes order 1 (additive-noise behaviour, or a
    dropped noise term) and order 0 (increments not summed consistently)."""

    def step(dt, x, w):
        return euler_maruyama_step(
            lambda y: 0.2 * _neumann_laplacian(y) - 0.5 * y, lambda y: y, x, dt, w
        )

    x0 = 1.0 + 0.5 * jnp.cos(jnp.pi * (jnp.arange(8, dtype=jnp.float32) + 0.5) / 8)
    slope = _strong_order(step, jnp.float32, x0, (8,), 400, 11, range(3, 9), seed=2)
    assert 0.35 <= slope <= 0.75, slope


def test_predator_prey_strong_order_one_with_additive_noise():
    """The predator-prey noise is additive, so EM (= Milstein here) has strong order 1 for the
    full nonlinear system: slope over dt = 2^-3 ... 2^-7 against 2^-10 with sigma = 0.2,
    100 paths (measured 1.05). [0.8, 1.25] fails for order 1/2 and for noise that is scaled
    inconsistently between step sizes (no convergence at all)."""

    def step(system, x, w):
        return system.step_with_increment(x, w)

    def params(dt):
        return PredatorPrey(A, B, diffusion=0.5, sigma=0.2, dt=dt)

    x0 = reference_initial(16, 0.1, 0.5)
    slope = _strong_order(step, params, x0, (16, 2), 100, 10, range(3, 8), seed=3)
    assert 0.8 <= slope <= 1.25, slope


def test_parameters_can_be_vmapped():
    """A vmap over sigma: sigma = 0 gives the deterministic path (independent NumPy Euler,
    float32 round-off over 10 steps < 1e-6), sigma = 0.1 a different one (noise of size
    0.1 sqrt(0.1) = 0.03)."""
    x0 = reference_initial(50, 0.1, 0.5)

    def run(sigma):
        return PredatorPrey(sigma=sigma).simulate(x0, jr.key(5), 10, 10)[-1]

    out = np.asarray(jax.jit(jax.vmap(run))(jnp.array([0.0, 0.1])))
    x = np.asarray(x0, np.float64)
    for _ in range(10):
        x = x + 0.01 * reference_drift(x)
    np.testing.assert_allclose(out[0], x, atol=1e-6)
    assert np.abs(out[1] - x).max() > 1e-2


def simulate_ensemble(system, initial, key, num_steps, save_every=1, **kwargs):
    """Trajectories of the SPDE from host initial fields, one saved state every
    ``save_every`` time steps."""
    return trajectories(system, initial, key, num_steps, save_every=save_every, **kwargs)


def evolve_field_patch(system, fields, key, num_patches, num_steps=1):
    """Partial evolution of ONE field: K segments with ghost cells, ``num_steps`` steps."""
    scheme = PartialEvolution(Segments1D(num_patches), num_events=num_steps)
    return evolve_patch(system, fields, key, scheme)


def field_partial_pairs(system, snapshots, key, num_patches, num_steps=1, **kwargs):
    scheme = PartialEvolution(Segments1D(num_patches), Ghosts, num_events=num_steps)
    return evolve_patches(system, snapshots, key, scheme, progress=False, **kwargs)


def field_patch_with_ghosts(fields, index, num_patches):
    patch, ghosts = Segments1D(num_patches).patch_with_boundary(fields, index, Ghosts)
    return patch, ghosts.values


def field_relax(num_steps, window, stride):
    return LocalRelax(Segments1D(length=window, stride=stride), num_events=num_steps)


def upsample_fields(
    snapshots, num_cells, method="linear", *, relax=None, system=None, key=None, **kwargs
):
    cfg = HierarchicalUpsampling(num_cells, None, relax, upsample=Interpolation(method))
    return upsample_dataset(system, snapshots, key, cfg, progress=False, **kwargs)


def test_simulate_ensemble_is_batch_independent():
    """Trajectory b uses fold_in(key, b): batches of 2 give the vmapped system.simulate of the
    whole ensemble; float32 NumPy output of shape (B, S + 1, n, 2)."""
    system = PredatorPrey()
    initial = _snapshots(4, num_cells=40)
    key = jr.key(6)
    pieces = simulate_ensemble(system, np.asarray(initial), key, 30, 10, batch_size=2)
    assert pieces.shape == (4, 4, 40, 2) and pieces.dtype == np.float32
    whole = jax.jit(jax.vmap(lambda x, i: system.simulate(x, jr.fold_in(key, i), 30, 10)))(
        initial, jnp.arange(4)
    )
    np.testing.assert_array_equal(pieces, np.asarray(whole))
    assert np.abs(pieces[:, -1] - pieces[:, 0]).max() > 1e-2  # it did evolve


# ---------------------------------------------------------------------------------- partial
def reference_initial(num_cells, k, m):
    """u = m + k cos(10 pi x), v = 1 - m - k cos(10 pi x) at x = (i + 1/2) / n, in NumPy."""
    wave = np.asarray(k)[..., None] * np.cos(10 * np.pi * (np.arange(num_cells) + 0.5) / num_cells)
    m = np.asarray(m)[..., None]
    return np.stack([m + wave, 1 - m - wave], axis=-1).astype(np.float32)


def _snapshots(num, num_cells=200, seed=7):
    """Test data built with NumPy (no compilation): reference initial conditions with the
    training distribution of k and m, plus N(0, 0.02^2) per cell."""
    rng = np.random.default_rng(seed)
    k, m = rng.uniform(0.05, 0.15, num), rng.uniform(0.45, 0.55, num)
    x = reference_initial(num_cells, k, m)
    return x + rng.normal(0, 0.02, x.shape).astype(np.float32)


def test_initial_condition_is_the_reference_and_vmaps():
    ks, ms = np.array([0.05, 0.1, 0.15]), np.array([0.45, 0.5, 0.55])
    out = jax.jit(jax.vmap(lambda k, m: predator_prey_initial_condition(200, k, m)))(ks, ms)
    assert out.shape == (3, 200, 2) and out.dtype == jnp.float32
    np.testing.assert_allclose(out, reference_initial(200, ks, ms), atol=1e-6)


def test_ghost_cells_are_the_frozen_neighbours_or_the_edge():
    """Interior patches see the cells just outside them; physical ends replicate the patch's
    own edge cell. The index may be traced."""
    fields = jnp.stack([jnp.arange(20.0), 100 + jnp.arange(20.0)], axis=-1)
    cut = jax.jit(lambda i: field_patch_with_ghosts(fields, i, 4))
    for index in range(4):
        patch, ghosts = cut(index)
        lo, hi = 5 * index, 5 * index + 5
        np.testing.assert_array_equal(patch, fields[lo:hi])
        np.testing.assert_array_equal(ghosts[0], fields[max(lo - 1, 0)])
        np.testing.assert_array_equal(ghosts[1], fields[min(hi, 19)])


def test_k_equal_one_is_the_full_step():
    """K = 1: the patch is the field, both ghosts are Neumann, and the evolution is the full
    dynamics bit for bit under the documented key usage: key -> (key_index, key_run), step t
    with jr.split(key_run, num_steps)[t], as system.step / system.simulate."""
    system = PredatorPrey(diffusion=0.3)
    x = _snapshots(1)[0]
    key = jr.key(9)
    _, key_run = jr.split(key)

    @jax.jit
    def partial(x, k):
        return evolve_field_patch(system, x, k, 1), evolve_field_patch(system, x, k, 1, 4)

    @jax.jit
    def full(x, k):
        return system.step(x, jr.split(k, 1)[0]), system.simulate(x, k, 4, 4)[-1]

    (one, dt1, index1), (four, dt4, index4) = partial(x, key)
    chex.assert_trees_all_equal((one, four), full(x, key_run))
    assert int(index1) == int(index4) == 0
    np.testing.assert_allclose([dt1, dt4], [0.01, 0.04], rtol=1e-6)


def test_physical_ends_are_neumann_at_every_step_and_seams_are_frozen():
    """sigma = 0, a uniform field (lap = 0 exactly): the full system stays uniform and follows
    the ODE. In a patch evolved for 3 steps, a cell at least 3 cells away from a FROZEN ghost
    cannot know that the ghost did not move, so all such cells hold the same value, the
    uniform ODE solution (NumPy float64 Euler; float32 round-off < 1e-6); this includes the
    cells at a physical end, which is only true if the Neumann ghost follows the edge cell at
    every step. The cells next to a frozen ghost differ from it."""
    system, steps = PredatorPrey(diffusion=1.0, sigma=0.0), 3
    x = jnp.broadcast_to(jnp.array([0.7, 0.2]), (50, 2))
    run = jax.jit(jax.vmap(lambda k: evolve_field_patch(system, x, k, 5, steps)))
    patches, _, index = run(jr.split(jr.key(10), 32))
    assert set(np.asarray(index).tolist()) == set(range(5))
    uniform = np.array([0.7, 0.2])
    for _ in range(steps):
        uniform = uniform + 0.01 * reference_drift(uniform[None])[0]
    patches = np.asarray(patches)
    np.testing.assert_allclose(patches[:, 5], np.broadcast_to(uniform, (32, 2)), atol=1e-6)
    for patch, i in zip(patches, np.asarray(index), strict=True):
        lo = 0 if i == 0 else steps
        hi = 10 if i == 4 else 10 - steps
        np.testing.assert_array_equal(patch[lo:hi], np.broadcast_to(patches[0, 5], (hi - lo, 2)))
        if i > 0:
            assert np.all(patch[0] != patches[0, 5])
        if i < 4:
            assert np.all(patch[-1] != patches[0, 5])


def test_field_partial_pairs_touch_only_the_chosen_patch():
    """K = 5 patches of 40 cells (the reference), host driver in batches of 16: writing each
    evolved patch back changes only its cells (bit for bit elsewhere) and all of them (drift +
    noise); dt = num_steps dt; the index covers all K values; the result equals the vmapped
    function over the whole batch with fold_in keys (so it is independent of the batch size)."""
    system = PredatorPrey()
    snapshots = np.asarray(_snapshots(64))
    key = jr.key(11)
    out = field_partial_pairs(system, snapshots, key, 5, num_steps=2, batch_size=16)
    assert out["patch_after"].shape == (64, 40, 2) and out["patch_after"].dtype == np.float32
    assert out["patch_index"].dtype == np.int32 and out["dt"].dtype == np.float32
    np.testing.assert_allclose(out["dt"], 0.02, rtol=1e-6)
    assert set(out["patch_index"].tolist()) == set(range(5))
    for x, patch, i in zip(snapshots, out["patch_after"], out["patch_index"], strict=True):
        y = np.asarray(apply_patch(jnp.asarray(x), i, jnp.asarray(patch), Segments1D(5)))
        inside = np.zeros(200, bool)
        inside[i * 40 : (i + 1) * 40] = True
        np.testing.assert_array_equal(x[~inside], y[~inside])
        assert np.all(x[inside] != y[inside])
        np.testing.assert_array_equal(y[inside], patch)
    patch, _, index = jax.jit(
        jax.vmap(lambda x, i: evolve_field_patch(system, x, jr.fold_in(key, i), 5, 2))
    )(jnp.asarray(snapshots), jnp.arange(64))
    np.testing.assert_array_equal(out["patch_after"], np.asarray(patch))
    np.testing.assert_array_equal(out["patch_index"], np.asarray(index))


def test_partial_evolution_errors():
    system, x = PredatorPrey(), jnp.asarray(_snapshots(3))
    with pytest.raises(ValueError, match="does not divide the 200 cells"):
        evolve_field_patch(system, x[0], jr.key(0), 7)
    with pytest.raises(ValueError, match="does not divide"):
        field_patch_with_ghosts(x[0], 0, 3)
    with pytest.raises(ValueError, match="does not divide"):
        field_partial_pairs(system, x, jr.key(0), 3)
    bad = np.asarray(x).copy()
    bad[1, 17, 0] = np.nan
    with pytest.raises(ValueError, match="snapshots must be finite"):
        field_partial_pairs(system, bad, jr.key(0), 5)
    huge = np.full((2, 200, 2), 1e3, np.float32)
    with pytest.raises(SimulationBlowUpError, match="first: snapshot 0"):
        field_partial_pairs(system, huge, jr.key(0), 5, num_steps=20)


# ---------------------------------------------------------------------------------- upsampling
upsample = jax.jit(upsample_field, static_argnums=(1, 2))


def _grid(num):
    return (np.arange(num) + 0.5) / num


@pytest.mark.parametrize("method", ["linear", "cubic"])
def test_upsampling_reproduces_constants_and_linear_functions(method):
    """Constants stay constant (weights sum to 1; linear interpolation of equal values is exact,
    cubic within a few float32 ulps); linear functions are reproduced in the interior, where
    every stencil point is a real cell (2 source centres from each end), to float32 rounding."""
    for source, target in ((100, 200), (30, 75), (64, 40)):
        constant = jnp.broadcast_to(jnp.array([0.3, 1.7]), (source, 2))
        out = np.asarray(upsample(constant, target, method))
        assert out.shape == (target, 2) and out.dtype == np.float32
        if method == "linear":
            np.testing.assert_array_equal(out, np.broadcast_to(np.float32([0.3, 1.7]), out.shape))
        else:
            np.testing.assert_allclose(out, np.broadcast_to([0.3, 1.7], (target, 2)), rtol=1e-6)
        xs, xt = _grid(source), _grid(target)
        line = np.stack([2 * xs - 0.5, -xs + 1], -1).astype(np.float32)
        out = np.asarray(upsample(jnp.asarray(line), target, method))
        inside = (xt >= xs[1]) & (xt <= xs[-2])
        expected = np.stack([2 * xt - 0.5, -xt + 1], -1)
        np.testing.assert_allclose(out[inside], expected[inside], atol=2e-6)
        # Beyond the outermost centres: the end values (constant, Neumann-consistent).
        np.testing.assert_allclose(out[xt < xs[0]], np.broadcast_to(line[0], out[xt < xs[0]].shape))


def test_upsampling_preserves_the_mean():
    """Linear interpolation by an integer factor r preserves the mean exactly (a unit hat
    sampled at spacing 1/r sums to r for any offset, so every source cell gets weight r),
    up to float32 rounding (1e-6). For the ratio 4/3 the mean error of a smooth field is
    O(h^2) for both methods: halving h divides it by ~4 (measured 4.0-4.8; > 3.5 asserted, a
    half-cell grid offset would give O(h), a ratio of 2)."""
    x = jnp.asarray(_snapshots(1, 100, seed=12)[0])
    for factor in (2, 3):
        up = upsample(x, 100 * factor, "linear")
        np.testing.assert_allclose(np.asarray(up).mean(0), np.asarray(x).mean(0), atol=1e-6)
    for method in ("linear", "cubic"):
        errors = []
        for source in (24, 48, 96):
            xs = _grid(source)
            f = np.stack([np.exp(xs) + np.sin(5 * xs), np.cos(3 * xs)], -1).astype(np.float32)
            out = np.asarray(upsample(jnp.asarray(f), source * 4 // 3, method), np.float64)
            errors.append(np.abs(out.mean(0) - f.astype(np.float64).mean(0)).max())
        assert errors[0] / errors[1] > 3.5 and errors[1] / errors[2] > 3.5, (method, errors)


def test_cubic_is_more_accurate_than_linear_for_smooth_fields():
    """Interior interpolation error of a smooth field: O(h^2) for linear, O(h^3) for
    Catmull-Rom, so at h = 1/50 cubic is at least 10x more accurate (measured 73x)."""
    xs, xt = _grid(50), _grid(125)
    f = np.stack([np.sin(6 * xs), np.exp(-xs)], -1).astype(np.float32)
    exact = np.stack([np.sin(6 * xt), np.exp(-xt)], -1)
    inside = (xt >= xs[1]) & (xt <= xs[-2])
    err = {
        m: np.abs(np.asarray(upsample(jnp.asarray(f), 125, m)) - exact)[inside].max()
        for m in ("linear", "cubic")
    }
    assert err["cubic"] * 10 < err["linear"], err


def test_upsample_fields_driver_and_local_relax():
    """Batched driver = per-snapshot function; LocalRelax with one window spanning the field
    is num_steps full steps (window key jr.split(fold_in(key, i), 1)[0]); relaxation heals a
    seam (pure diffusion: a jump of 0.5 shrinks by > 4x; measured 0.06)."""
    system = PredatorPrey(diffusion=1.0)
    small = np.asarray(_snapshots(6, num_cells=100))
    plain = upsample_fields(small, 200, batch_size=3)
    np.testing.assert_array_equal(plain[2], np.asarray(upsample(jnp.asarray(small[2]), 200)))

    key, cfg = jr.key(13), field_relax(num_steps=3, window=200, stride=10)
    relaxed = upsample_fields(small, 200, "cubic", relax=cfg, system=system, key=key)
    x2 = upsample(jnp.asarray(small[2]), 200, "cubic")
    k2 = jr.split(jr.fold_in(key, 2), 1)[0]
    full = jax.jit(lambda x, k: system.simulate(x, k, 3, 3)[-1])(x2, k2)
    # Different XLA programs (vmapped window scan vs plain scan) may round differently by an
    # ulp (6e-8 here); a wrong key or boundary gives differences ~ sigma sqrt(dt) = 2e-3.
    np.testing.assert_allclose(relaxed[2], np.asarray(full), atol=1e-6)

    # u + v = 1 on both sides and a = 0: no reaction at all (u + v stays 1 under equal
    # diffusion), so relaxation is pure diffusion: 20 steps of dt = 0.2 per visit spread the
    # jump over ~6 cells.
    seam = jnp.concatenate(
        [jnp.tile(jnp.array([0.3, 0.7]), (100, 1)), jnp.tile(jnp.array([0.8, 0.2]), (100, 1))]
    )
    diffusive = PredatorPrey(a=0.0, diffusion=1.0, sigma=0.0, dt=0.2)
    smooth = jax.jit(lambda x, k: local_relax(diffusive, x, k, field_relax(20, 40, 20)))(
        seam, jr.key(14)
    )
    assert np.abs(np.diff(np.asarray(smooth), axis=0)).max() < 0.5 / 4


def test_upsampling_errors():
    small = np.array(_snapshots(2, num_cells=100))
    # Under pytest the jaxtyping annotations are checked at run time (TypeCheckError, a
    # TypeError) before the library's own ValueError; both name the parameter.
    with pytest.raises((ValueError, TypeError), match="method"):
        upsample_fields(small, 200, "quadratic")
    with pytest.raises(ValueError, match="needs the `system`"):
        upsample_fields(small, 200, relax=field_relax(1, 40, 20))
    with pytest.raises(ValueError, match="stride 30 must divide"):
        upsample_fields(
            small, 200, relax=field_relax(1, 40, 30), system=PredatorPrey(), key=jr.key(0)
        )
    with pytest.raises(ValueError, match="exceeds"):
        field_relax(1, 300, 20).check(200)
    small[0, 3, 1] = np.inf
    with pytest.raises(ValueError, match="finite"):
        upsample_fields(small, 200)


# ---------------------------------------------------------------------------------- errors
@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"dt": -0.01}, "dt"),
        ({"dt": 0.0}, "dt"),
        ({"dt": float("inf")}, "dt"),
        ({"sigma": -0.1}, "sigma"),
        ({"diffusion": -1.0}, "diffusion"),
        ({"a": float("nan")}, "a must"),
        ({"b": float("inf")}, "b must"),
        ({"scaling": "continuum"}, "scaling"),
        ({"method": "rk4"}, "method"),
    ],
)
def test_bad_parameters_are_rejected(kwargs, name):
    # A bad Literal is caught by the runtime jaxtyping check (a TypeError) under pytest.
    with pytest.raises((ValueError, TypeError), match=name):
        PredatorPrey(**kwargs)


def test_bad_inputs_are_rejected_before_simulating():
    system = PredatorPrey()
    x = np.asarray(_snapshots(3, num_cells=20))
    bad = x.copy()
    bad[1, 4, 1] = np.nan
    with pytest.raises(ValueError, match=r"initial must be finite.*index \(1, 4, 1\)"):
        simulate_ensemble(system, bad, jr.key(0), 10)
    # Wrong shapes: jaxtyping's TypeError under pytest, our ValueError otherwise.
    with pytest.raises((ValueError, TypeError), match=r"shape \(B, n, 2\)|B n 2"):
        simulate_ensemble(system, x[0], jr.key(0), 10)
    with pytest.raises(ValueError, match="multiple of save_every"):
        simulate_ensemble(system, x, jr.key(0), 10, 3)
    with pytest.raises((ValueError, TypeError), match=r"use jax\.vmap for batches|n s"):
        system.simulate(x, jr.key(0), 10)
    with pytest.raises(ValueError, match="stability limit"):
        PredatorPrey(dt=0.6).simulate(x[0], jr.key(0), 10)
    with pytest.raises(ValueError, match="stability limit"):
        simulate_ensemble(PredatorPrey(scaling="physical"), x, jr.key(0), 10)


def test_blow_up_is_reported_with_trajectory_and_step():
    """Huge uniform densities (u = v = 1e3, sigma = 0) make u' = u (1 - u - v) overshoot
    ever further until float32 overflow. The error names the first bad trajectory and its
    first non-finite saved step, recomputed with NumPy float32 Euler on the uniform state (the
    magnitude squares every step, so round-off cannot move the overflow by a step)."""
    system = PredatorPrey(sigma=0.0)
    x = np.array(_snapshots(4, num_cells=20))
    x[3] = 1e3
    u = v = np.float32(1e3)
    dt, step = np.float32(0.01), 0
    with np.errstate(over="ignore", invalid="ignore"):
        while np.isfinite(u) and np.isfinite(v):
            u, v = u + dt * u * (1 - u - v), v + dt * np.float32(A) * v * (u - np.float32(B))
            step += 1
    first = -(-step // 2)  # saved every 2 steps: the first saved state at or after `step`
    assert 0 < first < 20
    message = f"trajectory 3 blew up: its first non-finite saved step is {first} "
    with pytest.raises(SimulationBlowUpError, match=message) as info:
        simulate_ensemble(system, x, jr.key(15), 40, 2, batch_size=2)
    assert f"t = {2 * first * 0.01:g}" in str(info.value)
