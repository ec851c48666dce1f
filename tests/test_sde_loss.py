"""The partial-evolution likelihood loss and the SDE model's parametrisations.

The loss must equal 2 x the negative Gaussian log-likelihood minus d log(2 pi) of the
one-step Euler-Maruyama transition, for every diffusion mode.
"""

from __future__ import annotations

import functools
import math

import chex
import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest
from scipy.stats import multivariate_normal

from jmacro.models import (
    DIFFUSION_MODES,
    ConstantDiagonalDiffusion,
    ConstantDiffusion,
    LatentNormaliser,
    LatentSDE,
    make_latent_sde,
)
from jmacro.training import (
    IncrementPairs,
    default_covariance_scale,
    increment_loss,
    increment_loss_fn,
)

# "rbg" keys: the threefry kernels behind the default keys take seconds to compile on a
# 2-core CPU, once per array shape; the statistics tested here do not depend on the generator.
rbg_key = functools.partial(jr.key, impl="rbg")


def linear_sde(drift_matrix, diffusion) -> LatentSDE:
    """du = A u dt + Sigma dW with identity normalisation."""
    d = drift_matrix.shape[0]
    drift = eqx.nn.Linear(d, d, use_bias=False, key=rbg_key(0))
    drift = eqx.tree_at(lambda m: m.weight, drift, jnp.asarray(drift_matrix, jnp.float32))
    return LatentSDE(drift, diffusion, LatentNormaliser.identity(d))


def reference_loss(sde, batch, covariance_scale, jitter):
    """Independent computation: scipy's Gaussian log-density of z1 given z0."""
    total = 0.0
    for z0, z1, dt in zip(batch.z0, batch.z1, batch.dt, strict=True):
        mu = np.asarray(sde.drift(jnp.asarray(z0)), np.float64)
        sigma = np.asarray(sde.diffusion(jnp.asarray(z0)), np.float64)
        d = z0.shape[0]
        cov = covariance_scale * dt * sigma @ sigma.T + jitter * np.eye(d)
        logpdf = multivariate_normal(mean=z0 + mu * dt, cov=cov).logpdf(z1)
        total += -2.0 * logpdf - d * math.log(2 * math.pi)
    return total / len(batch.dt)


def random_batch(seed, n, d):
    rng = np.random.default_rng(seed)
    z0 = rng.normal(size=(n, d)).astype(np.float32)
    z1 = (z0 + 0.3 * rng.normal(size=(n, d))).astype(np.float32)
    dt = rng.uniform(0.05, 0.2, n).astype(np.float32)
    return IncrementPairs(z0, z1, dt)


def test_loss_matches_hand_computation_1d():
    # du = -2 u dt + 0.5 dW; z0 = 1, z1 = 1.3, dt = 0.1:
    # r = 1.3 - 1 - (-2)(1)(0.1) = 0.5,  C = lambda 0.25 0.1 + eps.
    sde = linear_sde(np.array([[-2.0]]), ConstantDiagonalDiffusion(jnp.log(jnp.array([0.5]))))
    batch = IncrementPairs(np.array([[1.0]]), np.array([[1.3]]), np.array([0.1]))
    for covariance_scale, jitter in [(1.0, 1e-4), (16.0, 1e-4), (4.0, 0.0)]:
        c = covariance_scale * 0.25 * 0.1 + jitter
        expected = 0.5**2 / c + math.log(c)
        loss = increment_loss(sde, batch, covariance_scale=covariance_scale, jitter=jitter)
        # float32: the two terms (~4 each) partly cancel, so compare with an absolute
        # tolerance of a few ulps of the terms.
        chex.assert_trees_all_close(loss, jnp.float32(expected), atol=1e-5, rtol=0)


def test_loss_matches_hand_computation_2d():
    # Constant Sigma = [[1, 0], [1, 1]]: Sigma Sigma^T = [[1, 1], [1, 2]], det 1, inverse
    # [[2, -1], [-1, 1]]. Zero drift, dt = 1, lambda = 1, eps = 0, r = (1, 2):
    # r^T C^-1 r = 2 - 4 + 4 = 2, log det C = 0.
    sde = linear_sde(np.zeros((2, 2)), ConstantDiffusion(jnp.array([[1.0, 0.0], [1.0, 1.0]])))
    batch = IncrementPairs(np.zeros((1, 2)), np.array([[1.0, 2.0]]), np.array([1.0]))
    loss = increment_loss(sde, batch, covariance_scale=1.0, jitter=0.0)
    chex.assert_trees_all_close(loss, jnp.float32(2.0), atol=1e-6)
    # lambda = 4 scales C by 4: quadratic form / 4, log det + 2 log 4.
    loss = increment_loss(sde, batch, covariance_scale=4.0, jitter=0.0)
    chex.assert_trees_all_close(loss, jnp.float32(0.5 + 2 * math.log(4.0)), rtol=1e-6)


