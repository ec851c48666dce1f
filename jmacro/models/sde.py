"""Latent Itô SDE with neural drift and diffusion, in normalised coordinates.

The macroscopic model is

    dz = mu(z, c) dt + Sigma(z, c) dW,   z in R^d,  W a d-dimensional Brownian motion,

with an optional condition vector c in R^k (``condition_dim = k``; e.g. a temperature) that
is constant along a trajectory. The networks see the concatenation ``concat(u, c)`` of the
normalised latent and the condition, so one model covers a family of dynamics. With
``condition_dim = 0`` (the default) there is no condition: mu(z), Sigma(z), and the networks,
their initialisation and every output are exactly those of an unconditioned model.

The networks act on *normalised* latents and time,

    u = (z - offset) / scale,           tau = t / time_scale,

so that they see O(1) inputs whatever the physical units; ``LatentNormaliser`` holds
``offset``, ``scale`` (shape ``(d,)``) and ``time_scale`` (a scalar) as non-trainable arrays
inside the model, so a saved model rolls out in physical units on its own. In normalised
coordinates the model is du = mu_u(u, c) dtau + Sigma_u(u, c) dW_tau; in physical units

    mu(z, c)    = scale * mu_u(u, c) / time_scale,
    Sigma(z, c) = diag(scale) Sigma_u(u, c) / sqrt(time_scale).

The condition c is NOT normalised: the model uses it as given, in every method. Give it in
O(1) units chosen by the caller (e.g. T / 1000 K, or 1 / (k_B T) in 1/eV), the same at
training and at rollout.

Diffusion parametrisations (``diffusion_mode``), each returning a ``(d, d)`` matrix (with a
condition the MLPs take d + k inputs, ``concat(u, c)``):

- ``"full"``: an arbitrary matrix from an MLP d-64-64-64-d^2 (the reference's "arbitrary");
- ``"diagonal"``: diag(softplus(MLP(u))), an MLP d-64-64-64-d with positive outputs;
- ``"constant_diagonal"``: diag(exp(log_sigma)), a learned constant vector;
- ``"constant"``: a learned constant d x d matrix.

The two constant modes ignore the condition (one Sigma for every c); use ``"full"`` or
``"diagonal"`` when the noise level depends on the condition.

Only Sigma Sigma^T is identifiable from data (Sigma R with R orthogonal gives the same law).
"""

from __future__ import annotations

import abc
import numbers
from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
from jaxtyping import Array, ArrayLike, Float, PRNGKeyArray

from jmacro._checks import check_positive_int
from jmacro.models.base import AbstractNonTrainable
from jmacro.models.onsager import ONSAGER_DEFAULTS, make_onsager_drift

DIFFUSION_MODES = ("full", "diagonal", "constant_diagonal", "constant")
DRIFT_MODES = ("mlp", "onsager")
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
    """Sigma(u, c): a ``(d, d)`` matrix for one normalised latent ``u`` of shape ``(d,)`` and,
    for a conditioned model, its condition ``c`` of shape ``(k,)``.

    ``LatentSDE`` calls ``diffusion_net(u)`` when it has no condition (``condition_dim = 0``),
    so a subclass written for unconditioned models may take ``u`` alone; it calls
    ``diffusion_net(u, c)`` otherwise.
    """

    @abc.abstractmethod
    def __call__(
        self, u: Float[Array, " d"], c: Float[Array, " k"] | None = None
    ) -> Float[Array, "d d"]:
        """The diffusion matrix at ``u`` (and ``c``)."""


def _net_input(u: Float[Array, " d"], c: Float[Array, " k"] | None) -> Float[Array, " m"]:
    """concat(u, c), or ``u`` itself without a condition (no op added: bit-identical)."""
    return u if c is None else jnp.concatenate([u, c.astype(u.dtype)])


class FullDiffusion(AbstractDiffusion):
    """Sigma(u, c) = reshape(MLP(concat(u, c)), (d, d)), an arbitrary (not triangular) matrix."""

    net: eqx.nn.MLP

    def __call__(
        self, u: Float[Array, " d"], c: Float[Array, " k"] | None = None
    ) -> Float[Array, "d d"]:
        return self.net(_net_input(u, c)).reshape(u.shape[0], u.shape[0])


