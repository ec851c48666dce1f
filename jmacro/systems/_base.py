"""The contract every microscopic system implements (Equinox abstract/final pattern).

A system is an immutable ``equinox.Module`` whose fields are its physical parameters (arrays, so
that one can ``jax.vmap`` over them). Its methods act on ONE configuration (batch with
``jax.vmap``), are pure, and take PRNG keys explicitly. Abstract classes (``Abstract*``) declare
methods and shared implementations; final classes hold the physical fields and implement the
abstract methods; nothing concrete is overridden.

Partial evolution and LocalRelax (``jmacro.scale``) are written once over this contract: a
tiling (``jmacro.geometry``) cuts a patch and builds its boundary object from the large state,
and the system evolves the patch with ``patch_step`` (fixed time) or ``patch_events`` (fixed
number of elementary events), dispatching on the boundary's type.
"""

from __future__ import annotations

import abc
from typing import Any

import equinox as eqx
from jaxtyping import Array, Float, PRNGKeyArray, Shaped

from jmacro.geometry import AbstractBoundary


class SimulationBlowUpError(RuntimeError):
    """A simulated state became non-finite (NaN or inf): the time step is too large for the
    parameters, or the initial condition is far outside the stable range."""


class AbstractSystem(eqx.Module):
    """A stochastic microscopic system acting on ONE configuration per call.

    Class attributes:
        boundaries: the boundary classes ``patch_step`` / ``patch_events`` accept.
        state_dtype: dtype of a state (int8 spins, float32 fields); host drivers cast to it.

    Methods (all pure; PRNG keys explicit):
        ``init_state(key, shape, **ic)``: an initial configuration.
        ``advance(state, key, duration)``: the state after a fixed continuous time.
        ``advance_events(state, key, num_events=None)``: after a fixed number of elementary
            events (spin flips; time steps of a time-stepped SPDE); returns ``(state, dt)``.
        ``patch_step(patch, key, duration, boundary)`` / ``patch_events(patch, key,
            num_events, boundary)``: a patch of a larger state, seeing ``boundary``; return
            ``(patch_after, dt)``.
        ``trajectory(state, key, num_steps, step_duration, save_every=1)``: saved states.
    """

    boundaries: eqx.AbstractClassVar[tuple[type[AbstractBoundary], ...]]
    state_dtype: eqx.AbstractClassVar[Any]

    @abc.abstractmethod
    def init_state(self, key: PRNGKeyArray, shape, **initial_condition) -> Shaped[Array, "..."]:
        """An initial configuration of the given spatial ``shape``."""

    @abc.abstractmethod
    def advance(
        self, state: Shaped[Array, "..."], key: PRNGKeyArray, duration: float | Array
    ) -> Shaped[Array, "..."]:
        """The exact state after a fixed continuous-time interval ``duration``."""

    @abc.abstractmethod
    def advance_events(
        self, state: Shaped[Array, "..."], key: PRNGKeyArray, num_events: int | None = None
    ) -> tuple[Shaped[Array, "..."], Float[Array, ""]]:
        """``num_events`` elementary events (default: one "step" of the system); ``(state, dt)``."""

    @abc.abstractmethod
    def patch_step(
        self,
        patch: Shaped[Array, "..."],
        key: PRNGKeyArray,
        duration: float | Array,
        boundary: AbstractBoundary,
    ) -> tuple[Shaped[Array, "..."], Float[Array, ""]]:
        """Evolve a patch for a fixed time seeing ``boundary``; return ``(patch, dt)``."""

    @abc.abstractmethod
    def patch_events(
        self,
        patch: Shaped[Array, "..."],
        key: PRNGKeyArray,
        num_events: int | None,
        boundary: AbstractBoundary,
    ) -> tuple[Shaped[Array, "..."], Float[Array, ""]]:
        """Evolve a patch for ``num_events`` elementary events (default: one step of the patch)
        seeing ``boundary``; return ``(patch, dt)``."""

    @abc.abstractmethod
    def trajectory(
        self,
        state: Shaped[Array, "..."],
        key: PRNGKeyArray,
        num_steps: int,
        step_duration: float,
        save_every: int = 1,
    ) -> Shaped[Array, "..."]:
        """``num_steps`` steps of ``step_duration`` each, saved every ``save_every`` steps:
        ``(num_steps // save_every + 1, *state.shape)``, row 0 the initial state."""

    @abc.abstractmethod
    def time_step(self) -> float | None:
        """The system's own time step (a time-stepped SPDE), or None (continuous time)."""

    @abc.abstractmethod
    def check_shape(self, shape: tuple[int, ...]) -> None:
        """Raise ``ValueError`` unless the system can simulate states of spatial ``shape``."""

    @abc.abstractmethod
    def check_states(self, states, name: str = "states", batched: bool = False) -> None:
        """Raise ``ValueError`` for states of the wrong shape or (when concrete) values.

        ``batched``: a leading batch axis. Cheap on large host arrays where possible."""

    def check_boundary(self, kind: type[AbstractBoundary] | AbstractBoundary) -> None:
        """Raise ``TypeError`` unless this system evolves patches seeing boundaries ``kind``."""
        kind = kind if isinstance(kind, type) else type(kind)
        if not any(issubclass(kind, allowed) for allowed in self.boundaries):
            supported = ", ".join(k.__name__ for k in self.boundaries)
            raise TypeError(
                f"{type(self).__name__} cannot evolve a patch with a {kind.__name__} boundary; "
                f"it supports {supported}. Choose one of those in the PartialEvolution or "
                "LocalRelax settings."
            )
