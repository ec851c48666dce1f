"""The condition vector c in the learning stack: dz = mu(z, c) dt + Sigma(z, c) dW.

A conditioned Ornstein-Uhlenbeck family with a scalar condition c,

    dz = -theta(c) (z - m(c)) dt + sigma(c) dW,   m = c, theta = 1 + c, sigma = 0.3 + 0.2 c,

simulated exactly (Gaussian transition), pairs of all conditions pooled, is learned by one
conditioned ``LatentSDE``; rollouts with one condition per run reproduce each condition's
moments; a missing, superfluous or wrong-length condition fails before any compute; and
``condition_dim = 0`` reproduces today's unconditioned numbers bit for bit.

Statistical tolerances come from standard errors (SE) of the estimates on the data at hand;
fixed seeds make every run identical.
"""

from __future__ import annotations

import functools
import io
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
    AbstractDiffusion,
    LatentNormaliser,
    LatentSDE,
    build_model,
    make_latent_sde,
    model_hyperparams,
)
from jmacro.rollout import rollout
from jmacro.training import (
    IncrementPairs,
    TrainConfig,
    fit,
    fit_normaliser,
    increment_loss,
    increment_loss_fn,
    load_model,
    normalise_pairs,
    save_model,
)

# "rbg" keys: threefry kernels take seconds to compile per shape on a 2-core CPU; the
# statistics tested here do not depend on the generator.
rbg_key = functools.partial(jr.key, impl="rbg")
QUIET = dict(show_progress=False)

TRAIN_CONDITIONS = (0.0, 0.5, 1.0)
HELD_OUT_CONDITION = 0.25


def ou_parameters(c):
    """(m, theta, sigma) of the conditioned OU process at condition c."""
    return c, 1.0 + c, 0.3 + 0.2 * c


def exact_drift(z, c):
    m, theta, _ = ou_parameters(c)
    return -theta * (z - m)


# ------------------------------------------------------------------ a well-specified model
class QuadraticConditionDrift(eqx.Module):
    """mu_u(u, c) = w . (u, c, u c, c^2) + b on x = concat(u, c) (d = k = 1).

    Contains the conditioned OU drift -(1 + c)(z - c) = -z + c - z c + c^2 exactly, and keeps
    doing so under any affine normalisation of z and t: the MLE is consistent at every c,
    held-out conditions included, and its SE follows from the Fisher information.
    """

    weight: Float[Array, "4"]
    bias: Float[Array, ""]

    def __call__(self, x: Float[Array, "2"]) -> Float[Array, "1"]:
        u, c = x[0], x[1]
        return (self.weight @ jnp.stack([u, c, u * c, c * c]) + self.bias)[None]


class AffineConditionDiffusion(AbstractDiffusion):
    """Sigma(u, c) = a + b c (1 x 1): contains sigma(c) = 0.3 + 0.2 c (in any normalisation)."""

    a: Float[Array, ""]
    b: Float[Array, ""]

    def __call__(self, u, c=None):
        return jnp.reshape(self.a + self.b * c[0], (1, 1)).astype(u.dtype)


def well_specified_sde(normaliser, drift=(0.0, 0.0, 0.0, 0.0), bias=0.0, a=1.0, b=0.0):
    return LatentSDE(
        QuadraticConditionDrift(jnp.asarray(drift, jnp.float32), jnp.asarray(bias, jnp.float32)),
        AffineConditionDiffusion(jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32)),
        normaliser,
        condition_dim=1,
    )


# ------------------------------------------------------------------------------- the data
def conditioned_ou_pairs(seed: int, num_per_condition: int) -> IncrementPairs:
    """Exact OU transitions, z1 = m + (z0 - m) e^{-theta dt} + sigma sqrt((1 - e^{-2 theta
    dt}) / (2 theta)) xi, from z0 ~ m + U(-1, 1), dt ~ U(0.01, 0.03), at each training
    condition; the conditions pooled, each pair carrying its c as a (1,) vector."""
    rng = np.random.default_rng(seed)
    parts = []
    for c in TRAIN_CONDITIONS:
        m, theta, sigma = ou_parameters(c)
        n = num_per_condition
        z0 = m + rng.uniform(-1.0, 1.0, n)
        dt = rng.uniform(0.01, 0.03, n)
        decay = np.exp(-theta * dt)
        z1 = (
            m
            + (z0 - m) * decay
            + sigma * np.sqrt((1 - decay**2) / (2 * theta)) * rng.normal(size=n)
        )
        parts.append((z0, z1, dt, np.full(n, c)))
    z0, z1, dt, c = (np.concatenate(p) for p in zip(*parts, strict=True))
    return IncrementPairs(
        z0[:, None].astype(np.float32),
        z1[:, None].astype(np.float32),
        dt.astype(np.float32),
        c[:, None].astype(np.float32),
    )


