"""Explicit time stepping of stochastic PDEs on a 1D grid of cells: schemes and ghost cells.

A field is ONE float32 array ``(n, species)``: axis 0 the cell, axis 1 the species. A system
(``AbstractSPDE``) supplies the physics, the drift f(x) and the additive noise amplitude g,
of the Itô SDE system

    dx_i = f(x)_i dt + g dW_i,

and this module steps it in time (the scheme knows no equation, as Diffrax's solvers):
Euler-Maruyama or the stochastic Heun scheme, with Brownian increments dw = sqrt(dt) N(0, 1)
independent across cells, species and steps. Step t of a run started with ``key`` uses the key
``jr.split(key, num_steps)[t]``.

Boundaries: each end of the line carries one ghost cell. ``ghosts=None`` means Neumann
(replicate the edge cell) on both sides; a patch of a larger field sees a ``Ghosts`` boundary
(``jmacro.geometry``): the frozen neighbouring cells, or Neumann at a physical end.

Time: ``advance(state, key, duration)`` runs ``duration / dt`` steps (a static count: dt and
the duration must be concrete, and the duration a multiple of dt); ``advance_events`` and
``patch_events`` count steps directly (the "events" of a time-stepped system).
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from typing import Any, ClassVar

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
from jaxtyping import Array, ArrayLike, Bool, Float, PRNGKeyArray

from jmacro._checks import check_positive_int, check_save_grid, is_concrete
from jmacro.geometry import AbstractBoundary, Ghosts, check_finite
from jmacro.systems._base import AbstractSystem


# ---------------------------------------------------------------------------------- schemes
def euler_maruyama_step(
    drift_fn: Callable[[Array], Array],
    diffusion_fn: Callable[[Array], Array],
    x: Float[Array, "*shape"],
    dt: float | Float[ArrayLike, ""],
    dw: Float[Array, "*shape"],
) -> Float[Array, "*shape"]:
    """One Euler-Maruyama step of the Itô SDE dx = f(x) dt + g(x) dW with diagonal noise.

    x_{t+dt} = x + f(x) dt + g(x) * dw, where ``dw`` holds the Brownian increments over the
    step (independent N(0, dt) entries, the shape of ``x``) and ``g(x)`` is elementwise (any
    shape that broadcasts against ``x``). Strong order 1/2 for multiplicative noise, 1 for
    additive noise (g constant).
    """
    return x + drift_fn(x) * dt + diffusion_fn(x) * dw


def heun_step(
    drift_fn: Callable[[Array], Array],
    diffusion_fn: Callable[[Array], Array],
    x: Float[Array, "*shape"],
    dt: float | Float[ArrayLike, ""],
    dw: Float[Array, "*shape"],
) -> Float[Array, "*shape"]:
    """One stochastic Heun step (predictor-corrector, Stratonovich sense).

    x~ = x + f(x) dt + g(x) dw;   x_{t+dt} = x + (f(x) + f(x~)) dt / 2 + (g(x) + g(x~)) dw / 2.
    For additive noise (g constant) Itô and Stratonovich coincide; the deterministic part is
    then second order and the strong order is 1.
    """
    drift, noise = drift_fn(x), diffusion_fn(x)
    predicted = x + drift * dt + noise * dw
    return (
        x + 0.5 * (drift + drift_fn(predicted)) * dt + 0.5 * (noise + diffusion_fn(predicted)) * dw
    )


SCHEMES = {"euler_maruyama": euler_maruyama_step, "heun": heun_step}
"""Time-stepping schemes by name (``AbstractSPDE.method``)."""


# ---------------------------------------------------------------------------------- ghost cells
def pad_fields(
    fields: Float[Array, "n s"],
    ghosts: Float[Array, "2 s"] | None = None,
    neumann: Bool[ArrayLike, "2"] | None = None,
) -> Float[Array, "n+2 s"]:
    """The ``(n + 2, s)`` array of ``fields`` with one ghost cell on each side.

    Args:
        fields: ``(n, s)`` cells x species.
        ghosts: ``(2, s)``: row 0 the values beyond the left end, row 1 beyond the right end.
            ``None``: Neumann (replicate the edge cells) on both sides.
        neumann: optional ``(2,)`` bool (may be traced): True for a side that replicates the
            edge cell of ``fields`` instead of using ``ghosts`` (a physical end of a patch).
            Ignored when ``ghosts`` is None.
    """
    left, right = fields[:1], fields[-1:]
    if ghosts is not None:
        if neumann is None:
            left, right = ghosts[:1], ghosts[1:]
        else:
            neumann = jnp.asarray(neumann, bool)
            left = jnp.where(neumann[0], left, ghosts[:1])
            right = jnp.where(neumann[1], right, ghosts[1:])
    return jnp.concatenate([left, fields, right], axis=0)


def laplacian_padded(padded: Float[Array, "p s"]) -> Float[Array, "p-2 s"]:
    """3-point stencil f_{i-1} - 2 f_i + f_{i+1} on the interior of a padded array (no 1/dx^2).

    For a spatially uniform field the result is exactly 0 in floating point."""
    return padded[:-2] - 2.0 * padded[1:-1] + padded[2:]


def check_fields(fields, name: str = "fields", batched: bool = False, num_species: int = 2) -> None:
    """Raise ``ValueError`` unless ``fields`` has shape ``(n, s)`` (``(B, n, s)`` if
    ``batched``), s = ``num_species``, n >= 1 and, when concrete, only finite entries."""
    shape = tuple(np.shape(fields))
    ndim = 3 if batched else 2
    expected = f"(B, n, {num_species})" if batched else f"(n, {num_species})"
    if len(shape) != ndim or shape[-1] != num_species or shape[-2] < 1 or 0 in shape:
        hint = "" if batched else " (use jax.vmap for batches)"
        raise ValueError(f"{name} must have shape {expected} (cells x species), got {shape}{hint}.")
    check_finite(fields, name)


# ---------------------------------------------------------------------------------- base
class AbstractSPDE(AbstractSystem):
    """A system of SPDEs on n cells, stepped explicitly in time with step ``dt``.

    Subclasses hold the physical fields, ``dt`` and the scheme name ``method``
    (``"euler_maruyama"`` or ``"heun"``) and implement ``drift`` (f, ``(n, s)``), ``noise_scale``
    (the additive g) and ``check_stability``. Patches accept ``Ghosts`` boundaries.
    """

    dt: eqx.AbstractVar[Float[Array, ""]]
    method: eqx.AbstractVar[str]
    num_species: eqx.AbstractClassVar[int]
    boundaries: ClassVar[tuple[type[AbstractBoundary], ...]] = (Ghosts,)
    state_dtype: ClassVar[Any] = jnp.float32

    @abc.abstractmethod
    def drift(
        self,
        fields: Float[Array, "n s"],
        ghosts: Float[Array, "2 s"] | None = None,
        *,
        neumann: Bool[ArrayLike, "2"] | None = None,
        dx: float | Float[ArrayLike, ""] | None = None,
    ) -> Float[Array, "n s"]:
        """f(x) with the given ghost cells (``pad_fields``); ``dx``: the cell width of the
        field the cells belong to (default 1/n)."""

    @abc.abstractmethod
    def noise_scale(
        self, num_cells: int, dx: float | Float[ArrayLike, ""] | None = None
    ) -> Float[Array, ""]:
        """The additive noise amplitude g."""

    @abc.abstractmethod
    def check_stability(self, num_cells: int) -> None:
        """Raise ``ValueError`` if a concrete dt is too large for explicit stepping."""

    # ------------------------------------------------------------------ steps
    def step_with_increment(
        self,
        fields: Float[Array, "n s"],
        dw: Float[Array, "n s"],
        ghosts: Float[Array, "2 s"] | None = None,
        *,
        neumann: Bool[ArrayLike, "2"] | None = None,
        dx: float | Float[ArrayLike, ""] | None = None,
    ) -> Float[Array, "n s"]:
        """One step given the Brownian increments ``dw`` (entries N(0, dt)), ``(n, s)``.

        Euler-Maruyama: x + drift(x) dt + g dw with g = ``noise_scale``; or stochastic Heun.
        The boundary values (``ghosts``, ``neumann``) hold for the whole step. Use this to
        drive several time steps with one Brownian path (convergence tests).
        """
        scale = self.noise_scale(fields.shape[0], dx)
        return SCHEMES[self.method](
            lambda x: self.drift(x, ghosts, neumann=neumann, dx=dx),
            lambda x: scale,
            fields,
            self.dt,
            dw,
        )

    def step(
        self,
        fields: Float[Array, "n s"],
        key: PRNGKeyArray,
        ghosts: Float[Array, "2 s"] | None = None,
        *,
        neumann: Bool[ArrayLike, "2"] | None = None,
        dx: float | Float[ArrayLike, ""] | None = None,
    ) -> Float[Array, "n s"]:
        """One time step of length ``dt`` of ONE ``(n, s)`` field; returns ``(n, s)``.

        The increments are dw = sqrt(dt) ``jr.normal(key, (n, s))``: independent across cells
        and species. See ``step_with_increment`` for the update rule.
        """
        dw = jnp.sqrt(self.dt) * jr.normal(key, fields.shape, jnp.float32)
        return self.step_with_increment(fields, dw, ghosts, neumann=neumann, dx=dx)

    def advance_steps(
        self,
        fields: Float[Array, "n s"],
        key: PRNGKeyArray,
        num_steps: int,
        ghosts: Float[Array, "2 s"] | None = None,
        *,
        neumann: Bool[ArrayLike, "2"] | None = None,
        dx: float | Float[ArrayLike, ""] | None = None,
    ) -> Float[Array, "n s"]:
        """``num_steps`` steps with fixed boundary values; returns the final ``(n, s)`` field.

        Step t uses the key ``jr.split(key, num_steps)[t]`` (the same keys as ``simulate``).
        """
        num_steps = check_positive_int(num_steps, "num_steps")

        def body(x, k):
            return self.step(x, k, ghosts, neumann=neumann, dx=dx), None

        return jax.lax.scan(body, fields, jr.split(key, num_steps))[0]

    def num_steps_in(self, duration) -> int:
        """The number of time steps in ``duration`` (a concrete multiple of a concrete dt)."""
        if not (is_concrete(duration) and is_concrete(self.dt)):
            raise ValueError(
                f"{type(self).__name__} steps a fixed duration in a static number of steps: "
                "duration and dt must be concrete numbers (not traced); count steps with "
                "num_events instead."
            )
        dt = float(np.max(np.asarray(self.dt)))
        ratio = float(np.asarray(duration)) / dt
        steps = round(ratio)
        if not np.isfinite(ratio) or steps < 0 or abs(ratio - steps) > 1e-4 * max(1, steps):
            raise ValueError(
                f"duration {float(np.asarray(duration)):g} must be a non-negative multiple of "
                f"the time step dt = {dt:g}."
            )
        return steps

    def simulate(
        self,
        fields: Float[ArrayLike, "n s"],
        key: PRNGKeyArray,
        num_steps: int,
        save_every: int = 1,
    ) -> Float[Array, "S n s"]:
        """A trajectory of ONE field with Neumann boundaries, saved every ``save_every`` steps.

        Step t (0-based) uses the key ``jr.split(key, num_steps)[t]``.

        Args:
            fields: ``(n, s)`` initial state.
            key: PRNG key.
            num_steps: number of time steps (a Python int); must be a multiple of
                ``save_every``.
            save_every: save one state every this many steps.

        Returns:
            ``(num_steps // save_every + 1, n, s)``: row 0 is the initial state, row k the
            state at time k * save_every * dt.
        """
        check_fields(fields, num_species=self.num_species)
        num_steps, save_every = check_save_grid(num_steps, save_every)
        self.check_stability(fields.shape[0])
        keys = jr.split(key, num_steps).reshape(num_steps // save_every, save_every)

        def inner(x, k):
            return self.step(x, k), None

        def outer(x, ks):
            x = jax.lax.scan(inner, x, ks)[0]
            return x, x

        fields = jnp.asarray(fields, jnp.float32)
        _, saved = jax.lax.scan(outer, fields, keys)
        return jnp.concatenate([fields[None], saved], axis=0)

    # ------------------------------------------------------------------ contract
    def advance(
        self, state: Float[Array, "n s"], key: PRNGKeyArray, duration: float | Array
    ) -> Float[Array, "n s"]:
        """``duration / dt`` steps with Neumann boundaries (keys as ``advance_steps``)."""
        steps = self.num_steps_in(duration)
        return state if steps == 0 else self.advance_steps(state, key, steps)

    def advance_events(
        self, state: Float[Array, "n s"], key: PRNGKeyArray, num_events: int | None = None
    ) -> tuple[Float[Array, "n s"], Float[Array, ""]]:
        """``num_events`` time steps (default 1) with Neumann boundaries; ``(state, steps dt)``."""
        steps = 1 if num_events is None else check_positive_int(num_events, "num_events")
        return self.advance_steps(state, key, steps), jnp.float32(steps) * self.dt

    def patch_step(
        self,
        patch: Float[Array, "l s"],
        key: PRNGKeyArray,
        duration: float | Array,
        boundary: AbstractBoundary,
    ) -> tuple[Float[Array, "l s"], Float[Array, ""]]:
        """``duration / dt`` steps of a segment seeing its ``Ghosts``; ``(patch, steps dt)``."""
        return self._patch_steps(patch, key, self.num_steps_in(duration), boundary)

    def patch_events(
        self,
        patch: Float[Array, "l s"],
        key: PRNGKeyArray,
        num_events: int | None,
        boundary: AbstractBoundary,
    ) -> tuple[Float[Array, "l s"], Float[Array, ""]]:
        """``num_events`` time steps (default 1) of a segment seeing its ``Ghosts``: the ghost
        values stay frozen, a Neumann side replicates the segment's current edge cell at every
        step, and the physical scaling uses the large field's ``dx``. ``(patch, steps dt)``."""
        steps = 1 if num_events is None else check_positive_int(num_events, "num_events")
        return self._patch_steps(patch, key, steps, boundary)

    def _patch_steps(self, patch, key, steps, boundary):
        self.check_boundary(boundary)
        boundary.check(patch)
        dt = jnp.float32(steps) * self.dt
        if steps == 0:
            return jnp.asarray(patch, jnp.float32), dt
        after = self.advance_steps(
            patch, key, steps, boundary.values, neumann=boundary.neumann, dx=boundary.dx
        )
        return after, dt

    def trajectory(
        self,
        state: Float[Array, "n s"],
        key: PRNGKeyArray,
        num_steps: int,
        step_duration: float | None = None,
        save_every: int = 1,
    ) -> Float[Array, "S n s"]:
        """``num_steps`` steps of ``step_duration`` (default: one time step dt), saved every
        ``save_every``: ``simulate(state, key, m num_steps, m save_every)`` with
        m = step_duration / dt, so one key per time step."""
        per_step = 1 if step_duration is None else self.num_steps_in(step_duration)
        if per_step < 1:
            raise ValueError(f"step_duration must be at least one time step, got {step_duration}.")
        return self.simulate(state, key, per_step * num_steps, per_step * save_every)

    def time_step(self) -> float:
        """dt (must be concrete)."""
        if not is_concrete(self.dt):
            raise ValueError("the time step dt is traced; it must be a concrete number here.")
        return float(np.max(np.asarray(self.dt)))

    def check_shape(self, shape: tuple[int, ...]) -> None:
        """``(n, species)`` with n >= 1, and a stable dt for n cells."""
        shape = tuple(shape)
        if len(shape) != 2 or shape[1] != self.num_species or shape[0] < 1:
            raise ValueError(
                f"a state of {type(self).__name__} has shape (n, {self.num_species}), got {shape}."
            )
        self.check_stability(shape[0])

    def check_states(self, states, name: str = "states", batched: bool = False) -> None:
        """Shape ``(n, species)`` (``(B, n, species)``), finite entries, stable dt."""
        check_fields(states, name, batched, self.num_species)
        self.check_stability(np.shape(states)[-2])
