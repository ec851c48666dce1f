"""Latent Itô SDE with neural drift and diffusion, in normalised coordinates.

The macroscopic model is

    dz = mu(z) dt + Sigma(z) dW,        z in R^d,  W a d-dimensional Brownian motion.

The networks act on *normalised* latents and time,

    u = (z - offset) / scale,           tau = t / time_scale,

so that they see O(1) inputs whatever the physical units; ``LatentNormaliser`` holds
``offset``, ``scale`` (shape ``(d,)``) and ``time_scale`` (a scalar) as non-trainable arrays
inside the model, so a saved model rolls out in physical units on its own. In normalised
coordinates the model is du = mu_u(u) dtau + Sigma_u(u) dW_tau; in physical units

    mu(z)    = scale * mu_u(u) / time_scale,
    Sigma(z) = diag(scale) Sigma_u(u) / sqrt(time_scale).

Diffusion parametrisations (``diffusion_mode``), each returning a ``(d, d)`` matrix:

- ``"full"``: an arbitrary matrix from an MLP d-64-64-64-d^2 (the reference's "arbitrary");
- ``"diagonal"``: diag(softplus(MLP(u))), an MLP d-64-64-64-d with positive outputs;
- ``"constant_diagonal"``: diag(exp(log_sigma)), a learned constant vector;
- ``"constant"``: a learned constant d x d matrix.

Only Sigma Sigma^T is identifiable from data (Sigma R with R orthogonal gives the same law).
"""

from __future__ import annotations

import abc
from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
from jaxtyping import Array, ArrayLike, Float, PRNGKeyArray

from jmacro._checks import check_positive_int
from jmacro.models.base import AbstractNonTrainable

DIFFUSION_MODES = ("full", "diagonal", "constant_diagonal", "constant")
NORMALISATION_METHODS = ("standard", "minmax")


# ------------------------------------------------------------------------------- normaliser
class LatentNormaliser(AbstractNonTrainable):
    """Affine normalisation of latents and time, u = (z - offset) / scale, tau = t / time_scale.

    Non-trainable (the training loop freezes it); serialised with the model.

    Attributes:
        offset: ``(d,)`` subtracted from z.
        scale: ``(d,)`` positive divisor of z - offset.
        time_scale: positive scalar, the physical duration of one unit of model time.
    """

    offset: Float[Array, " d"]
    scale: Float[Array, " d"]
    time_scale: Float[Array, ""]

    def __init__(
        self, offset: Float[ArrayLike, " d"], scale: Float[ArrayLike, " d"], time_scale=1.0
    ):
        offset = jnp.asarray(offset, jnp.float32)
        scale = jnp.asarray(scale, jnp.float32)
        time_scale = jnp.asarray(time_scale, jnp.float32)
        if offset.ndim != 1 or scale.shape != offset.shape:
            raise ValueError(
                f"offset and scale must be vectors of the same length d, got shapes "
                f"{offset.shape} and {scale.shape}."
            )
        if time_scale.ndim != 0:
            raise ValueError(f"time_scale must be a scalar, got shape {time_scale.shape}.")
        if not isinstance(scale, jax.core.Tracer):
            if not (np.all(np.isfinite(scale)) and np.all(np.asarray(scale) > 0)):
                raise ValueError(
                    f"scale must be finite and > 0 in every latent dimension, got {scale}; a "
                    "latent that is constant over the data cannot be normalised (drop it or "
                    "give its scale by hand)."
                )
            if not (np.isfinite(time_scale) and time_scale > 0):
                raise ValueError(f"time_scale must be finite and > 0, got {time_scale}.")
        self.offset, self.scale, self.time_scale = offset, scale, time_scale

    @classmethod
    def identity(cls, latent_dim: int) -> LatentNormaliser:
        """u = z, tau = t."""
        latent_dim = check_positive_int(latent_dim, "latent_dim")
        return cls(jnp.zeros(latent_dim), jnp.ones(latent_dim), 1.0)

    @classmethod
    def from_data(
        cls,
        latents: Float[ArrayLike, "n d"],
        time_scale: float | Float[ArrayLike, ""] = 1.0,
        method: str = "standard",
    ) -> LatentNormaliser:
        """Statistics of a sample of latents ``(n, d)``.

        ``method="standard"``: offset = mean, scale = standard deviation (the reference's
        predator-prey choice). ``method="minmax"``: offset = min, scale = max - min (the
        reference's Ising choice, there computed on validation latents, with magnetisation
        left unscaled; override single entries with ``eqx.tree_at`` if needed).
        """
        z = np.asarray(latents, np.float64)
        if z.ndim != 2 or z.shape[0] < 2:
            raise ValueError(f"latents must have shape (n >= 2, d), got {z.shape}.")
        if method == "standard":
            offset, scale = z.mean(axis=0), z.std(axis=0)
        elif method == "minmax":
            offset, scale = z.min(axis=0), z.max(axis=0) - z.min(axis=0)
        else:
            raise ValueError(
                f"unknown normalisation method {method!r}; use one of {NORMALISATION_METHODS}."
            )
        return cls(offset, scale, time_scale)

    @property
    def latent_dim(self) -> int:
        return self.offset.shape[0]

    def normalise(self, z: Float[Array, "*batch d"]) -> Float[Array, "*batch d"]:
        """u = (z - offset) / scale."""
        return (z - self.offset) / self.scale

    def denormalise(self, u: Float[Array, "*batch d"]) -> Float[Array, "*batch d"]:
        """z = offset + scale * u."""
        return self.offset + self.scale * u


