"""Learning SDEs from increments: recovery of known dynamics, Theorem 1, the Curie-Weiss
oracle, and the training loop's machinery (checkpoints, resume, NaN, plateau, early stop).

Statistical tolerances come from the standard error (SE) of the maximum-likelihood estimate
on the data at hand; fixed seeds make every run identical.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math

import chex
import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest
from jaxtyping import Array, Float

from jmacro.models import (
    ConstantDiagonalDiffusion,
    ConstantDiffusion,
    LatentNormaliser,
    LatentSDE,
    build_model,
    make_field_autoencoder,
    make_latent_sde,
    model_hyperparams,
)
from jmacro.systems import mean_field_diffusion_sq, mean_field_drift
from jmacro.training import (
    IncrementPairs,
    NonFiniteLossError,
    TrainConfig,
    TrainingState,
    encode_partial_evolution_pairs,
    fit,
    fit_normaliser,
    increment_loss_fn,
    init_opt_state,
    load_checkpoint,
    load_model,
    normalise_pairs,
    save_checkpoint,
)

# "rbg" keys: threefry kernels take seconds to compile per shape on a 2-core CPU; the
# statistics tested here do not depend on the generator.
rbg_key = functools.partial(jr.key, impl="rbg")
QUIET = dict(show_progress=False)


def linear_sde(d: int, diffusion, normaliser: LatentNormaliser) -> LatentSDE:
    """du = A u dt + Sigma dW with a learnable A (no bias: the true drifts are linear)."""
    drift = eqx.nn.Linear(d, d, use_bias=False, key=rbg_key(0))
    return LatentSDE(drift, diffusion, normaliser)


def physical_linear_drift(sde: LatentSDE) -> np.ndarray:
    """The matrix A of a linear physical drift mu(z) = A z (columns = images of e_i)."""
    d = sde.latent_dim
    return np.asarray(jax.vmap(sde.physical_drift)(jnp.eye(d))).T


# ------------------------------------------------------------ 2D Ornstein-Uhlenbeck recovery
OU_DRIFT = np.array([[-1.0, 0.5], [-0.5, -1.0]])
OU_SIGMA = np.array([[0.5, 0.0], [0.3, 0.4]])  # non-diagonal: Sigma Sigma^T has 0.15 off-diag
OU_COV = OU_SIGMA @ OU_SIGMA.T


def ou_pairs(seed: int, n: int) -> IncrementPairs:
    """Exact Euler-Maruyama pairs z1 = z0 + A z0 dt + Sigma sqrt(dt) xi with random dt."""
    rng = np.random.default_rng(seed)
    z0 = rng.normal(size=(n, 2))
    dt = rng.uniform(0.02, 0.08, n)
    noise = rng.normal(size=(n, 2)) @ OU_SIGMA.T * np.sqrt(dt)[:, None]
    z1 = z0 + z0 @ OU_DRIFT.T * dt[:, None] + noise
    return IncrementPairs(*(a.astype(np.float32) for a in (z0, z1, dt)))


def ou_mle_and_standard_errors(pairs: IncrementPairs):
    """Closed-form MLE of (A, C = Sigma Sigma^T) for linear drift and constant C, and the
    SE of each entry from the Fisher information at the true parameters:
    Cov(A_i.) = C_ii (sum z z^T dt)^-1,  Var(C_ij) = (C_ii C_jj + C_ij^2) / n."""
    z0, z1, dt = (np.asarray(a, np.float64) for a in (pairs.z0, pairs.z1, pairs.dt))
    gram = (z0 * dt[:, None]).T @ z0
    drift = np.linalg.solve(gram, z0.T @ (z1 - z0)).T
    scaled = (z1 - z0 - z0 @ drift.T * dt[:, None]) / np.sqrt(dt)[:, None]
    cov = scaled.T @ scaled / len(dt)
    se_drift = np.sqrt(np.outer(np.diag(OU_COV), np.diag(np.linalg.inv(gram))))
    se_cov = np.sqrt((np.outer(np.diag(OU_COV), np.diag(OU_COV)) + OU_COV**2) / len(dt))
    return drift, cov, se_drift, se_cov


def test_recovers_2d_ou_drift_and_diffusion():
    pairs = ou_pairs(0, 16384)
    # Zero offset keeps a linear drift linear in normalised coordinates.
    normaliser = LatentNormaliser(np.zeros(2), pairs.z0.std(axis=0), float(pairs.dt.mean()))
    sde = linear_sde(2, ConstantDiffusion(jnp.eye(2)), normaliser)
    # eps = 1e-6: the default 1e-4 would be ~0.5% of C dt in these units, a visible bias.
    loss = increment_loss_fn(covariance_scale=1.0, jitter=1e-6)
    config = TrainConfig(learning_rate=1e-2, batch_size=4096, num_epochs=60, **QUIET)
    data = normalise_pairs(pairs, normaliser)
    result = fit(sde, loss, data, data, rbg_key(1), config)

    drift_fit = physical_linear_drift(result.model)
    cov_fit = np.asarray(result.model.physical_covariance_rate(jnp.zeros(2)))
    drift_mle, cov_mle, se_drift, se_cov = ou_mle_and_standard_errors(pairs)
    # Statistical error: the truth lies within 4 SE of the estimate (|t| < 4 has probability
    # 1 - 6e-5 per entry).
    assert np.all(np.abs(drift_fit - OU_DRIFT) < 4 * se_drift), (drift_fit, se_drift)
    assert np.all(np.abs(cov_fit - OU_COV) < 4 * se_cov), (cov_fit, se_cov)
    # Optimisation error: stochastic AMSGrad lands within 1 SE of the exact MLE, i.e. the
    # optimiser's error is below the data's.
    assert np.all(np.abs(drift_fit - drift_mle) < se_drift), (drift_fit, drift_mle)
    assert np.all(np.abs(cov_fit - cov_mle) < se_cov), (cov_fit, cov_mle)


@pytest.mark.slow
def test_recovers_2d_ou_with_the_reference_networks():
    # MLP drift d-64-64-64-d and a full state-dependent diffusion MLP d-64-64-64-d^2 must
    # learn the linear drift and the constant covariance where the data are (|z| <= 1).
    pairs, val = ou_pairs(0, 65536), ou_pairs(1, 8192)
    normaliser = fit_normaliser(pairs.z0, val.dt)
    sde = make_latent_sde(rbg_key(0), 2, "full").with_normaliser(normaliser)
    config = TrainConfig(learning_rate=1e-3, batch_size=1024, num_epochs=40, **QUIET)
    # Default eps = 1e-4, ~0.8% of C dt in normalised units (a 0.002 bias on C); it also keeps
    # the state-dependent covariance away from singular, which with eps = 1e-6 made the
    # full-network fit diverge.
    loss = increment_loss_fn(covariance_scale=1.0)
    data, val_data = normalise_pairs(pairs, normaliser), normalise_pairs(val, normaliser)
    model = fit(sde, loss, data, val_data, rbg_key(1), config).model

    grid = np.stack(np.meshgrid(np.linspace(-1, 1, 5), np.linspace(-1, 1, 5)), -1).reshape(-1, 2)
    grid = jnp.asarray(grid[np.linalg.norm(grid, axis=1) <= 1.0], jnp.float32)
    drift_error = np.asarray(jax.vmap(model.physical_drift)(grid)) - np.asarray(grid) @ OU_DRIFT.T
    cov_error = np.asarray(jax.vmap(model.physical_covariance_rate)(grid)) - OU_COV
    # A network estimates the drift from the data near each point. With a resolution of ~0.3
    # (the scale over which this ReLU MLP varies), a point at |z| = 1 sees ~2.7% of the
    # pairs, ~1800 pairs x E[dt] 0.05 = 88 time units: local SE sqrt(C_ii / 88) ~ 0.05.
    # Allow 4 local SE at the worst point and 2 in root mean square over the points.
    assert np.abs(drift_error).max() < 0.2 and np.sqrt(np.mean(drift_error**2)) < 0.1
    # Covariance: local relative SE sqrt(2 / 1800) ~ 3.3%, i.e. ~0.01 on the 0.25 diagonal;
    # allow 5 local SE at the worst point, 2 in root mean square.
    assert np.abs(cov_error).max() < 0.05 and np.sqrt(np.mean(cov_error**2)) < 0.02


# ------------------------------------------------------------------------------ Theorem 1
def test_theorem_1_lambda_k_recovers_the_full_diffusion():
    """K independent OU patches dX_k = -theta X_k dt + s dW_k; the macro variable is their
    mean, whose full-system law is dz = -theta z dt + (s / sqrt K) dW. Partial evolution moves
    one patch; the "ours" increment is that patch's increment. Fitted with lambda = K the
    model recovers the full diffusion s^2 / K; with lambda = 1 it overestimates it by K."""
    num_patches, theta, s, n = 8, 1.0, 1.0, 16384
    rng = np.random.default_rng(0)
    # Snapshots far from equilibrium (common offset c) plus stationary patch fluctuations.
    offset = rng.uniform(-2, 2, (n, 1))
    patches = offset + math.sqrt(s**2 / (2 * theta)) * rng.normal(size=(n, num_patches))
    index = rng.integers(0, num_patches, n)
    dt = rng.uniform(0.01, 0.03, n)
    moved = patches[np.arange(n), index]
    evolved = moved - theta * moved * dt + s * np.sqrt(dt) * rng.normal(size=n)

    # Patches as a 1D field of K cells, one species, 1-cell patches, no learned closure.
    autoencoder = make_field_autoencoder(
        rbg_key(0), num_cells=num_patches, patch_cells=1, num_species=1, closure_per_species=0
    )
    pairs = encode_partial_evolution_pairs(
        autoencoder,
        patches[:, :, None].astype(np.float32),
        index,
        evolved[:, None, None].astype(np.float32),
        dt.astype(np.float32),
        method="ours",
    )
    chex.assert_trees_all_close(pairs.z0[:, 0], patches.mean(axis=1), atol=1e-5)

    normaliser = LatentNormaliser(np.zeros(1), pairs.z0.std(axis=0), float(dt.mean()))
    data = normalise_pairs(pairs, normaliser)
    sde = linear_sde(1, ConstantDiagonalDiffusion(jnp.zeros(1)), normaliser)
    config = TrainConfig(learning_rate=2e-2, batch_size=4096, num_epochs=60, **QUIET)
    fitted = {}
    for covariance_scale in (num_patches, 1):
        loss = increment_loss_fn(covariance_scale=covariance_scale, jitter=1e-7)
        model = fit(sde, loss, data, data, rbg_key(1), config).model
        variance = float(model.physical_covariance_rate(jnp.zeros(1))[0, 0])
        fitted[covariance_scale] = (physical_linear_drift(model)[0, 0], variance)

    full_variance = s**2 / num_patches
    # Relative SE of a variance MLE: sqrt(2 / n) = 1.1%; the spread of the patches' own drifts
    # adds a known bias of theta dt / 2 ~ 1%. Allow 4 SE + that bias = 6%.
    assert abs(fitted[num_patches][1] / full_variance - 1) < 0.06, fitted
    assert abs(fitted[1][1] / full_variance - num_patches) < 0.06 * num_patches, fitted
    # lambda only rescales the fitted covariance: the ratio is K up to optimisation error.
    assert abs(fitted[1][1] / fitted[num_patches][1] / num_patches - 1) < 0.02, fitted
    # Both recover the full drift -theta: SE of the slope = s / sqrt(sum z^2 dt).
    se_drift = s / math.sqrt(np.sum(pairs.z0[:, 0] ** 2 * dt))
    for drift, _ in fitted.values():
        assert abs(drift + theta) < 4 * se_drift, (fitted, se_drift)


# ---------------------------------------------------------------------- Curie-Weiss oracle
CW_TEMPERATURE, CW_FIELD, CW_SIDE = 1.1, 0.1, 16
CW_SPINS = CW_SIDE**2


def curie_weiss_magnetisation_pairs(seed: int, n: int) -> IncrementPairs:
    """Exact continuous-time heat-bath pairs of the Curie-Weiss magnetisation, simulated as
    the lumped birth-death chain of M = sum s_i (exact for this mean-field model):
    M -> M + 2 at rate N_- w(-1), M -> M - 2 at rate N_+ w(+1), with the simulator's rates
    w(s) = 1 / (1 + exp(2 beta s (J (M - s) / N + h))). Pairs over fixed durations
    dt ~ U(0.03, 0.07) from m0 ~ U(-0.8, 0.8)."""
    rng = np.random.default_rng(seed)
    beta, n_spins = 1 / CW_TEMPERATURE, CW_SPINS
    total = n_spins - 2 * rng.binomial(n_spins, (1 - rng.uniform(-0.8, 0.8, n)) / 2)
    start = total.copy()
    duration = rng.uniform(0.03, 0.07, n)
    elapsed = np.zeros(n)
    while True:
        rate_up = (
            (n_spins - total) / 2 / (1 + np.exp(-2 * beta * ((total + 1) / n_spins + CW_FIELD)))
        )
        rate_down = (
            (n_spins + total) / 2 / (1 + np.exp(2 * beta * ((total - 1) / n_spins + CW_FIELD)))
        )
        elapsed = elapsed + rng.exponential(1 / (rate_up + rate_down))
        live = elapsed < duration
        if not live.any():
            break
        step = np.where(rng.random(n) * (rate_up + rate_down) < rate_up, 2, -2)
        total = total + live * step
    return IncrementPairs(
        (start / n_spins)[:, None].astype(np.float32),
        (total / n_spins)[:, None].astype(np.float32),
        duration.astype(np.float32),
    )


def check_against_mean_field(model: LatentSDE, drift_tolerance, relative_diffusion_tolerance):
    m = jnp.linspace(-0.7, 0.7, 15)
    drift = np.asarray(jax.vmap(model.physical_drift)(m[:, None]))[:, 0]
    diffusion_sq = np.asarray(jax.vmap(model.physical_covariance_rate)(m[:, None]))[:, 0, 0]
    oracle_drift = np.asarray(mean_field_drift(m, CW_TEMPERATURE, CW_FIELD))
    oracle_sq = np.asarray(mean_field_diffusion_sq(m, CW_TEMPERATURE, CW_FIELD, CW_SPINS))
    np.testing.assert_allclose(drift, oracle_drift, atol=drift_tolerance)
    np.testing.assert_allclose(diffusion_sq, oracle_sq, rtol=relative_diffusion_tolerance)


def fit_curie_weiss(pairs: IncrementPairs, val: IncrementPairs, num_epochs: int) -> LatentSDE:
    normaliser = fit_normaliser(pairs.z0, val.dt)
    # d = 1, MLP drift and a state-dependent ("diagonal") diffusion: the oracle's diffusion
    # varies by 2x over the m range, which a constant diffusion could not match.
    sde = make_latent_sde(rbg_key(0), 1, "diagonal", width_size=32, depth=2)
    config = TrainConfig(learning_rate=1e-2, batch_size=2048, num_epochs=num_epochs, **QUIET)
    # eps = 1e-6: C dt is ~1e-3 in normalised units here, so the default 1e-4 would bias
    # the diffusion down by ~8%.
    loss = increment_loss_fn(covariance_scale=1.0, jitter=1e-6)
    data, val_data = normalise_pairs(pairs, normaliser), normalise_pairs(val, normaliser)
    return fit(sde.with_normaliser(normaliser), loss, data, val_data, rbg_key(1), config).model


def test_curie_weiss_oracle_from_the_exact_magnetisation_chain():
    # 16384 pairs, 10 bins of m: per-bin drift SE sqrt(D^2 / (1638 E[dt])) ~ 0.008 and
    # diffusion^2 relative SE sqrt(2 / 1638) ~ 3.5%; finite-N (1/N) and Euler (b b' dt / 2)
    # biases ~ 0.004. Tolerances: drift 0.035, diffusion^2 14% (4 SE + bias).
    model = fit_curie_weiss(
        curie_weiss_magnetisation_pairs(0, 16384), curie_weiss_magnetisation_pairs(1, 4096), 25
    )
    check_against_mean_field(model, 0.035, 0.14)


@pytest.mark.slow
def test_curie_weiss_oracle_from_the_simulator():
    # Pairs from the CurieWeiss simulator itself (full 16x16 system, fixed durations).
    # Fixed durations, not a fixed number of flips: over n flips the increment variance is
    # fixed while dt is Gamma-distributed, and the per-sample-dt Gaussian likelihood then
    # overestimates the diffusion by n / (n - 1) (14% for n = 8).
    from jmacro.systems import CurieWeiss

    system = CurieWeiss(CW_TEMPERATURE, CW_FIELD)

    def simulate(seed, n):
        # Default (threefry) keys: advance_time draws Poisson numbers, threefry-only in JAX.
        key_m, key_init, key_run, key_dt = jr.split(jr.key(seed), 4)
        m0 = jr.uniform(key_m, (n,), minval=-0.8, maxval=0.8)
        duration = jr.uniform(key_dt, (n,), minval=0.03, maxval=0.07)
        init = jax.vmap(lambda k, m: system.init_state(k, (CW_SIDE, CW_SIDE), m))
        spins = init(jr.split(key_init, n), m0)
        run = jax.jit(jax.vmap(system.advance_time))
        later = run(spins, jr.split(key_run, n), duration)
        magnetisation = lambda s: jnp.mean(s.astype(jnp.float32), axis=(1, 2))[:, None]  # noqa: E731
        return IncrementPairs(
            *(np.asarray(a) for a in (magnetisation(spins), magnetisation(later), duration))
        )

    # 40960 pairs: per-bin drift SE ~ 0.005, diffusion^2 relative SE ~ 2%; with the ~0.004
    # biases, tolerances drift 0.025 and diffusion^2 8% (4 SE + bias).
    model = fit_curie_weiss(simulate(0, 40960), simulate(1, 4096), 30)
    check_against_mean_field(model, 0.025, 0.08)


# ------------------------------------------------------------------- the loop's machinery
class Scalar(eqx.Module):
    """A one-parameter model for testing the loop itself."""

    w: Float[Array, ""]


def nan_after_five_steps(model: Scalar, batch, key=None):
    # d loss / dw = -1, so each AMSGrad step raises w by exactly lr (|m_hat / sqrt(v_hat)| = 1):
    # w = k lr at step k (0-based). The loss turns NaN once w > 4.5 lr, i.e. at the 6th step.
    del key
    return jnp.where(model.w > 4.5e-3, jnp.nan, -model.w + 0.0 * jnp.sum(batch))


def test_nan_loss_raises_naming_epoch_and_batch():
    data = np.zeros((16, 1), np.float32)  # 4 batches of 4 per epoch
    config = TrainConfig(learning_rate=1e-3, batch_size=4, num_epochs=3, **QUIET)
    with pytest.raises(NonFiniteLossError, match="epoch 2, batch 2 of 4") as error:
        fit(Scalar(jnp.array(0.0)), nan_after_five_steps, data, data[:4], rbg_key(0), config)
    assert (error.value.epoch, error.value.batch) == (2, 2)


def constant_loss(model: Scalar, batch, key=None):
    return 1.0 + 0.0 * model.w + 0.0 * jnp.sum(batch)


def test_plateau_halves_the_lr_like_pytorch_and_early_stopping_stops():
    data = np.zeros((8, 1), np.float32)
    config = TrainConfig(
        learning_rate=1e-3,
        batch_size=8,
        num_epochs=12,
        plateau_patience=2,
        early_stopping_patience=9,
        min_learning_rate=4e-4,
        **QUIET,
    )
    result = fit(Scalar(jnp.array(0.0)), constant_loss, data, data, rbg_key(0), config)
    rates = [record.learning_rate for record in result.history]
    # Epoch 1 sets the best; PyTorch's ReduceLROnPlateau(patience=2) cuts after the 3rd bad
    # epoch (epoch 4), then again 3 bad epochs later (epoch 7), floored at min_lr.
    np.testing.assert_allclose(rates, [1e-3] * 3 + [5e-4] * 3 + [4e-4] * 4, rtol=1e-6)
    # No improvement after epoch 1: early stopping after 9 more epochs.
    assert result.stopped_early and len(result.history) == 10 and result.best_epoch == 1


def test_normaliser_is_not_trained():
    normaliser = LatentNormaliser(np.array([0.3]), np.array([2.0]), 0.5)
    sde = linear_sde(1, ConstantDiagonalDiffusion(jnp.zeros(1)), normaliser)
    pairs = ou_pairs(0, 512)
    data = IncrementPairs(pairs.z0[:, :1], pairs.z1[:, :1], pairs.dt)
    config = TrainConfig(
        learning_rate=1e-1, batch_size=256, num_epochs=3, weight_decay=0.1, **QUIET
    )
    model = fit(sde, increment_loss_fn(), data, data, rbg_key(0), config).last_model
    chex.assert_trees_all_equal(model.normaliser, normaliser)
    assert not np.allclose(model.drift_net.weight, sde.drift_net.weight)


# --------------------------------------------------------------------------- checkpoints
HYPERPARAMS = model_hyperparams("latent_sde", latent_dim=2, diffusion_mode="full", width_size=8)


@pytest.fixture(scope="module")
def small_sde() -> LatentSDE:
    normaliser = LatentNormaliser(np.array([0.1, -0.2]), np.array([1.5, 0.5]), 0.25)
    return build_model(HYPERPARAMS, rbg_key(5)).with_normaliser(normaliser)


def test_checkpoint_round_trip_is_exact(tmp_path, small_sde):
    config = TrainConfig()
    state = TrainingState(small_sde, init_opt_state(small_sde, config), 7, small_sde, 0.125, 2)
    save_checkpoint(tmp_path, state, [{"epoch": 1}])
    blank = build_model(HYPERPARAMS, rbg_key(99))
    like = TrainingState(blank, init_opt_state(blank, config), 0, blank, math.inf, 0)
    loaded = load_checkpoint(tmp_path, like)
    chex.assert_trees_all_equal(loaded, state)
    assert type(loaded.epoch) is int and loaded.epoch == 7
    with pytest.raises(ValueError, match="does not fit this model"):
        other = build_model({**HYPERPARAMS, "width_size": 4})
        load_checkpoint(tmp_path, like._replace(model=other, best_model=other))


def test_fit_resumes_a_killed_run_exactly(tmp_path, small_sde):
    pairs = ou_pairs(3, 1024)
    data = normalise_pairs(pairs, small_sde.normaliser)
    config = TrainConfig(learning_rate=3e-3, batch_size=256, num_epochs=5, **QUIET)
    loss = increment_loss_fn(covariance_scale=2.0)
    uninterrupted = fit(small_sde, loss, data, data, rbg_key(7), config)

    class Killed(Exception):
        pass

    def kill_after_epoch_3(record, model):
        if record.epoch == 3:
            raise Killed

    run_dir = tmp_path / "run"
    with pytest.raises(Killed):
        fit(
            small_sde,
            loss,
            data,
            data,
            rbg_key(7),
            config,
            checkpoint_dir=run_dir,
            hyperparams=HYPERPARAMS,
            callback=kill_after_epoch_3,
        )
    stored = json.loads((run_dir / "hyperparams.json").read_text())
    assert stored["model"] == HYPERPARAMS and stored["training"]["num_epochs"] == 5

    epochs_run = []
    resumed = fit(
        small_sde,
        loss,
        data,
        data,
        rbg_key(7),
        config,
        checkpoint_dir=run_dir,
        hyperparams=HYPERPARAMS,
        callback=lambda r, m: epochs_run.append(r.epoch),
    )
    assert epochs_run == [4, 5]  # continued after the last checkpoint, not from scratch
    assert [r.epoch for r in resumed.history] == [1, 2, 3, 4, 5]
    # Same shuffles and steps as the uninterrupted run: identical models and losses.
    arrays = functools.partial(eqx.filter, filter_spec=eqx.is_array)
    chex.assert_trees_all_close(
        arrays(resumed.last_model), arrays(uninterrupted.last_model), rtol=1e-6
    )
    np.testing.assert_allclose(
        [r.val_loss for r in resumed.history],
        [r.val_loss for r in uninterrupted.history],
        rtol=1e-6,
    )
    # The finished run also leaves its best model, loadable from the JSON alone.
    chex.assert_trees_all_equal(load_model(run_dir), resumed.model)
    with pytest.raises(ValueError, match="model hyperparameters"):
        fit(
            small_sde,
            loss,
            data,
            data,
            rbg_key(7),
            config,
            checkpoint_dir=run_dir,
            hyperparams={**HYPERPARAMS, "width_size": 16},
        )


@pytest.mark.parametrize("num_pairs", [1024, 1000])  # 4 full batches; 3 + a smaller last one
def test_device_epochs_train_like_the_host_loop(small_sde, num_pairs):
    """Same batches, keys and updates: the scanned epochs reach the host loop's model and
    losses up to float32 reassociation (1e-5), including the smaller last batch."""
    data = normalise_pairs(ou_pairs(4, num_pairs), small_sde.normaliser)
    config = TrainConfig(learning_rate=3e-3, batch_size=256, num_epochs=3, **QUIET)
    loss = increment_loss_fn(covariance_scale=2.0)
    host = fit(small_sde, loss, data, data, rbg_key(8), config)
    device = fit(
        small_sde, loss, data, data, rbg_key(8), dataclasses.replace(config, device_epochs=True)
    )
    chex.assert_trees_all_close(
        eqx.filter(device.last_model, eqx.is_array),
        eqx.filter(host.last_model, eqx.is_array),
        rtol=1e-5,
        atol=1e-6,
    )
    for a, b in zip(device.history, host.history, strict=True):
        assert a.train_loss == pytest.approx(b.train_loss, rel=1e-5)
        assert a.val_loss == pytest.approx(b.val_loss, rel=1e-5)
    moved = eqx.filter(host.last_model, eqx.is_array).drift_net
    assert not np.allclose(moved.layers[0].weight, small_sde.drift_net.layers[0].weight)