def standard_errors(pairs: IncrementPairs, z, c):
    """SE of the drift mu(z, c) and of sigma(c) estimated by maximum likelihood in the
    well-specified family, from the Fisher information at the true parameters (physical
    units): drift coefficients beta on f = (1, z, c, z c, c^2) have information
    sum f f^T dt / sigma^2; (a, b) of sigma = a + b c have sum 2 g g^T / sigma^2, g = (1, c)
    (a Gaussian scale parameter carries 2 / sigma^2 per observation)."""
    z0 = np.asarray(pairs.z0, np.float64)[:, 0]
    dt = np.asarray(pairs.dt, np.float64)
    cs = np.asarray(pairs.condition, np.float64)[:, 0]
    sigma = ou_parameters(cs)[2]
    f = np.stack([np.ones_like(z0), z0, cs, z0 * cs, cs**2], axis=1)
    cov_beta = np.linalg.inv((f * (dt / sigma**2)[:, None]).T @ f)
    g = np.stack([np.ones_like(cs), cs], axis=1)
    cov_ab = np.linalg.inv((g * (2 / sigma**2)[:, None]).T @ g)
    f_at = np.stack([np.ones_like(z), z, c, z * c, c**2], axis=1)
    g_at = np.stack([np.ones_like(c), c], axis=1)
    se_drift = np.sqrt(np.einsum("ni,ij,nj->n", f_at, cov_beta, f_at))
    se_sigma = np.sqrt(np.einsum("ni,ij,nj->n", g_at, cov_ab, g_at))
    return se_drift, se_sigma


def euler_maruyama_bias(z, c, max_dt):
    """Bound on the bias of the one-step Euler-Maruyama likelihood fitted to EXACT OU
    transitions: it targets the drift slope (1 - e^{-theta dt}) / dt and the noise
    sigma sqrt((1 - e^{-2 theta dt}) / (2 theta dt)) instead of theta and sigma, off by
    O(theta dt); evaluated at the largest dt of the data (the bias grows with dt)."""
    m, theta, sigma = ou_parameters(c)
    slope = (1 - np.exp(-theta * max_dt)) / max_dt
    noise = sigma * np.sqrt((1 - np.exp(-2 * theta * max_dt)) / (2 * theta * max_dt))
    return np.abs(theta - slope) * np.abs(z - m), np.abs(sigma - noise)


# --------------------------------------------------------------------------- the learning
def test_learns_the_conditioned_ou_at_training_and_held_out_conditions():
    pairs = conditioned_ou_pairs(0, 6000)
    normaliser = LatentNormaliser(
        pairs.z0.mean(axis=0), pairs.z0.std(axis=0), float(pairs.dt.mean())
    )
    data = normalise_pairs(pairs, normaliser)
    chex.assert_trees_all_equal(data.condition, pairs.condition)  # c is not normalised
    # Sigma_u starts at 0.1, the order of the data's noise in these units (0.3-0.5 x
    # sqrt(0.02) / 0.7), so that 40 epochs converge (from 1.0 it takes ~150).
    sde = well_specified_sde(normaliser, a=0.1)
    # eps = 1e-7: the default 1e-4 would be ~1% of C dt of the least noisy condition here.
    loss = increment_loss_fn(covariance_scale=1.0, jitter=1e-7)
    config = TrainConfig(
        learning_rate=3e-2, batch_size=2048, num_epochs=40, device_epochs=True, **QUIET
    )
    model = fit(sde, loss, data, data, rbg_key(1), config).model

    offsets = np.array([-0.8, -0.4, 0.0, 0.4, 0.8])  # inside the data, z0 in m(c) +- 1
    for c in (*TRAIN_CONDITIONS, HELD_OUT_CONDITION):
        z = ou_parameters(c)[0] + offsets
        cs = np.full_like(z, c)
        condition = jnp.full((len(z), 1), c, jnp.float32)
        zs = jnp.asarray(z[:, None], jnp.float32)
        drift = np.asarray(jax.vmap(model.physical_drift)(zs, condition))[:, 0]
        cov = np.asarray(jax.vmap(model.physical_covariance_rate)(zs, condition))[:, 0, 0]
        se_drift, se_sigma = standard_errors(pairs, z, cs)
        bias_drift, bias_sigma = euler_maruyama_bias(z, c, 0.03)
        # 4 SE (|t| < 4 has probability 1 - 6e-5 per point) plus the known O(theta dt) bias
        # of fitting the Euler-Maruyama likelihood to exact transitions.
        drift_error = np.abs(drift - exact_drift(z, c))
        assert np.all(drift_error < 4 * se_drift + bias_drift), (c, drift_error, se_drift)
        sigma_error = np.abs(np.sqrt(cov) - ou_parameters(c)[2])
        assert np.all(sigma_error < 4 * se_sigma + bias_sigma), (c, sigma_error, se_sigma)
        # The fit depends on c where the truth does: the three training conditions have
        # different means, slopes and noise levels, all of them matched above.


