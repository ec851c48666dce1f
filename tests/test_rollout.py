"""Ensemble rollouts: exact Euler-Maruyama moments of a linear SDE, Diffrax vs lax.scan."""

from __future__ import annotations

import functools
import itertools

import chex
import equinox as eqx
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

from jmacro.models import ConstantDiffusion, LatentNormaliser, LatentSDE, make_latent_sde
from jmacro.rollout import rollout

rbg_key = functools.partial(jr.key, impl="rbg")  # fast-compiling keys on a 2-core CPU

DRIFT = np.array([[-1.0, 0.8], [-0.4, -0.6]])
SIGMA = np.array([[0.6, 0.0], [0.5, 0.3]])
# Physical z = offset + scale * u, t = time_scale * tau: exercises the un-normalisation.
NORMALISER = LatentNormaliser(np.array([1.0, -2.0]), np.array([0.5, 2.0]), 0.2)


def linear_sde(sigma=SIGMA) -> LatentSDE:
    """du = A u dtau + Sigma dW_tau in normalised coordinates."""
    drift = eqx.nn.Linear(2, 2, use_bias=False, key=rbg_key(0))
    drift = eqx.tree_at(lambda m: m.weight, drift, jnp.asarray(DRIFT, jnp.float32))
    return LatentSDE(drift, ConstantDiffusion(jnp.asarray(sigma, jnp.float32)), NORMALISER)


def euler_maruyama_moments(z0, times, num_substeps):
    """Exact mean and covariance of the Euler-Maruyama chain (not of the SDE: no
    discretisation error enters the comparison):
    m_{k+1} = (I + A h) m_k,  P_{k+1} = (I + A h) P_k (I + A h)^T + h Sigma Sigma^T."""
    offset, scale = np.asarray(NORMALISER.offset), np.asarray(NORMALISER.scale)
    taus = np.asarray(times) / float(NORMALISER.time_scale)
    mean, cov = (np.asarray(z0) - offset) / scale, np.zeros((2, 2))
    means, variances = [mean], [np.zeros(2)]
    for tau0, tau1 in itertools.pairwise(taus):
        h = (tau1 - tau0) / num_substeps
        step = np.eye(2) + DRIFT * h
        for _ in range(num_substeps):
            mean, cov = step @ mean, step @ cov @ step.T + h * SIGMA @ SIGMA.T
        means.append(mean)
        variances.append(np.diag(cov))
    return offset + scale * np.array(means), scale**2 * np.array(variances)


def assert_moments_match(paths, mean, variance):
    """Sample mean within 4 SE = 4 sqrt(var / n), sample variance within 4 SE =
    4 var sqrt(2 / (n - 1)) (Gaussian marginals), at every time and component."""
    n = paths.shape[0]
    sample_mean, sample_var = paths.mean(axis=0), paths.var(axis=0, ddof=1)
    assert np.all(np.abs(sample_mean - mean) <= 4 * np.sqrt(variance / n) + 1e-5)
    assert np.all(np.abs(sample_var - variance) <= 4 * variance * np.sqrt(2 / (n - 1)) + 1e-7)


@pytest.mark.parametrize("method", ["diffrax", "scan"])
def test_linear_sde_has_the_exact_euler_maruyama_moments(method):
    num_traj, num_substeps = 4000, 2
    times = jnp.linspace(0.0, 0.6, 13)  # 12 intervals of 0.05 = 0.25 time_scale
    z0 = jnp.array([2.0, -1.0])
    paths = rollout(
        linear_sde(),
        jnp.broadcast_to(z0, (num_traj, 2)),
        times,
        rbg_key(1),
        num_substeps=num_substeps,
        method=method,
    )
    chex.assert_shape(paths, (num_traj, 13, 2))
    chex.assert_trees_all_close(paths[:, 0], jnp.broadcast_to(z0, (num_traj, 2)), atol=1e-6)
    mean, variance = euler_maruyama_moments(z0, times, num_substeps)
    assert_moments_match(np.asarray(paths, np.float64), mean, variance)


