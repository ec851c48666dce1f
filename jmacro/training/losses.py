"""Losses: pure functions of ``(model, batch)`` (plus an optional, here unused, PRNG key).

Every loss has the signature ``loss(model, batch, key=None) -> scalar`` so that the generic
training loop (``jmacro.training.fit``) can pass a per-step key to stochastic losses; the
losses below are deterministic and ignore it. Hyperparameters (lambda, eps) are bound with
``functools.partial`` or ``increment_loss_fn``.
"""

from __future__ import annotations

import functools
import numbers

import jax
import jax.numpy as jnp
import jax.scipy.linalg as jsl
import numpy as np
from jaxtyping import Array, ArrayLike, Float, PRNGKeyArray, Shaped

from jmacro._checks import check_positive_int
from jmacro.models.closure import ClosureAutoencoder
from jmacro.models.sde import LatentSDE
from jmacro.training.pairs import IncrementPairs

DEFAULT_JITTER = 1e-4
_UNROLL_MAX_DIM = 8


def increment_nll_terms(
    sde: LatentSDE,
    z0: Float[Array, " d"],
    z1: Float[Array, " d"],
    dt: Float[Array, ""],
    covariance_scale: float | int | Float[Array, ""] = 1.0,
    jitter: float | int = DEFAULT_JITTER,
    condition: Float[Array, " k"] | None = None,
) -> Float[Array, ""]:
    """r^T C^{-1} r + log det C for ONE pair (normalised coordinates) at condition c.

    r = z1 - z0 - mu(z0, c) dt,  C = lambda Sigma(z0, c) Sigma(z0, c)^T dt + eps I,  with
    C = L L^T its Cholesky factor: r^T C^{-1} r = |L^{-1} r|^2 (one triangular solve) and
    log det C = 2 sum_i log L_ii. No explicit inverse is formed. A covariance that is not
    positive definite gives NaN. ``condition``: ``(k,)`` for a conditioned model, else None.
    """
    d = z0.shape[0]
    sigma = sde.diffusion(z0, condition)
    residual = z1 - z0 - sde.drift(z0, condition) * dt
    covariance = covariance_scale * dt * (sigma @ sigma.T) + jitter * jnp.eye(d, dtype=z0.dtype)
    return gaussian_quadratic_form_and_logdet(covariance, residual)


def gaussian_quadratic_form_and_logdet(
    covariance: Float[Array, "d d"], residual: Float[Array, " d"]
) -> Float[Array, ""]:
    """r^T C^{-1} r + log det C through the Cholesky factor C = L L^T.

    For d <= 8 the factorisation and the forward substitution are unrolled into scalar
    operations (vectorised over the batch by ``vmap``): on CPU the batched LAPACK Cholesky
    and its gradient cost about 9x more for the small d of latent SDEs. Larger d uses
    ``jnp.linalg.cholesky`` and a triangular solve.
    """
    d = residual.shape[0]
    if d > _UNROLL_MAX_DIM:
        chol = jnp.linalg.cholesky(covariance)
        whitened = jsl.solve_triangular(chol, residual, lower=True)
        return jnp.sum(whitened**2) + 2.0 * jnp.sum(jnp.log(jnp.diagonal(chol)))
    # Cholesky-Banachiewicz: L_ij = (C_ij - sum_k<j L_ik L_jk) / L_jj, L_ii = sqrt(...).
    chol = [[None] * d for _ in range(d)]
    for i in range(d):
        for j in range(i + 1):
            value = covariance[i, j] - sum((chol[i][k] * chol[j][k] for k in range(j)), 0.0)
            chol[i][j] = jnp.sqrt(value) if i == j else value / chol[j][j]
    # Forward substitution L w = r.
    whitened = []
    for i in range(d):
        value = residual[i] - sum((chol[i][k] * whitened[k] for k in range(i)), 0.0)
        whitened.append(value / chol[i][i])
    quadratic = sum(w**2 for w in whitened)
    log_det = 2.0 * sum(jnp.log(chol[i][i]) for i in range(d))
    return quadratic + log_det