@pytest.mark.slow
def test_reference_networks_learn_the_conditioned_ou():
    # make_latent_sde(condition_dim=1): MLPs on concat(u, c), (1+1)-32-32-1 drift and a
    # diagonal diffusion, trained on the pooled conditions (3 x 20,000 pairs, ~15 s on CPU).
    num_per = 20000
    pairs, val = conditioned_ou_pairs(0, num_per), conditioned_ou_pairs(1, 4000)
    normaliser = fit_normaliser(pairs.z0, val.dt)
    sde = make_latent_sde(rbg_key(0), 1, "diagonal", width_size=32, depth=2, condition_dim=1)
    config = TrainConfig(
        learning_rate=3e-3, batch_size=1024, num_epochs=30, device_epochs=True, **QUIET
    )
    model = fit(
        sde.with_normaliser(normaliser),
        increment_loss_fn(covariance_scale=1.0, jitter=1e-6),
        normalise_pairs(pairs, normaliser),
        normalise_pairs(val, normaliser),
        rbg_key(1),
        config,
    ).model

    offsets = np.array([-0.8, -0.4, 0.0, 0.4, 0.8])
    for c in (*TRAIN_CONDITIONS, HELD_OUT_CONDITION, 0.75):
        m, _, sigma = ou_parameters(c)
        z = m + offsets
        zs, cs = jnp.asarray(z[:, None], jnp.float32), jnp.full((len(z), 1), c, jnp.float32)
        drift = np.asarray(jax.vmap(model.physical_drift)(zs, cs))[:, 0]
        noise = np.sqrt(np.asarray(jax.vmap(model.physical_covariance_rate)(zs, cs))[:, 0, 0])
        bias_drift, bias_sigma = euler_maruyama_bias(z, c, 0.03)
        # A network estimates mu and sigma from the pairs near each point: with a resolution
        # of ~0.25 in z (a quarter of a condition's z0 range, 5,000 pairs x E[dt] 0.02 = 100
        # time units), the local SE is sigma / 10 for the drift and sqrt(2 / 5000) sigma = 2%
        # for sigma. Allow 4 local SE at the worst point and 2 in root mean square, plus the
        # Euler-Maruyama bias. Held-out conditions have no pairs: a network that interpolates
        # linearly in c misses the c^2 term of the drift by up to 0.0625 between two training
        # conditions, allowed on top.
        se_drift, se_sigma = sigma / 10, sigma * math.sqrt(2 / 5000)
        interpolation = 0.0 if c in TRAIN_CONDITIONS else 0.0625
        drift_error = np.abs(drift - exact_drift(z, c))
        assert np.all(drift_error < 4 * se_drift + bias_drift + interpolation), (c, drift_error)
        assert np.sqrt(np.mean(drift_error**2)) < 2 * se_drift + bias_drift.max() + interpolation
        sigma_error = np.abs(noise - sigma)
        assert np.all(sigma_error < 4 * se_sigma + bias_sigma), (c, sigma_error)


# ---------------------------------------------------------------------------- the rollout
def true_sde() -> LatentSDE:
    """The conditioned OU process itself, in physical units (identity normaliser):
    -(1 + c)(z - c) = -z + c - z c + c^2;  sigma = 0.3 + 0.2 c."""
    return well_specified_sde(
        LatentNormaliser.identity(1), drift=(-1.0, 1.0, -1.0, 1.0), a=0.3, b=0.2
    )