@pytest.mark.parametrize("mode", DIFFUSION_MODES)
@pytest.mark.parametrize("latent_dim", [1, 2])
def test_loss_equals_gaussian_nll_every_mode(mode, latent_dim):
    # Random networks, so that drift and diffusion vary with the state; the reference is an
    # independent float64 scipy computation from the same drift and diffusion values.
    sde = make_latent_sde(rbg_key(latent_dim), latent_dim, mode, width_size=16, depth=2)
    if mode in ("constant", "constant_diagonal"):  # move off the initial identity
        leaf = sde.diffusion_net.matrix if mode == "constant" else sde.diffusion_net.log_sigma
        where = lambda m: jax.tree.leaves(m.diffusion_net)[0]  # noqa: E731
        sde = eqx.tree_at(where, sde, leaf + 0.3 * jr.normal(rbg_key(7), leaf.shape))
    batch = random_batch(latent_dim, 16, latent_dim)
    loss_fn = eqx.filter_jit(increment_loss_fn(covariance_scale=3.0, jitter=1e-4))
    expected = reference_loss(sde, batch, 3.0, 1e-4)
    # float32 evaluation of a sum of O(10) terms: relative error ~1e-6.
    chex.assert_trees_all_close(loss_fn(sde, batch, None), jnp.float32(expected), rtol=1e-5)


def test_diffusion_is_square_and_modes_have_their_structure():
    u = jnp.array([0.3, -1.2, 0.5])
    for mode in DIFFUSION_MODES:
        sde = make_latent_sde(rbg_key(0), 3, mode, width_size=8, depth=1)
        sigma = sde.diffusion(u)
        chex.assert_shape(sigma, (3, 3))
        chex.assert_shape(sde.drift(u), (3,))
        if mode != "full" and mode != "constant":
            chex.assert_trees_all_close(sigma, jnp.diag(jnp.diag(sigma)))
            assert bool(jnp.all(jnp.diag(sigma) > 0))
        if mode.startswith("constant"):
            chex.assert_trees_all_close(sigma, sde.diffusion(2 * u))


def test_physical_units_follow_the_normaliser():
    # u = (z - offset) / scale, tau = t / T: mu(z) = scale mu_u / T, Sigma = scale Sigma_u / sqrt T.
    base = linear_sde(np.array([[-1.0]]), ConstantDiagonalDiffusion(jnp.log(jnp.array([2.0]))))
    sde = base.with_normaliser(LatentNormaliser(jnp.array([0.5]), jnp.array([3.0]), 4.0))
    z = jnp.array([2.0])  # u = 0.5
    chex.assert_trees_all_close(sde.physical_drift(z), jnp.array([3.0 * -0.5 / 4.0]))
    chex.assert_trees_all_close(sde.physical_diffusion(z), jnp.array([[3.0 * 2.0 / 2.0]]))
    chex.assert_trees_all_close(sde.physical_covariance_rate(z), jnp.array([[9.0]]))


def test_normaliser_statistics():
    z = np.array([[0.0, 1.0], [2.0, 3.0], [4.0, 8.0]])
    standard = LatentNormaliser.from_data(z, 0.5)
    chex.assert_trees_all_close(standard.offset, jnp.array([2.0, 4.0]))
    chex.assert_trees_all_close(standard.scale, jnp.asarray(z.std(axis=0), jnp.float32))
    minmax = LatentNormaliser.from_data(z, 0.5, method="minmax")
    chex.assert_trees_all_close(minmax.normalise(jnp.asarray(z[2], jnp.float32)), jnp.ones(2))
    chex.assert_trees_all_close(minmax.denormalise(minmax.normalise(jnp.ones(2))), jnp.ones(2))
    with pytest.raises(ValueError, match="constant over the data"):
        LatentNormaliser.from_data(np.ones((4, 2)))
    with pytest.raises(ValueError, match="unknown normalisation"):
        LatentNormaliser.from_data(z, method="robust")


def test_bad_inputs_raise_clear_errors():
    with pytest.raises(ValueError, match="unknown diffusion mode"):
        make_latent_sde(rbg_key(0), 2, "triangular")
    sde = linear_sde(np.eye(2), ConstantDiffusion(jnp.eye(2)))
    batch = random_batch(0, 4, 2)
    for bad in (0.0, -1.0):
        with pytest.raises(ValueError, match="lambda"):
            increment_loss(sde, batch, covariance_scale=bad)
    with pytest.raises(ValueError, match="jitter"):
        increment_loss(sde, batch, jitter=-1e-4)
    with pytest.raises(ValueError, match=r"model d = 2"):
        increment_loss(sde, random_batch(0, 4, 3))
    with pytest.raises(ValueError, match="shape"):
        increment_loss(sde, IncrementPairs(batch.z0, batch.z1, batch.dt[:3]))
    # A batch where one sample is expected: our ValueError, or jaxtyping's TypeError first
    # when the runtime type checks are on (as under pytest).
    with pytest.raises((ValueError, TypeError)):
        sde.drift(jnp.ones((4, 2)))


def test_default_covariance_scale_per_pair_kind():
    assert default_covariance_scale("ours", 16) == 16.0
    for method in ("baseline", "patch", "full"):
        assert default_covariance_scale(method, 16) == 1.0
    with pytest.raises(ValueError, match="unknown pair method"):
        default_covariance_scale("naive", 16)