def test_virtual_brownian_tree_path_has_the_same_moments():
    times = jnp.linspace(0.0, 0.4, 5)
    z0 = jnp.array([2.0, -1.0])
    paths = rollout(
        linear_sde(), jnp.broadcast_to(z0, (2000, 2)), times, rbg_key(2), brownian="virtual_tree"
    )
    mean, variance = euler_maruyama_moments(z0, times, 1)
    assert_moments_match(np.asarray(paths, np.float64), mean, variance)


def test_without_noise_both_integrators_take_the_same_steps():
    # Zero diffusion: both give the deterministic Euler path on the same refined grid, with a
    # non-uniform output grid.
    sde = linear_sde(sigma=np.zeros((2, 2)))
    times = np.array([0.0, 0.05, 0.2, 0.25, 0.6], np.float32)  # host arrays are accepted
    z0 = jnp.array([[2.0, -1.0], [0.0, 1.0]])
    via_diffrax = rollout(sde, z0, times, rbg_key(0), num_substeps=3, method="diffrax")
    via_scan = rollout(sde, z0, times, rbg_key(0), num_substeps=3, method="scan")
    chex.assert_trees_all_close(via_diffrax, via_scan, rtol=1e-5, atol=1e-6)
    mean, _ = euler_maruyama_moments(z0[0], times, 3)
    chex.assert_trees_all_close(via_scan[0], jnp.asarray(mean, jnp.float32), rtol=1e-5)


def test_scan_and_diffrax_agree_in_distribution_for_a_nonlinear_sde():
    # A random network drift and a state-dependent full diffusion: non-Gaussian marginals.
    sde = make_latent_sde(rbg_key(3), 2, "full", width_size=16, depth=1)
    sde = sde.with_normaliser(NORMALISER)
    times = jnp.linspace(0.0, 0.8, 9)
    z0 = jnp.broadcast_to(jnp.array([1.5, -1.0]), (3000, 2))
    a = np.asarray(rollout(sde, z0, times, rbg_key(4), method="diffrax"), np.float64)[:, 1:]
    b = np.asarray(rollout(sde, z0, times, rbg_key(5), method="scan"), np.float64)[:, 1:]
    n = a.shape[0]
    # Two-sample z-tests, 4 SE: means with SE sqrt((v_a + v_b) / n); variances with the
    # distribution-free SE sqrt((m4 - v^2) / n) of a sample variance, summed over both.
    var_a, var_b = a.var(axis=0), b.var(axis=0)
    assert np.all(np.abs(a.mean(axis=0) - b.mean(axis=0)) < 4 * np.sqrt((var_a + var_b) / n))

    def var_se_sq(x, v):
        return (np.mean((x - x.mean(axis=0)) ** 4, axis=0) - v**2) / n

    assert np.all(np.abs(var_a - var_b) < 4 * np.sqrt(var_se_sq(a, var_a) + var_se_sq(b, var_b)))
    assert np.all(var_a > 0)


def test_bad_rollout_arguments_raise():
    sde = linear_sde()
    z0, times = jnp.zeros((3, 2)), jnp.linspace(0.0, 1.0, 4)
    with pytest.raises(ValueError, match="unknown rollout method"):
        rollout(sde, z0, times, rbg_key(0), method="milstein")
    with pytest.raises(ValueError, match="unknown Brownian path"):
        rollout(sde, z0, times, rbg_key(0), brownian="interval_tree")
    with pytest.raises(ValueError, match="strictly increasing"):
        rollout(sde, z0, times[::-1], rbg_key(0))
    with pytest.raises(ValueError, match="model d = 2"):
        rollout(sde, jnp.zeros((3, 3)), times, rbg_key(0))
    with pytest.raises(ValueError, match="num_substeps"):
        rollout(sde, z0, times, rbg_key(0), num_substeps=0)
