"""A stochastic OnsagerNet drift, optionally conditioned (e.g. on temperature).

The drift of ``LatentSDE`` in normalised coordinates u (shape ``(d,)``), at a condition c
(shape ``(k,)``, e.g. ``(T - 100 K) / 2900 K``; k = 0 for none):

    e       = E(c)                                  an embedding MLP k -> embedding_dim (tanh)
    V(u, c) = U(concat(u, e)) + beta |u|^2          a learned potential, confined by beta > 0
    g       = -grad_u V(u, c)                       the thermodynamic force, shape (d,)
    M       = L L^T,   L = reshape(N_L(concat(u, e)), (d, d))      symmetric positive semidefinite
    W       = A - A^T, A = reshape(N_W(concat(u, e)), (d, d))      antisymmetric
    mu_u    = (M + W) g + alpha g + f(e)            f an MLP of the embedding alone

(Onsager's form: a dissipative part (M + alpha I) g, a conservative part W g, an external force
f.) With alpha > 0 the dissipative operator M + alpha I is positive definite, and since U is a
tanh network (its gradient is bounded) V grows like beta |u|^2: far from the data
u . (M + W + alpha I) g <= -2 alpha beta |u|^2 + O(|u|), so the drift pulls back and rollouts
cannot run away. The defaults alpha = 0.1 and beta = 0.1 are the reference's.

Shapes: the module is called by ``LatentSDE.drift`` on ``x = concat(u, c)``, shape
``(d + k,)``, and returns ``(d,)``; it acts on ONE sample (``jax.vmap`` for batches). The
networks use tanh (U must be differentiable everywhere; grad U enters the drift). Build one
with ``make_onsager_drift`` or through ``make_latent_sde(..., drift_mode="onsager")``.
"""

from __future__ import annotations

import math

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
from jaxtyping import Array, Float, PRNGKeyArray

ONSAGER_DEFAULTS = {"embedding_dim": 16, "alpha": 0.1, "beta": 0.1}
"""Default ``drift_options`` of ``make_latent_sde(drift_mode="onsager")``."""


class OnsagerDrift(eqx.Module):
    """mu_u(u, c) = (M + W) g + alpha g + f (module docstring), called on concat(u, c).

    Attributes:
        potential: MLP (d + E) -> scalar, U of V = U + beta |u|^2.
        matrices: MLP (d + E) -> 2 d^2, the entries of L (first d^2) and A (last d^2).
        force: MLP E -> d, the force f(e); for k = 0, a learned constant ``(d,)`` vector.
        embedding: MLP k -> E of the condition, or None for k = 0 (then E = 0).
        latent_dim: d (static).
        condition_dim: k (static).
        alpha: weight of the identity in the dissipative operator (static, > 0).
        beta: confinement of the potential (static, > 0).
    """

    potential: eqx.nn.MLP
    matrices: eqx.nn.MLP
    force: eqx.nn.MLP | Float[Array, " d"]
    embedding: eqx.nn.MLP | None
    latent_dim: int = eqx.field(static=True)
    condition_dim: int = eqx.field(static=True)
    alpha: float = eqx.field(static=True)
    beta: float = eqx.field(static=True)

    def embed(self, c: Float[Array, " k"]) -> Float[Array, " E"]:
        """e = E(c), shape ``(embedding_dim,)``; empty for an unconditioned drift."""
        return c[:0] if self.embedding is None else self.embedding(c)

    def energy(self, u: Float[Array, " d"], e: Float[Array, " E"]) -> Float[Array, ""]:
        """V(u, c) = U(concat(u, e)) + beta |u|^2 (normalised units)."""
        return self.potential(jnp.concatenate([u, e])) + self.beta * jnp.sum(u * u)

    def parts(self, x: Float[Array, " m"]) -> tuple[Array, Array, Array, Array]:
        """(M, W, g, f) at ``x = concat(u, c)``: ``(d, d)``, ``(d, d)``, ``(d,)``, ``(d,)``."""
        d = self.latent_dim
        if x.shape != (d + self.condition_dim,):
            raise ValueError(
                f"the Onsager drift takes concat(u, c) of length d + k = "
                f"{d} + {self.condition_dim}, got shape {x.shape}."
            )
        u, e = x[:d], self.embed(x[d:])
        g = -jax.grad(self.energy)(u, e)
        entries = self.matrices(jnp.concatenate([u, e]))
        lower = entries[: d * d].reshape(d, d)
        skew = entries[d * d :].reshape(d, d)
        force = self.force if self.embedding is None else self.force(e)
        return lower @ lower.T, skew - skew.T, g, force

    def __call__(self, x: Float[Array, " m"]) -> Float[Array, " d"]:
        mobility, rotation, g, force = self.parts(x)
        return mobility @ g + rotation @ g + self.alpha * g + force