# Rollout ensemble: NUM_PER runs at each condition, from z0 = 0, NUM_STEPS steps of H. The
# tests below share these shapes, so each integrator compiles once for the whole file.
ROLL_CONDITIONS = np.array([0.0, 0.5, 1.0, HELD_OUT_CONDITION])
NUM_PER, H, NUM_STEPS = 2000, 0.05, 100


def roll(sde, condition, method="diffrax", seed=2):
    z0 = jnp.zeros((len(ROLL_CONDITIONS) * NUM_PER, 1))
    times = jnp.linspace(0.0, H * NUM_STEPS, NUM_STEPS + 1)
    return np.asarray(rollout(sde, z0, times, rbg_key(seed), condition=condition, method=method))


@pytest.mark.parametrize("method", ["diffrax", "scan"])
def test_rollout_with_per_run_conditions_reproduces_each_stationary_law(method):
    condition = np.repeat(ROLL_CONDITIONS, NUM_PER)[:, None].astype(np.float32)
    final = roll(true_sde(), condition, method)[:, -1, 0].reshape(len(ROLL_CONDITIONS), NUM_PER)
    for c, sample in zip(ROLL_CONDITIONS, final, strict=True):
        m, theta, sigma = ou_parameters(c)
        # The Euler-Maruyama chain's own moments after NUM_STEPS from 0 (no discretisation
        # error enters): m_k = m + (1 - theta h)^k (0 - m), its stationary variance
        # sigma^2 h / (1 - (1 - theta h)^2) times 1 - (1 - theta h)^(2k).
        rho = 1 - theta * H
        mean = m - rho**NUM_STEPS * m
        variance = sigma**2 * H / (1 - rho**2) * (1 - rho ** (2 * NUM_STEPS))
        # ... which is the SDE's stationary law m, sigma^2 / (2 theta) up to O(theta h)
        # (the transient left of the start is below a tenth of the mean's SE).
        assert abs(mean - m) < 0.1 * math.sqrt(variance / NUM_PER)
        assert abs(variance / (sigma**2 / (2 * theta)) - 1) < theta * H
        # Sample mean within 4 SE = 4 sqrt(var / n); sample variance within 4 SE =
        # 4 var sqrt(2 / (n - 1)) (Gaussian marginals).
        assert abs(sample.mean() - mean) < 4 * math.sqrt(variance / NUM_PER), (c, sample.mean())
        assert abs(sample.var(ddof=1) - variance) < 4 * variance * math.sqrt(2 / (NUM_PER - 1))


