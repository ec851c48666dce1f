"""Ensemble metrics: relative squared error of mean trajectories, MMD, resampling."""

from __future__ import annotations

import chex
import jax.numpy as jnp
import numpy as np
import pytest

from jmacro.metrics import (
    MMD_BANDWIDTHS,
    ensemble_mean_std,
    mmd_per_time,
    mmd_squared,
    relative_squared_error,
    resample_trajectories,
)


def reference_mmd(pred_t, true_t):
    """The reference implementation's per-time MMD (biased, bandwidths averaged), in NumPy."""
    xx, yy, zz = pred_t @ pred_t.T, true_t @ true_t.T, pred_t @ true_t.T
    rx, ry = np.diag(xx)[:, None], np.diag(yy)[:, None]
    dxx, dyy, dxy = rx + rx.T - 2 * xx, ry + ry.T - 2 * yy, rx + ry.T - 2 * zz
    total = 0.0
    for sigma in [0.25, 0.5, 1.0, 2.0, 4.0, 8.0]:
        scale = 2 * sigma**2
        total += (
            np.exp(-dxx / scale).mean() + np.exp(-dyy / scale).mean()
            - 2 * np.exp(-dxy / scale).mean()
        )  # fmt: skip
    return total / 6


def test_relative_squared_error_by_hand():
    # Mean trajectories (t = 2, d = 2): true [[1, 2], [3, 4]], predicted [[1, 2], [3, 6]]
    # (ensembles of two members symmetric about the means). Sum over time AND dimensions:
    # (6 - 4)^2 / (1 + 4 + 9 + 16) = 4 / 30.
    true_mean = np.array([[1.0, 2.0], [3.0, 4.0]])
    pred_mean = np.array([[1.0, 2.0], [3.0, 6.0]])
    spread = np.array([[[0.5, -0.5], [1.0, 0.0]]])
    true = jnp.asarray(np.concatenate([true_mean + spread, true_mean - spread]))
    pred = jnp.asarray(np.concatenate([pred_mean - spread, pred_mean + spread, pred_mean[None]]))
    chex.assert_trees_all_close(relative_squared_error(pred, true), jnp.float32(4 / 30))
    chex.assert_trees_all_close(relative_squared_error(true, true), jnp.float32(0.0))


def test_mean_and_std_over_the_ensemble():
    x = jnp.array([[[0.0], [1.0]], [[2.0], [5.0]]])
    mean, std = ensemble_mean_std(x)
    chex.assert_trees_all_close((mean, std), (jnp.array([[1.0], [3.0]]), jnp.array([[1.0], [2.0]])))


def test_mmd_matches_the_reference_formula():
    rng = np.random.default_rng(0)
    pred = rng.normal(size=(30, 4, 3)).astype(np.float32)
    true = (rng.normal(size=(20, 4, 3)) + 0.3).astype(np.float32)
    expected = [reference_mmd(pred[:, t].astype(np.float64), true[:, t]) for t in range(4)]
    values = mmd_per_time(pred, true)  # host NumPy inputs are accepted
    chex.assert_shape(values, (4,))
    chex.assert_trees_all_close(values, jnp.asarray(expected, jnp.float32), atol=1e-6)
    assert MMD_BANDWIDTHS == (0.25, 0.5, 1.0, 2.0, 4.0, 8.0)


def test_mmd_biased_and_unbiased_estimators():
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.normal(size=(200, 2)), jnp.float32)
    same_law = jnp.asarray(rng.normal(size=(200, 2)), jnp.float32)
    shifted = jnp.asarray(rng.normal(size=(200, 2)) + 1.0, jnp.float32)
    chex.assert_trees_all_close(mmd_squared(x, x), jnp.float32(0.0), atol=1e-6)
    biased, unbiased = mmd_squared(x, same_law), mmd_squared(x, same_law, unbiased=True)
    # Same law: the V-statistic keeps the diagonal terms, a positive bias of
    # (1 - E k(x, x')) (1/n + 1/m) <= 2 / 200; the U-statistic is centred on 0 with a spread of
    # order 1/n. A shift by 1 in each coordinate gives an MMD^2 far above both.
    assert 0 < float(biased) < 0.01 and abs(float(unbiased)) < 0.005
    assert float(mmd_squared(x, shifted)) > 10 * float(biased)
    assert float(mmd_squared(x, shifted, unbiased=True)) > 10 * abs(float(unbiased))


def test_resample_interpolates_and_extrapolates_linearly():
    times = jnp.array([[0.0, 1.0, 3.0], [0.5, 1.5, 2.5]])
    values = jnp.stack([2 * times + 1, -times], axis=-1)  # linear in time: exact everywhere
    grid = jnp.array([0.0, 0.25, 2.0, 3.5])
    out = resample_trajectories(times, values, grid)
    chex.assert_shape(out, (2, 4, 2))
    expected = jnp.broadcast_to(jnp.stack([2 * grid + 1, -grid], axis=-1), (2, 4, 2))
    chex.assert_trees_all_close(out, expected, atol=1e-6)


def test_metric_inputs_must_share_the_grid():
    with pytest.raises((ValueError, TypeError)):
        relative_squared_error(jnp.ones((3, 4, 2)), jnp.ones((3, 5, 2)))
    with pytest.raises((ValueError, TypeError)):
        mmd_per_time(jnp.ones((3, 4, 2)), jnp.ones((3, 4, 3)))
    with pytest.raises(ValueError, match="bandwidths"):
        mmd_squared(jnp.ones((3, 2)), jnp.ones((3, 2)), bandwidths=(1.0, 0.0))
