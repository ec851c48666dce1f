"""Ensemble statistics comparing predicted and true latent trajectories.

Trajectory ensembles have shape ``(num_trajectories, num_times, d)`` and share the time grid
(use ``resample_trajectories`` first for simulator trajectories with random times). The two
ensembles may have different sizes.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float

MMD_BANDWIDTHS = (0.25, 0.5, 1.0, 2.0, 4.0, 8.0)


def ensemble_mean_std(
    trajectories: Float[ArrayLike, "n t d"],
) -> tuple[Float[Array, "t d"], Float[Array, "t d"]]:
    """Mean and (population, ddof = 0) standard deviation over the ensemble, per time."""
    return jnp.mean(trajectories, axis=0), jnp.std(trajectories, axis=0)


@jax.jit
def relative_squared_error(
    predicted: Float[ArrayLike, "n t d"], reference: Float[ArrayLike, "m t d"]
) -> Float[Array, ""]:
    """Relative squared error of the ensemble-mean trajectories (REFERENCE.md section 3):

        E = sum_{t, k} (mean_pred[t, k] - mean_true[t, k])^2 / sum_{t, k} mean_true[t, k]^2,

    summed over the time grid AND the latent dimensions k (the reference computes
    mean((pred - true)^2) / mean(true^2) over the ``(t, d)`` mean trajectory, which is the
    same ratio). The value depends on the coordinates: the reference uses the latents the SDE
    sees (min-max normalised for Ising); pass the coordinates you want to compare in. Average
    it over test initial conditions yourself.
    """
    _check_same_grid(predicted, reference)
    mean_predicted = jnp.mean(predicted, axis=0)
    mean_reference = jnp.mean(reference, axis=0)
    return jnp.sum((mean_predicted - mean_reference) ** 2) / jnp.sum(mean_reference**2)


@functools.partial(jax.jit, static_argnames=("bandwidths", "unbiased"))
def mmd_squared(
    x: Float[ArrayLike, "n d"],
    y: Float[ArrayLike, "m d"],
    bandwidths: tuple[float, ...] = MMD_BANDWIDTHS,
    unbiased: bool = False,
) -> Float[Array, ""]:
    """Squared maximum mean discrepancy between the samples ``x`` and ``y``.

    Kernel: k(a, b) = (1/B) sum_s exp(-|a - b|^2 / (2 s^2)) over the bandwidths s.

    ``unbiased=False`` (default, the reference's estimator): the V-statistic
    mean_ij k(x_i, x_j) + mean_ij k(y_i, y_j) - 2 mean_ij k(x_i, y_j), diagonal terms included;
    it is >= 0 and biased upwards by O(1/n + 1/m) (two samples of one law give about
    (1 - mean k) (1/n + 1/m), not 0). ``unbiased=True``: the U-statistic, which drops the
    diagonal terms of the within-sample means; unbiased but can be negative.
    """
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"x and y must have the same dimension, got {x.shape} and {y.shape}.")
    if not bandwidths or min(bandwidths) <= 0:
        raise ValueError(
            f"bandwidths must be a non-empty tuple of positive numbers, got {bandwidths}."
        )
    k_xx = _rbf_kernel(x, x, bandwidths)
    k_yy = _rbf_kernel(y, y, bandwidths)
    k_xy = _rbf_kernel(x, y, bandwidths)
    if unbiased:
        n, m = x.shape[0], y.shape[0]
        if n < 2 or m < 2:
            raise ValueError("the unbiased MMD needs at least 2 samples on each side.")
        within_x = (jnp.sum(k_xx) - jnp.trace(k_xx)) / (n * (n - 1))
        within_y = (jnp.sum(k_yy) - jnp.trace(k_yy)) / (m * (m - 1))
        return within_x + within_y - 2 * jnp.mean(k_xy)
    return jnp.mean(k_xx) + jnp.mean(k_yy) - 2 * jnp.mean(k_xy)


@functools.partial(jax.jit, static_argnames=("bandwidths", "unbiased"))
def mmd_per_time(
    predicted: Float[ArrayLike, "n t d"],
    reference: Float[ArrayLike, "m t d"],
    bandwidths: tuple[float, ...] = MMD_BANDWIDTHS,
    unbiased: bool = False,
) -> Float[Array, " t"]:
    """``mmd_squared`` between the two ensembles at every time step, shape ``(t,)``.

    The reference reports the mean of this over time (and over test conditions), computed on
    the normalised latents.
    """
    _check_same_grid(predicted, reference)
    one_time = lambda x, y: mmd_squared(x, y, bandwidths, unbiased)  # noqa: E731
    return jax.vmap(one_time, in_axes=(1, 1))(predicted, reference)


@jax.jit
def resample_trajectories(
    times: Float[ArrayLike, "n s"], values: Float[ArrayLike, "n s d"], grid: Float[ArrayLike, " t"]
) -> Float[Array, "n t d"]:
    """Linear interpolation of each trajectory (own, increasing times) onto a common grid.

    Outside a trajectory's time range the end segments are extended linearly (as the
    reference's ``interp1d(..., fill_value="extrapolate")``).
    """

    def one(t, v):
        index = jnp.clip(jnp.searchsorted(t, grid, side="right") - 1, 0, t.shape[0] - 2)
        t0, t1 = t[index], t[index + 1]
        weight = ((grid - t0) / (t1 - t0))[:, None]
        return v[index] * (1 - weight) + v[index + 1] * weight

    if times.shape[1] < 2:
        raise ValueError("each trajectory needs at least 2 time points to interpolate.")
    return jax.vmap(one)(times, values)


def _rbf_kernel(a, b, bandwidths):
    sq_dist = jnp.sum((a[:, None, :] - b[None, :, :]) ** 2, axis=-1)
    return jnp.mean(jnp.stack([jnp.exp(-sq_dist / (2.0 * s**2)) for s in bandwidths]), axis=0)


def _check_same_grid(a, b):
    if a.shape[1:] != b.shape[1:]:
        raise ValueError(
            f"ensembles must share the time grid and dimension (shape (n, t, d)), got "
            f"{a.shape} and {b.shape}."
        )


def diverged_fraction(predicted, truth, margin: float = 10.0) -> float:
    """Fraction of predicted trajectories that leave the box of ``margin`` truth ranges around
    the truth's centre (or turn NaN) at any time, in any latent.

    Args:
        predicted: ``(..., n, t, d)`` predicted trajectories (host array).
        truth: ``(..., m, t', d)`` true trajectories; only their per-latent range is used.
    """
    predicted, truth = np.asarray(predicted), np.asarray(truth)
    axes = tuple(range(truth.ndim - 1))
    low, high = truth.min(axis=axes), truth.max(axis=axes)
    centre, half = (low + high) / 2, np.maximum(high - low, 1e-12) * margin
    far = np.abs(np.nan_to_num(predicted, nan=np.inf) - centre) > half
    return float(np.mean(far.any(axis=(-2, -1))))