def make_onsager_drift(
    key: PRNGKeyArray,
    latent_dim: int,
    condition_dim: int = 0,
    width_size: int = 64,
    depth: int = 3,
    embedding_dim: int = 16,
    alpha: float = 0.1,
    beta: float = 0.1,
) -> OnsagerDrift:
    """An ``OnsagerDrift`` with tanh MLPs of ``depth`` hidden layers of ``width_size``: U
    (d + E) -> 1, the matrices (d + E) -> 2 d^2, the force E -> d, and for k > 0 the
    embedding k -> E (one hidden layer of E). Initial scale: the matrix network's last layer
    is divided by sqrt(d), so M + W starts O(1) whatever d; the force starts at zero."""
    for name, value in (("latent_dim", latent_dim), ("width_size", width_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an int >= 1, got {value!r}.")
    if isinstance(condition_dim, bool) or not isinstance(condition_dim, int) or condition_dim < 0:
        raise ValueError(f"condition_dim must be an int >= 0, got {condition_dim!r}.")
    if isinstance(depth, bool) or not isinstance(depth, int) or depth < 0:
        raise ValueError(f"depth must be an int >= 0, got {depth!r}.")
    if condition_dim and (not isinstance(embedding_dim, int) or embedding_dim < 1):
        raise ValueError(f"embedding_dim must be an int >= 1, got {embedding_dim!r}.")
    for name, value in (("alpha", alpha), ("beta", beta)):
        if not 0 < value < math.inf:
            raise ValueError(f"{name} must be finite and > 0, got {value!r}.")
    d, k = latent_dim, condition_dim
    size = embedding_dim if k else 0
    keys = jr.split(key, 4)

    def mlp(n_in, n_out, key, width=width_size, layers=depth):
        return eqx.nn.MLP(n_in, n_out, width, layers, activation=jnp.tanh, key=key)

    matrices = mlp(d + size, 2 * d * d, keys[1])
    matrices = eqx.tree_at(
        lambda m: (m.layers[-1].weight, m.layers[-1].bias),
        matrices,
        (matrices.layers[-1].weight / math.sqrt(d), matrices.layers[-1].bias / math.sqrt(d)),
    )
    if k:
        force = mlp(size, d, keys[2])
        force = eqx.tree_at(
            lambda m: (m.layers[-1].weight, m.layers[-1].bias),
            force,
            (jnp.zeros_like(force.layers[-1].weight), jnp.zeros_like(force.layers[-1].bias)),
        )
        embedding = mlp(k, size, keys[3], width=size, layers=1)
    else:
        force, embedding = jnp.zeros(d), None
    return OnsagerDrift(
        potential=mlp(d + size, "scalar", keys[0]),
        matrices=matrices,
        force=force,
        embedding=embedding,
        latent_dim=d,
        condition_dim=k,
        alpha=float(alpha),
        beta=float(beta),
    )


__all__ = ["ONSAGER_DEFAULTS", "OnsagerDrift", "make_onsager_drift"]
