"""Stochastic predator-prey reaction-diffusion SPDE in 1D (REFERENCE.md 2.4).

Two fields, prey u and predator v, on n cell centres x_i = (i + 1/2) / n of (0, 1)::

    du = [u (1 - u - v) + D lap(u)] dt + sigma dW_u,
    dv = [a v (u - b)   +   lap(v)] dt + sigma dW_v,

with Neumann (replicate) boundaries: the value beyond each end equals the end cell's own value.
A state is ONE float32 array of shape ``(n, 2)``: axis 0 is the cell, axis 1 the species
``(u, v)`` (the layout of the field autoencoder). Batch with ``jax.vmap``.

Two scalings of the Laplacian and the noise (``PredatorPrey.scaling``):

- ``"lattice"`` (the reference's, default): lap(f)_i = f_{i-1} - 2 f_i + f_{i+1} (no 1/dx^2),
  and the noise increment of a cell over one step is sigma sqrt(dt) N(0, 1). Time and space are
  in lattice units: the model does not converge as n grows; n is part of the model.
- ``"physical"``: lap(f)_i = (f_{i-1} - 2 f_i + f_{i+1}) / dx^2 and the noise increment is
  sigma sqrt(dt / dx) N(0, 1), dx = 1/n: a space-time white noise discretised on cells, so that
  refining n approximates one continuum SPDE. Explicit time stepping then needs
  dt <= dx^2 / (2 max(1, D)): about 1.2e-5 at n = 200.

Time stepping (``jmacro.systems._spde``, which knows no equation): Euler-Maruyama (default,
the reference) or the stochastic Heun scheme (predictor-corrector, deterministic order 2; for
this additive noise it converges to the Itô solution). Noise is independent across cells,
species and steps. This file holds the physics: drift, noise amplitude, stability limit and the
reference initial condition.

Boundaries for patches: ``drift``/``step`` take optional ``ghosts``, a ``(2, 2)`` array whose
row 0 holds the (frozen) values beyond the left end and row 1 those beyond the right end, per
species, and ``neumann``, a ``(2,)`` bool array: True for a side that replicates the evolving
field's own current edge cell instead (a physical end). ``ghosts=None`` means Neumann on both
sides. Partial evolution (``jmacro.scale.partial`` with ``jmacro.geometry.Segments1D``) passes a
``Ghosts`` boundary: frozen neighbours inside the line and Neumann at the physical ends.
"""

from __future__ import annotations

from typing import ClassVar, Literal

import equinox as eqx
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Bool, Float, PRNGKeyArray

from jmacro._checks import is_concrete
from jmacro.geometry import cell_centres
from jmacro.systems._spde import AbstractSPDE, laplacian_padded, pad_fields

Scaling = Literal["lattice", "physical"]
Method = Literal["euler_maruyama", "heun"]
NUM_SPECIES = 2


def initial_condition(
    num_cells: int, k: float | Float[ArrayLike, ""], m: float | Float[ArrayLike, ""]
) -> Float[Array, "n 2"]:
    """The reference initial condition u = m + k cos(10 pi x), v = (1 - m) - k cos(10 pi x).

    ``k`` and ``m`` may be traced (vmap over them); returns float32 ``(num_cells, 2)``. The
    reference trains on k ~ U(0.05, 0.15), m ~ U(0.45, 0.55) and tests on the 3 x 3 grid
    k in {0.05, 0.1, 0.15} x m in {0.45, 0.5, 0.55}.
    """
    wave = jnp.asarray(k, jnp.float32) * jnp.cos(10.0 * jnp.pi * cell_centres(num_cells))
    m = jnp.asarray(m, jnp.float32)
    return jnp.stack([m + wave, (1.0 - m) - wave], axis=-1)


def _as_param(value, name: str, minimum: float | None = None, strict: bool = False):
    if is_concrete(value):
        arr = np.asarray(value)
        if not np.all(np.isfinite(arr)):
            raise ValueError(f"{name} must be finite, got {arr!r}.")
        if minimum is not None and (np.any(arr <= minimum) if strict else np.any(arr < minimum)):
            op = ">" if strict else ">="
            raise ValueError(f"{name} must be {op} {minimum}, got {arr!r}.")
    return jnp.asarray(value, jnp.float32)