# -------------------------------------------------------------------------------- diffusion
class AbstractDiffusion(eqx.Module):
    """Sigma(u): a ``(d, d)`` matrix for one normalised latent ``u`` of shape ``(d,)``."""

    @abc.abstractmethod
    def __call__(self, u: Float[Array, " d"]) -> Float[Array, "d d"]:
        """The diffusion matrix at ``u``."""


class FullDiffusion(AbstractDiffusion):
    """Sigma(u) = reshape(MLP(u), (d, d)), an arbitrary (not triangular) matrix."""

    net: eqx.nn.MLP

    def __call__(self, u: Float[Array, " d"]) -> Float[Array, "d d"]:
        return self.net(u).reshape(u.shape[0], u.shape[0])


class DiagonalDiffusion(AbstractDiffusion):
    """Sigma(u) = diag(softplus(MLP(u))).

    Softplus rather than exp keeps the output linear in the network for large values, so one
    outlier input cannot blow the noise up exponentially.
    """

    net: eqx.nn.MLP

    def __call__(self, u: Float[Array, " d"]) -> Float[Array, "d d"]:
        return jnp.diag(jax.nn.softplus(self.net(u)))


class ConstantDiagonalDiffusion(AbstractDiffusion):
    """Sigma = diag(exp(log_sigma)), independent of u.

    Log-parametrised: the noise level of a macroscopic variable can span decades (e.g.
    sqrt(2/N) for Curie-Weiss), which a log parametrisation learns at a uniform rate.
    """

    log_sigma: Float[Array, " d"]

    def __call__(self, u: Float[Array, " d"]) -> Float[Array, "d d"]:
        return jnp.diag(jnp.exp(self.log_sigma)).astype(u.dtype)


class ConstantDiffusion(AbstractDiffusion):
    """Sigma = a learned constant ``(d, d)`` matrix.

    Initialised to the identity (the reference initialises all entries to 1, a rank-one
    matrix whose covariance is singular until training breaks the symmetry).
    """

    matrix: Float[Array, "d d"]

    def __call__(self, u: Float[Array, " d"]) -> Float[Array, "d d"]:
        return self.matrix.astype(u.dtype)


def make_diffusion(
    mode: str, latent_dim: int, key: PRNGKeyArray, width_size: int = 64, depth: int = 3
) -> AbstractDiffusion:
    """Build a diffusion module for ``mode`` in ``DIFFUSION_MODES`` (MLPs d-width^depth-out)."""
    d = check_positive_int(latent_dim, "latent_dim")
    if mode == "full":
        return FullDiffusion(_mlp(d, d * d, width_size, depth, key))
    if mode == "diagonal":
        return DiagonalDiffusion(_mlp(d, d, width_size, depth, key))
    if mode == "constant_diagonal":
        return ConstantDiagonalDiffusion(jnp.zeros(d))
    if mode == "constant":
        return ConstantDiffusion(jnp.eye(d))
    raise ValueError(f"unknown diffusion mode {mode!r}; use one of {DIFFUSION_MODES}.")


def _mlp(in_size: int, out_size: int, width_size: int, depth: int, key: PRNGKeyArray) -> eqx.nn.MLP:
    width_size = check_positive_int(width_size, "width_size")
    if isinstance(depth, bool) or not isinstance(depth, int) or depth < 0:
        raise ValueError(f"depth (number of hidden layers) must be an int >= 0, got {depth!r}.")
    return eqx.nn.MLP(in_size, out_size, width_size, depth, activation=jax.nn.relu, key=key)