class DiagonalDiffusion(AbstractDiffusion):
    """Sigma(u, c) = diag(softplus(MLP(concat(u, c)))).

    Softplus rather than exp keeps the output linear in the network for large values, so one
    outlier input cannot blow the noise up exponentially.
    """

    net: eqx.nn.MLP

    def __call__(
        self, u: Float[Array, " d"], c: Float[Array, " k"] | None = None
    ) -> Float[Array, "d d"]:
        return jnp.diag(jax.nn.softplus(self.net(_net_input(u, c))))


class ConstantDiagonalDiffusion(AbstractDiffusion):
    """Sigma = diag(exp(log_sigma)), independent of u (and of the condition c).

    Log-parametrised: the noise level of a macroscopic variable can span decades (e.g.
    sqrt(2/N) for Curie-Weiss), which a log parametrisation learns at a uniform rate.
    """

    log_sigma: Float[Array, " d"]

    def __call__(
        self, u: Float[Array, " d"], c: Float[Array, " k"] | None = None
    ) -> Float[Array, "d d"]:
        return jnp.diag(jnp.exp(self.log_sigma)).astype(u.dtype)


class ConstantDiffusion(AbstractDiffusion):
    """Sigma = a learned constant ``(d, d)`` matrix (independent of u and c).

    Initialised to the identity (the reference initialises all entries to 1, a rank-one
    matrix whose covariance is singular until training breaks the symmetry).
    """

    matrix: Float[Array, "d d"]

    def __call__(
        self, u: Float[Array, " d"], c: Float[Array, " k"] | None = None
    ) -> Float[Array, "d d"]:
        return self.matrix.astype(u.dtype)


def make_diffusion(
    mode: str,
    latent_dim: int,
    key: PRNGKeyArray,
    width_size: int = 64,
    depth: int = 3,
    condition_dim: int = 0,
) -> AbstractDiffusion:
    """Build a diffusion module for ``mode`` in ``DIFFUSION_MODES`` (MLPs (d+k)-width^depth-out,
    k = ``condition_dim``; the constant modes have no input)."""
    d = check_positive_int(latent_dim, "latent_dim")
    k = check_condition_dim(condition_dim)
    if mode == "full":
        return FullDiffusion(_mlp(d + k, d * d, width_size, depth, key))
    if mode == "diagonal":
        return DiagonalDiffusion(_mlp(d + k, d, width_size, depth, key))
    if mode == "constant_diagonal":
        return ConstantDiagonalDiffusion(jnp.zeros(d))
    if mode == "constant":
        return ConstantDiffusion(jnp.eye(d))
    raise ValueError(f"unknown diffusion mode {mode!r}; use one of {DIFFUSION_MODES}.")


def check_condition_dim(condition_dim) -> int:
    """``condition_dim`` as an int >= 0 (0: no condition), else ``ValueError``."""
    if (
        isinstance(condition_dim, bool)
        or not isinstance(condition_dim, numbers.Integral | np.integer)
        or condition_dim < 0
    ):
        raise ValueError(
            f"condition_dim must be an int >= 0 (0 for no condition), got {condition_dim!r}."
        )
    return int(condition_dim)


def _mlp(in_size: int, out_size: int, width_size: int, depth: int, key: PRNGKeyArray) -> eqx.nn.MLP:
    width_size = check_positive_int(width_size, "width_size")
    if isinstance(depth, bool) or not isinstance(depth, int) or depth < 0:
        raise ValueError(f"depth (number of hidden layers) must be an int >= 0, got {depth!r}.")
    return eqx.nn.MLP(in_size, out_size, width_size, depth, activation=jax.nn.relu, key=key)