def test_shared_condition_is_the_per_run_condition_broadcast():
    sde = true_sde()
    shared = roll(sde, jnp.array([0.5]), seed=3)
    per_run = roll(sde, jnp.full((len(ROLL_CONDITIONS) * NUM_PER, 1), 0.5), seed=3)
    np.testing.assert_array_equal(shared, per_run)
    # Without noise both integrators follow z_k = c (1 - (1 - theta h)^k) at each run's c.
    zero = jnp.zeros((), jnp.float32)
    quiet = eqx.tree_at(lambda m: (m.diffusion_net.a, m.diffusion_net.b), sde, (zero, zero))
    c = np.repeat(ROLL_CONDITIONS, NUM_PER)[:, None].astype(np.float32)
    exact = c * (1 - (1 - (1 + c) * H) ** np.arange(NUM_STEPS + 1))
    for method in ("diffrax", "scan"):
        np.testing.assert_allclose(roll(quiet, c, method)[..., 0], exact, rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------- fit's batching
def test_fit_batches_carry_each_pairs_condition():
    """Pairs whose condition is a copy of their z0: a loss that explodes unless every batch
    row keeps its own condition stays at the increment loss's size through shuffled, sorted
    batches and a smaller last batch (1000 = 3 x 256 + 232), in the host loop and with
    ``device_epochs``, which also agree with each other (same batches and updates)."""
    rng = np.random.default_rng(5)
    z0 = rng.normal(size=(1000, 1)).astype(np.float32)
    pairs = IncrementPairs(z0, z0 + 0.1, np.full(1000, 0.5, np.float32), z0.copy())
    sde = well_specified_sde(LatentNormaliser.identity(1))

    def checked_loss(model, batch, key=None):
        misaligned = jnp.max(jnp.abs(batch.condition - batch.z0))
        return increment_loss(model, batch) + 1e6 * misaligned

    histories = []
    for device_epochs in (False, True):
        config = TrainConfig(batch_size=256, num_epochs=2, device_epochs=device_epochs, **QUIET)
        history = fit(sde, checked_loss, pairs, pairs, rbg_key(6), config).history
        assert all(abs(r.train_loss) < 100 and abs(r.val_loss) < 100 for r in history)
        histories.append(history)
    for host, device in zip(*histories, strict=True):
        # Up to float32 reassociation inside the scanned epoch (as in test_training).
        assert device.train_loss == pytest.approx(host.train_loss, rel=1e-5)
        assert device.val_loss == pytest.approx(host.val_loss, rel=1e-5)


def test_checkpoint_rebuilds_a_conditioned_model(tmp_path):
    hyperparams = model_hyperparams(
        "latent_sde",
        latent_dim=2,
        diffusion_mode="diagonal",
        width_size=4,
        depth=1,
        condition_dim=1,
    )
    sde = build_model(hyperparams, rbg_key(4))
    assert sde.condition_dim == 1 and sde.drift_net.in_size == 3
    save_model(tmp_path, sde, hyperparams)
    loaded = load_model(tmp_path)
    assert loaded.condition_dim == 1
    u, c = jnp.array([0.3, -0.2]), jnp.array([0.7])
    chex.assert_trees_all_equal(loaded.drift(u, c), sde.drift(u, c))
    chex.assert_trees_all_equal(loaded.diffusion(u, c), sde.diffusion(u, c))
    # The condition reaches both networks.
    assert not np.allclose(sde.drift(u, c), sde.drift(u, 2 * c))
    assert not np.allclose(sde.diffusion(u, c), sde.diffusion(u, 2 * c))


# ---------------------------------------------------------------------------- the errors
def test_condition_errors_are_raised_before_compute():
    conditioned = make_latent_sde(rbg_key(0), 2, "full", width_size=4, depth=1, condition_dim=3)
    plain = make_latent_sde(rbg_key(0), 2, "full", width_size=4, depth=1)
    u = jnp.zeros(2)
    for method in ("drift", "diffusion", "physical_drift", "physical_diffusion"):
        with pytest.raises(ValueError, match="needs a condition"):
            getattr(conditioned, method)(u)
        with pytest.raises(ValueError, match=r"shape \(3,\)"):
            getattr(conditioned, method)(u, jnp.zeros(2))
        with pytest.raises(ValueError, match="unconditioned"):
            getattr(plain, method)(u, jnp.zeros(3))
    assert conditioned.drift(u, jnp.zeros(3)).shape == (2,)
    assert conditioned.diffusion(u, jnp.zeros(3)).shape == (2, 2)

    batch = IncrementPairs(np.zeros((4, 2)), np.ones((4, 2)), np.ones(4))
    with pytest.raises(ValueError, match="needs a condition"):
        increment_loss(conditioned, batch)
    with pytest.raises(ValueError, match="unconditioned"):
        increment_loss(plain, batch._replace(condition=np.zeros((4, 3))))
    with pytest.raises(ValueError, match=r"shape \(4, 3\)"):
        increment_loss(conditioned, batch._replace(condition=np.zeros((4, 1))))

    z0, times = jnp.zeros((4, 2)), jnp.linspace(0.0, 1.0, 3)
    with pytest.raises(ValueError, match="needs a condition"):
        rollout(conditioned, z0, times, rbg_key(0))
    with pytest.raises(ValueError, match="unconditioned"):
        rollout(plain, z0, times, rbg_key(0), condition=jnp.zeros(3))
    with pytest.raises(ValueError, match=r"shape \(3,\)"):
        rollout(conditioned, z0, times, rbg_key(0), condition=jnp.zeros(2))
    with pytest.raises(ValueError, match=r"shape \(4, 3\)"):
        rollout(conditioned, z0, times, rbg_key(0), condition=jnp.zeros((5, 3)))

    with pytest.raises(ValueError, match="one condition vector per pair"):
        normalise_pairs(batch._replace(condition=np.zeros(4)), LatentNormaliser.identity(2))
    with pytest.raises(ValueError, match="condition_dim must be an int >= 0"):
        make_latent_sde(rbg_key(0), 2, condition_dim=-1)
    with pytest.raises(ValueError, match="concat"):
        LatentSDE(conditioned.drift_net, plain.diffusion_net, plain.normaliser, condition_dim=3)


# ------------------------------------------------------------- condition_dim = 0 is today
# What this exact setup gave with jmacro before conditioning existed (commit 4dd222d; float32 on
# CPU): the loss, the first physical drift, and the end point of the first rollout path.
BEFORE_CONDITIONING = {
    "loss": 11.70846939086914,
    "drift": [0.38590139150619507, 0.4588131010532379],
    "diffrax": [0.4383685886859894, 0.35419514775276184],
    "scan": [0.5822069048881531, 0.2693926990032196],
}


def test_condition_dim_zero_is_bit_identical_to_the_unconditioned_model():
    old = model_hyperparams(
        "latent_sde", latent_dim=2, diffusion_mode="full", width_size=8, depth=2
    )
    new = {**old, "condition_dim": 0}
    a, b = build_model(old, rbg_key(3)), build_model(new, rbg_key(3))
    assert a.condition_dim == b.condition_dim == 0
    assert jax.tree.structure(a) == jax.tree.structure(b)
    chex.assert_trees_all_equal(a, b)
    # Same serialised leaves: checkpoints written before condition_dim load unchanged.
    buffers = [io.BytesIO(), io.BytesIO()]
    for model, buffer in zip((a, b), buffers, strict=True):
        eqx.tree_serialise_leaves(buffer, model)
    assert buffers[0].getvalue() == buffers[1].getvalue()

    normaliser = LatentNormaliser(np.array([0.1, -0.2]), np.array([0.9, 1.3]), 0.7)
    sde = b.with_normaliser(normaliser)
    rng = np.random.default_rng(0)
    z0 = rng.normal(size=(64, 2)).astype(np.float32)
    z1 = (z0 + 0.3 * rng.normal(size=(64, 2))).astype(np.float32)
    dt = rng.uniform(0.05, 0.2, 64).astype(np.float32)
    omitted, explicit = (
        increment_loss(sde, normalise_pairs(pairs, normaliser), covariance_scale=4.0)
        for pairs in (IncrementPairs(z0, z1, dt), IncrementPairs(z0, z1, dt, None))
    )
    chex.assert_trees_all_equal(omitted, explicit)
    # The same numbers as before conditioning existed; the tolerance only absorbs the last-ulp
    # differences another XLA version or backend may give (on this CPU they are bit-equal).
    assert float(omitted) == pytest.approx(BEFORE_CONDITIONING["loss"], rel=1e-6)

    z = jnp.asarray(z0[:8])
    drift = jax.vmap(sde.physical_drift)(z)
    chex.assert_trees_all_equal(drift, jax.vmap(lambda x: sde.physical_drift(x, None))(z))
    np.testing.assert_allclose(drift[0], BEFORE_CONDITIONING["drift"], rtol=1e-6)
    times = jnp.linspace(0.0, 1.0, 6)
    for method in ("diffrax", "scan"):
        omitted = rollout(sde, z, times, rbg_key(5), num_substeps=2, method=method)
        explicit = rollout(sde, z, times, rbg_key(5), num_substeps=2, method=method, condition=None)
        chex.assert_trees_all_equal(omitted, explicit)
        np.testing.assert_allclose(omitted[0, -1], BEFORE_CONDITIONING[method], rtol=1e-5)


def test_increment_loss_sees_each_pairs_condition():
    # A drift that reads c only: r = z1 - z0 - c dt must vanish exactly when z1 = z0 + c dt,
    # one condition per pair (a mix-up of rows would leave residuals of order 1).
    sde = well_specified_sde(LatentNormaliser.identity(1), drift=(0.0, 1.0, 0.0, 0.0), a=1.0, b=0.0)
    c = np.array([[-1.0], [0.0], [2.0], [0.5]], np.float32)
    dt = np.array([0.1, 0.2, 0.3, 0.4], np.float32)
    z0 = np.zeros((4, 1), np.float32)
    batch = IncrementPairs(z0, z0 + c * dt[:, None], dt, c)
    # r = 0: each term is log det C = log(dt) (Sigma = 1, lambda = 1, eps = 0).
    loss = increment_loss(sde, batch, jitter=0.0)
    assert float(loss) == pytest.approx(float(np.mean(np.log(dt))), rel=1e-6)