# ---------------------------------------------------------------------------------- the SDE
class LatentSDE(eqx.Module):
    """du = drift(u) dtau + diffusion(u) dW_tau in normalised coordinates (see module doc).

    Acts on ONE latent; batch with ``jax.vmap``.

    Attributes:
        drift_net: any callable module ``(d,) -> (d,)`` (an MLP by default).
        diffusion_net: an ``AbstractDiffusion``, ``(d,) -> (d, d)``.
        normaliser: the non-trainable ``LatentNormaliser`` linking u, tau to z, t.
    """

    drift_net: Callable[[Array], Array]
    diffusion_net: AbstractDiffusion
    normaliser: LatentNormaliser

    def __check_init__(self):
        if not isinstance(self.diffusion_net, AbstractDiffusion):
            raise TypeError(
                f"diffusion_net must be an AbstractDiffusion, got {type(self.diffusion_net)}."
            )

    @property
    def latent_dim(self) -> int:
        return self.normaliser.latent_dim

    # normalised coordinates (what the loss and the integrators use)
    def drift(self, u: Float[Array, " d"]) -> Float[Array, " d"]:
        """mu_u(u), shape ``(d,)``."""
        self._check_latent(u)
        return self.drift_net(u)

    def diffusion(self, u: Float[Array, " d"]) -> Float[Array, "d d"]:
        """Sigma_u(u), shape ``(d, d)`` in every diffusion mode."""
        self._check_latent(u)
        return self.diffusion_net(u)

    # physical units (for comparisons with known dynamics)
    def physical_drift(self, z: Float[Array, " d"]) -> Float[Array, " d"]:
        """mu(z) = scale * mu_u(u) / time_scale, in latent units per unit physical time."""
        norm = self.normaliser
        return norm.scale * self.drift(norm.normalise(z)) / norm.time_scale

    def physical_diffusion(self, z: Float[Array, " d"]) -> Float[Array, "d d"]:
        """Sigma(z) = diag(scale) Sigma_u(u) / sqrt(time_scale)."""
        norm = self.normaliser
        sigma = self.diffusion(norm.normalise(z))
        return norm.scale[:, None] * sigma / jnp.sqrt(norm.time_scale)

    def physical_covariance_rate(self, z: Float[Array, " d"]) -> Float[Array, "d d"]:
        """Sigma(z) Sigma(z)^T in physical units: the covariance of dz per unit time."""
        sigma = self.physical_diffusion(z)
        return sigma @ sigma.T

    def with_normaliser(self, normaliser: LatentNormaliser) -> LatentSDE:
        """The same networks with another normaliser (e.g. statistics of the training data)."""
        if normaliser.latent_dim != self.latent_dim:
            raise ValueError(
                f"normaliser has d = {normaliser.latent_dim}, the model d = {self.latent_dim}."
            )
        return eqx.tree_at(lambda m: m.normaliser, self, normaliser)

    def _check_latent(self, u):
        if u.shape != (self.latent_dim,):
            raise ValueError(
                f"expected one latent of shape ({self.latent_dim},), got {u.shape}; "
                "the model acts on one sample, use jax.vmap for batches."
            )


def make_latent_sde(
    key: PRNGKeyArray,
    latent_dim: int,
    diffusion_mode: str = "full",
    width_size: int = 64,
    depth: int = 3,
) -> LatentSDE:
    """Reference architecture: drift MLP d-64-64-64-d (ReLU) and the chosen diffusion.

    The normaliser starts as the identity; set data statistics with ``with_normaliser``.
    All arguments but ``key`` are JSON-friendly (they are the checkpoint's hyperparameters).
    """
    d = check_positive_int(latent_dim, "latent_dim")
    if diffusion_mode not in DIFFUSION_MODES:
        raise ValueError(
            f"unknown diffusion mode {diffusion_mode!r}; use one of {DIFFUSION_MODES}."
        )
    key_drift, key_diffusion = jr.split(key)
    return LatentSDE(
        drift_net=_mlp(d, d, width_size, depth, key_drift),
        diffusion_net=make_diffusion(diffusion_mode, d, key_diffusion, width_size, depth),
        normaliser=LatentNormaliser.identity(d),
    )