# ---------------------------------------------------------------------------------- the SDE
class LatentSDE(eqx.Module):
    """du = drift(u, c) dtau + diffusion(u, c) dW_tau in normalised coordinates (module doc).

    Acts on ONE latent ``u`` of shape ``(d,)`` and, for a conditioned model, ONE condition
    ``c`` of shape ``(condition_dim,)``; batch with ``jax.vmap``. Every method checks, before
    any compute, that a condition is given exactly when ``condition_dim > 0`` and has length
    ``condition_dim``. The condition is used as given (never normalised).

    Attributes:
        drift_net: any callable module ``(d + k,) -> (d,)`` (an MLP by default), applied to
            ``concat(u, c)``; to ``u`` alone when k = 0.
        diffusion_net: an ``AbstractDiffusion``, ``(d,)[, (k,)] -> (d, d)``.
        normaliser: the non-trainable ``LatentNormaliser`` linking u, tau to z, t.
        condition_dim: k >= 0, the length of the condition vector (0: unconditioned, the
            default). Static: it is part of the structure, not a parameter.
    """

    drift_net: Callable[[Array], Array]
    diffusion_net: AbstractDiffusion
    normaliser: LatentNormaliser
    condition_dim: int = eqx.field(static=True, default=0)

    def __check_init__(self):
        if not isinstance(self.diffusion_net, AbstractDiffusion):
            raise TypeError(
                f"diffusion_net must be an AbstractDiffusion, got {type(self.diffusion_net)}."
            )
        k = check_condition_dim(self.condition_dim)
        expected = self.latent_dim + k
        nets = [("drift_net", self.drift_net)]
        nets += [("diffusion_net.net", getattr(self.diffusion_net, "net", None))]
        for name, net in nets:
            if isinstance(net, eqx.nn.MLP) and net.in_size not in (expected, "scalar"):
                raise ValueError(
                    f"{name} takes {net.in_size} inputs, but concat(u, c) has d + "
                    f"condition_dim = {self.latent_dim} + {k} = {expected}."
                )

    @property
    def latent_dim(self) -> int:
        return self.normaliser.latent_dim

    # normalised coordinates (what the loss and the integrators use)
    def drift(
        self, u: Float[Array, " d"], c: Float[ArrayLike, " k"] | None = None
    ) -> Float[Array, " d"]:
        """mu_u(u, c), shape ``(d,)``; ``c`` of shape ``(condition_dim,)`` or ``None``."""
        c = self._check_inputs(u, c)
        return self.drift_net(_net_input(u, c))

    def diffusion(
        self, u: Float[Array, " d"], c: Float[ArrayLike, " k"] | None = None
    ) -> Float[Array, "d d"]:
        """Sigma_u(u, c), shape ``(d, d)`` in every diffusion mode."""
        c = self._check_inputs(u, c)
        # Without a condition, call with u alone: user diffusions may not take a c.
        return self.diffusion_net(u) if c is None else self.diffusion_net(u, c)

    # physical units (for comparisons with known dynamics)
    def physical_drift(
        self, z: Float[Array, " d"], c: Float[ArrayLike, " k"] | None = None
    ) -> Float[Array, " d"]:
        """mu(z, c) = scale * mu_u(u, c) / time_scale, in latent units per unit physical time
        (c as given: it is not normalised)."""
        norm = self.normaliser
        return norm.scale * self.drift(norm.normalise(z), c) / norm.time_scale

    def physical_diffusion(
        self, z: Float[Array, " d"], c: Float[ArrayLike, " k"] | None = None
    ) -> Float[Array, "d d"]:
        """Sigma(z, c) = diag(scale) Sigma_u(u, c) / sqrt(time_scale)."""
        norm = self.normaliser
        sigma = self.diffusion(norm.normalise(z), c)
        return norm.scale[:, None] * sigma / jnp.sqrt(norm.time_scale)

    def physical_covariance_rate(
        self, z: Float[Array, " d"], c: Float[ArrayLike, " k"] | None = None
    ) -> Float[Array, "d d"]:
        """Sigma(z, c) Sigma(z, c)^T in physical units: the covariance of dz per unit time."""
        sigma = self.physical_diffusion(z, c)
        return sigma @ sigma.T

    def with_normaliser(self, normaliser: LatentNormaliser) -> LatentSDE:
        """The same networks with another normaliser (e.g. statistics of the training data)."""
        if normaliser.latent_dim != self.latent_dim:
            raise ValueError(
                f"normaliser has d = {normaliser.latent_dim}, the model d = {self.latent_dim}."
            )
        return eqx.tree_at(lambda m: m.normaliser, self, normaliser)

    def check_condition(self, c, batch_shape: tuple[int, ...] = ()) -> None:
        """Raise ``ValueError`` unless ``c`` fits this model: ``None`` for an unconditioned
        model, else an array of shape ``(*batch_shape, condition_dim)``."""
        k = self.condition_dim
        if c is None:
            if k:
                raise ValueError(
                    f"this model is conditioned (condition_dim = {k}) and needs a condition "
                    f"vector c of shape {(*batch_shape, k)}; got none."
                )
            return
        if not k:
            raise ValueError(
                f"this model is unconditioned (condition_dim = 0) but a condition of shape "
                f"{np.shape(c)} was given; drop it, or build the model with "
                "condition_dim = len(c) (make_latent_sde(..., condition_dim=...))."
            )
        if tuple(np.shape(c)) != (*batch_shape, k):
            raise ValueError(
                f"the condition must have shape {(*batch_shape, k)} (condition_dim = {k}), got "
                f"{np.shape(c)}."
            )

    def _check_inputs(self, u, c):
        if u.shape != (self.latent_dim,):
            raise ValueError(
                f"expected one latent of shape ({self.latent_dim},), got {u.shape}; "
                "the model acts on one sample, use jax.vmap for batches."
            )
        self.check_condition(c)
        return None if c is None else jnp.asarray(c)


