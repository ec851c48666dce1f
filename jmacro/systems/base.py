"""The contract every microscopic system implements."""

from __future__ import annotations

import abc

import equinox as eqx
from jaxtyping import Array, Float, PRNGKeyArray


class AbstractSpinSystem(eqx.Module):
    """A continuous-time stochastic spin system acting on ONE configuration per call.

    Subclasses are immutable Equinox modules whose fields are the physical parameters, stored
    as arrays so that one can ``jax.vmap`` over them (e.g. over temperature). All methods are
    pure: PRNG keys are explicit arguments, nothing is stored between calls, and batching is
    ``jax.vmap`` at the call site.

    Time is measured in units of the single-spin clock: every spin attempts on average one
    update per unit time (one "Monte Carlo sweep").
    """

    @abc.abstractmethod
    def init_state(
        self, key: PRNGKeyArray, shape: tuple[int, int], magnetisation: float | Array = 0.0
    ) -> Array:
        """Independent random spins with mean ``magnetisation`` (int8, values -1/+1)."""

    @abc.abstractmethod
    def advance_events(
        self, spins: Array, key: PRNGKeyArray, num_events: int | None = None
    ) -> tuple[Array, Float[Array, ""]]:
        """Advance by exactly ``num_events`` spin flips; return the state and elapsed time."""

    @abc.abstractmethod
    def advance_time(self, spins: Array, key: PRNGKeyArray, duration: float | Array) -> Array:
        """Advance by a fixed continuous-time interval ``duration``."""