def increment_loss(
    sde: LatentSDE,
    batch: IncrementPairs,
    key: PRNGKeyArray | None = None,
    *,
    covariance_scale: float | int = 1.0,
    jitter: float | int = DEFAULT_JITTER,
) -> Float[Array, ""]:
    """Partial-evolution Gaussian likelihood loss, averaged over the batch.

        L_p = E[ r^T C^{-1} r + log det C ],
        r = z1 - z0 - mu(z0, c) dt,    C = lambda Sigma(z0, c) Sigma(z0, c)^T dt + eps I,

    with c the pair's condition (``batch.condition``; none for an unconditioned model).

    This is 2 x (negative log-likelihood of the one-step Euler-Maruyama Gaussian
    N(z0 + mu dt, C)) minus the constant d log(2 pi). lambda = ``covariance_scale`` (K for
    "ours" pairs, Theorem 1; 1 for baseline pairs and for validation on full-system pairs),
    eps = ``jitter`` (1e-4; 1e-5 for the SPDE), dt per sample.

    Args:
        sde: the model (acts in normalised coordinates; pass normalised pairs).
        batch: ``IncrementPairs`` with z0, z1 of shape ``(B, d)``, dt of shape ``(B,)`` and
            condition of shape ``(B, condition_dim)`` if the model is conditioned, else None.
        key: unused (the loss is deterministic).
        covariance_scale: lambda > 0.
        jitter: eps >= 0.

    Returns:
        The scalar mean over the batch.

    Raises:
        ValueError: shapes do not match, or the batch has a condition and the model none (or
            the reverse, or of another length); checked before any compute.
    """
    del key
    _check_scale_and_jitter(covariance_scale, jitter)
    if not isinstance(batch, IncrementPairs):  # a plain (z0, z1, dt[, condition]) tuple
        batch = IncrementPairs(*batch)
    z0, z1, dt = (jnp.asarray(a) for a in (batch.z0, batch.z1, batch.dt))
    if z0.ndim != 2 or z1.shape != z0.shape or dt.shape != z0.shape[:1]:
        raise ValueError(
            f"batch must hold z0, z1 of shape (B, d) and dt of shape (B,), got {z0.shape}, "
            f"{z1.shape}, {dt.shape}."
        )
    if z0.shape[1] != sde.latent_dim:
        raise ValueError(f"batch latents have d = {z0.shape[1]}, the model d = {sde.latent_dim}.")
    sde.check_condition(batch.condition, z0.shape[:1])
    if batch.condition is None:
        terms = jax.vmap(increment_nll_terms, in_axes=(None, 0, 0, 0, None, None))(
            sde, z0, z1, dt.astype(z0.dtype), covariance_scale, jitter
        )
    else:
        condition = jnp.asarray(batch.condition, z0.dtype)
        terms = jax.vmap(increment_nll_terms, in_axes=(None, 0, 0, 0, None, None, 0))(
            sde, z0, z1, dt.astype(z0.dtype), covariance_scale, jitter, condition
        )
    return jnp.mean(terms)


def increment_loss_fn(covariance_scale: float | int = 1.0, jitter: float | int = DEFAULT_JITTER):
    """``increment_loss`` with lambda and eps bound: a ``(model, batch, key) -> scalar``."""
    _check_scale_and_jitter(covariance_scale, jitter)
    return functools.partial(increment_loss, covariance_scale=covariance_scale, jitter=jitter)


def absolute_jitter(relative: float, increments: Float[ArrayLike, "n d"]) -> float:
    """eps of the covariance from a jitter ``relative`` to the data's noise:

        eps = max(relative * min_k Var(dz_k), 1e-5 * max_k Var(dz_k)),

    the smallest per-dimension variance of the training increments ``dz = z1 - z0`` (in the
    units the model sees). So eps never takes more than the fraction ``relative`` of any
    latent's increment variance, whatever the system size, patch size or pair duration (an
    absolute eps of 1e-4 in min-max units exceeded the whole one-sweep variance of an L = 64
    Curie-Weiss magnetisation), unless the latents' variances differ by more than
    ``1e-5 / relative``: then the float32 floor keeps the covariance's condition number below
    about 1e5 (a predator-prey closure variable with a tiny increment variance gave NaN losses
    without it). ``relative = 0`` gives 0.
    """
    if not isinstance(relative, numbers.Real) or not relative >= 0:
        raise ValueError(f"the relative jitter must be a real number >= 0, got {relative!r}.")
    dz = np.asarray(increments, np.float64)
    if dz.ndim != 2 or len(dz) < 2:
        raise ValueError(f"increments must be (n >= 2, d), got shape {dz.shape}.")
    if relative == 0:
        return 0.0
    variance = np.var(dz, axis=0)
    return float(max(relative * variance.min(), 1e-5 * variance.max()))


def default_covariance_scale(method: str, num_patches: int) -> float:
    """The reference's lambda for a kind of pairs: K for "ours" (Theorem 1), 1 for
    "baseline" and "patch" pairs and for true full-system pairs ("full")."""
    if method == "ours":
        return float(check_positive_int(num_patches, "num_patches"))
    if method in ("baseline", "patch", "full"):
        return 1.0
    raise ValueError(
        f"unknown pair method {method!r}; use one of ('ours', 'baseline', 'patch', 'full')."
    )


def reconstruction_loss(
    autoencoder: ClosureAutoencoder,
    batch: Shaped[Array, "B H W"],
    key: PRNGKeyArray | None = None,
) -> Float[Array, ""]:
    """Mean over the batch of the autoencoder's reconstruction loss of each configuration:
    binary cross-entropy from logits for spins, mean squared error for fields.

    Args:
        autoencoder: a ``ClosureAutoencoder`` with closure_dim > 0.
        batch: ``(B, *config_shape)`` configurations.
        key: unused.
    """
    del key
    return jnp.mean(jax.vmap(autoencoder.reconstruction_loss)(batch))


def _check_scale_and_jitter(covariance_scale, jitter):
    if isinstance(covariance_scale, numbers.Real) and not covariance_scale > 0:
        raise ValueError(
            f"covariance_scale (lambda) must be > 0, got {covariance_scale}; use K (the number "
            "of patches) for partial-evolution pairs and 1 for full-system pairs."
        )
    if not isinstance(jitter, numbers.Real) or not jitter >= 0:
        raise ValueError(f"jitter (eps) must be a real number >= 0, got {jitter!r}.")