def make_latent_sde(
    key: PRNGKeyArray,
    latent_dim: int,
    diffusion_mode: str = "full",
    width_size: int = 64,
    depth: int = 3,
    condition_dim: int = 0,
    drift_mode: str = "mlp",
    drift_options: dict | None = None,
) -> LatentSDE:
    """Reference architecture: drift MLP (d+k)-64-64-64-d (ReLU) and the chosen diffusion,
    k = ``condition_dim`` (0: no condition; the networks, and their initialisation from
    ``key``, are then exactly those of the unconditioned model).

    ``drift_mode="onsager"`` replaces the drift MLP by a stochastic OnsagerNet
    (``jmacro.models.onsager.OnsagerDrift``: (M + W) g + alpha g + f, g = -grad V, the
    condition embedded by its own MLP), with ``drift_options`` among ``embedding_dim``,
    ``alpha``, ``beta`` (defaults ``ONSAGER_DEFAULTS``); the diffusion is unchanged.

    The normaliser starts as the identity; set data statistics with ``with_normaliser``.
    All arguments but ``key`` are JSON-friendly (they are the checkpoint's hyperparameters:
    ``model_hyperparams("latent_sde", latent_dim=6, condition_dim=1)`` rebuilds a
    temperature-conditioned model).
    """
    d = check_positive_int(latent_dim, "latent_dim")
    k = check_condition_dim(condition_dim)
    if diffusion_mode not in DIFFUSION_MODES:
        raise ValueError(
            f"unknown diffusion mode {diffusion_mode!r}; use one of {DIFFUSION_MODES}."
        )
    if drift_mode not in DRIFT_MODES:
        raise ValueError(f"unknown drift mode {drift_mode!r}; use one of {DRIFT_MODES}.")
    options = dict(drift_options or {})
    if drift_mode == "mlp" and options:
        raise ValueError(f"drift_options {sorted(options)} are for drift_mode='onsager' only.")
    if set(options) - set(ONSAGER_DEFAULTS):
        raise ValueError(
            f"unknown drift_options {sorted(set(options) - set(ONSAGER_DEFAULTS))}; the "
            f"Onsager drift takes {sorted(ONSAGER_DEFAULTS)}."
        )
    key_drift, key_diffusion = jr.split(key)
    if drift_mode == "onsager":
        options = {**ONSAGER_DEFAULTS, **options}
        drift_net = make_onsager_drift(key_drift, d, k, width_size, depth, **options)
    else:
        drift_net = _mlp(d + k, d, width_size, depth, key_drift)
    return LatentSDE(
        drift_net=drift_net,
        diffusion_net=make_diffusion(diffusion_mode, d, key_diffusion, width_size, depth, k),
        normaliser=LatentNormaliser.identity(d),
        condition_dim=k,
    )