# ---------------------------------------------------------------------------------- system
class PredatorPrey(AbstractSPDE):
    """The stochastic predator-prey SPDE on one 1D field ``(n, 2)`` (see the module docstring).

    du = [u (1 - u - v) + D lap(u)] dt + sigma dW_u,   dv = [a v (u - b) + lap(v)] dt + sigma dW_v

    Attributes:
        a: predator growth rate (reference 3). Float32 scalar array: vmap over it if wanted.
        b: prey level at which predators break even (reference 0.4).
        diffusion: D >= 0, the prey diffusion coefficient (reference 0; predators diffuse
            with coefficient 1).
        sigma: noise amplitude >= 0 (reference 0.02).
        dt: time step > 0 (reference 0.01; 3000 steps per trajectory).
        scaling: ``"lattice"`` (reference: no 1/dx^2, noise sigma sqrt(dt)) or ``"physical"``
            (lap / dx^2, noise sigma sqrt(dt / dx), dx = 1/n). Static.
        method: ``"euler_maruyama"`` (reference) or ``"heun"``. Static.

    Example::

        system = PredatorPrey()
        x0 = initial_condition(200, k=0.1, m=0.5)
        path = jax.jit(lambda x, k: system.simulate(x, k, 3000, 10))(x0, jr.key(0))
        # (301, 200, 2); many trajectories: jax.vmap, or jmacro.simulate.trajectories.
    """

    a: Float[Array, ""]
    b: Float[Array, ""]
    diffusion: Float[Array, ""]
    sigma: Float[Array, ""]
    dt: Float[Array, ""]
    scaling: str = eqx.field(static=True)
    method: str = eqx.field(static=True)
    num_species: ClassVar[int] = NUM_SPECIES

    def __init__(
        self,
        a=3.0,
        b=0.4,
        diffusion=0.0,
        sigma=0.02,
        dt=0.01,
        scaling: Scaling = "lattice",
        method: Method = "euler_maruyama",
    ):
        if scaling not in ("lattice", "physical"):
            raise ValueError(f"scaling must be 'lattice' or 'physical', got {scaling!r}.")
        if method not in ("euler_maruyama", "heun"):
            raise ValueError(f"method must be 'euler_maruyama' or 'heun', got {method!r}.")
        self.a = _as_param(a, "a")
        self.b = _as_param(b, "b")
        self.diffusion = _as_param(diffusion, "diffusion (D)", minimum=0.0)
        self.sigma = _as_param(sigma, "sigma", minimum=0.0)
        self.dt = _as_param(dt, "dt", minimum=0.0, strict=True)
        self.scaling = scaling
        self.method = method

    # ------------------------------------------------------------------ equation
    def _spacing(self, fields, dx):
        if dx is None:
            return 1.0 / fields.shape[0]
        return dx

    def drift(
        self,
        fields: Float[Array, "n 2"],
        ghosts: Float[Array, "2 2"] | None = None,
        *,
        neumann: Bool[ArrayLike, "2"] | None = None,
        dx: float | Float[ArrayLike, ""] | None = None,
    ) -> Float[Array, "n 2"]:
        """Deterministic right-hand side ``(u (1-u-v) + D lap u, a v (u-b) + lap v)``, ``(n, 2)``.

        Args:
            fields: ``(n, 2)``.
            ghosts, neumann: boundary values, as in ``pad_fields`` (default Neumann).
            dx: cell width for ``"physical"`` scaling; default 1/n. A patch of a larger field
                must pass the large field's 1/n.
        """
        padded = pad_fields(fields, ghosts, neumann)
        lap = laplacian_padded(padded)
        if self.scaling == "physical":
            lap = lap / jnp.square(self._spacing(fields, dx))
        u, v = fields[:, 0], fields[:, 1]
        du = u * (1.0 - u - v) + self.diffusion * lap[:, 0]
        dv = self.a * v * (u - self.b) + lap[:, 1]
        return jnp.stack([du, dv], axis=-1)

    def noise_scale(
        self, num_cells: int, dx: float | Float[ArrayLike, ""] | None = None
    ) -> Float[Array, ""]:
        """g in ``sigma_eff dW``: sigma (lattice) or sigma / sqrt(dx) (physical)."""
        if self.scaling == "physical":
            return self.sigma / jnp.sqrt(1.0 / num_cells if dx is None else dx)
        return self.sigma

    def init_state(
        self,
        key: PRNGKeyArray,
        shape: int | tuple[int, ...],
        k: float | Float[ArrayLike, ""] = 0.1,
        m: float | Float[ArrayLike, ""] = 0.5,
    ) -> Float[Array, "n 2"]:
        """The reference initial condition on ``shape = n`` (or ``(n, 2)``) cells; ``key`` is
        unused (the initial condition is deterministic)."""
        del key
        num_cells = shape if isinstance(shape, int) else shape[0]
        return initial_condition(num_cells, k, m)

    def max_stable_dt(self, num_cells: int) -> float:
        """Largest dt for which explicit stepping of the diffusion part is stable.

        The Neumann 3-point Laplacian has eigenvalues in [-4, 0] (times 1/dx^2 in physical
        scaling); Euler and Heun are stable for dt |lambda| <= 2, so
        dt <= h^2 / (2 max(1, D)) with h = 1 (lattice) or 1/n (physical). Needs concrete D.
        """
        h2 = 1.0 if self.scaling == "lattice" else 1.0 / num_cells**2
        return 0.5 * h2 / max(1.0, float(np.max(np.asarray(self.diffusion))))

    def check_stability(self, num_cells: int) -> None:
        """Raise ``ValueError`` if a concrete dt exceeds ``max_stable_dt(num_cells)``."""
        if not (is_concrete(self.dt) and is_concrete(self.diffusion)):
            return
        limit = self.max_stable_dt(num_cells)
        dt = float(np.max(np.asarray(self.dt)))
        if dt > limit * (1.0 + 1e-6):
            raise ValueError(
                f"dt = {dt:g} exceeds the explicit stability limit {limit:.3g} of the diffusion "
                f"term ({self.scaling} scaling, {num_cells} cells, D = "
                f"{float(np.max(np.asarray(self.diffusion))):g}): the simulation would blow up. "
                "Reduce dt."
            )


__all__ = [
    "NUM_SPECIES",
    "PredatorPrey",
    "cell_centres",
    "initial_condition",
    "laplacian_padded",
    "pad_fields",
]
