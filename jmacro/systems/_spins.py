"""Heat-bath spin systems: the uniformized drivers, written once over an abstract attempt.

A spin system here is ``s_i in {-1, +1}`` (int8) under continuous-time Glauber dynamics: spin i
flips at the heat-bath rate ``w_i = 1 / (1 + exp(beta dE_i))`` <= 1, dE_i the energy change of
the flip. Time is in units of the single-spin clock (one unit = one Monte Carlo sweep).

Final classes (``GlauberIsing``, ``CurieWeiss``) hold the parameters and say how ONE attempt
on site k reads the state and its boundary (``_process``); this module runs the attempts by
exact uniformization (``jmacro.systems._uniformized``) by flip count or for a fixed time, for a
whole periodic lattice or for a patch seeing a boundary object.
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
from jax.custom_batching import custom_vmap
from jaxtyping import Array, Float, Int8, PRNGKeyArray, Shaped

from jmacro._checks import (
    check_finite_array,
    check_lattice_shape,
    check_positive_array,
    check_save_grid,
    check_spins,
    is_concrete,
)
from jmacro.geometry import AbstractBoundary, FrozenHalo, Periodic
from jmacro.systems import _uniformized
from jmacro.systems._base import AbstractSystem


def random_spins(
    key: PRNGKeyArray, shape: tuple[int, int], magnetisation: float | Array = 0.0
) -> Int8[Array, "H W"]:
    """Independent spins with P(s = +1) = (1 + m) / 2, so E[mean spin] = m; int8 -1/+1."""
    shape = check_lattice_shape(shape, min_side=1)
    p_up = (1.0 + jnp.asarray(magnetisation, jnp.float32)) / 2.0
    return jnp.where(jr.uniform(key, shape) < p_up, 1, -1).astype(jnp.int8)


def as_param(value, name: str, positive: bool = False) -> Float[Array, ""]:
    """A physical parameter as a float32 array, checked (finite; > 0 if ``positive``)."""
    value = check_positive_array(value, name) if positive else check_finite_array(value, name)
    return jnp.asarray(value, jnp.float32)


# Largest expected attempt count of one fixed-time advance: the Poisson(rate * t) attempt
# count is an int32; 2^30 leaves room for its fluctuations (and for a merged clock slightly
# faster than one tick per site and unit time) far below 2^31 - 1.
_MAX_MEAN_ATTEMPTS = 2.0**30


def check_duration(duration, num_sites: int | None = None) -> Float[Array, ""]:
    """A duration t >= 0 as a float32 scalar, checked when concrete.

    A concrete (host) duration must be finite and >= 0 and, given the number of updatable
    sites n, its expected number of uniformized attempts n t (each site's clock ticks at rate
    <= 1 per unit time, plus float32 rounding) must stay below 2^30, so that the int32 attempt
    count of ``_uniformized.num_ticks`` cannot overflow; otherwise ``ValueError``.

    A traced duration (inside ``jit``/``vmap``) cannot be checked: the caller guarantees it.
    There a bad duration is no error but a wrong attempt count: with jax's Poisson sampler an
    infinite or NaN duration makes zero attempts (the state comes back unchanged) and one past
    the int32 range is clamped to 2^31 - 1 attempts. Split long advances into steps (e.g.
    ``trajectory``) instead.
    """
    if is_concrete(duration):
        value = np.asarray(duration)
        if not np.all(np.isfinite(value)):
            raise ValueError(f"duration must be finite, got {duration!r}.")
        if not np.all(value >= 0):
            raise ValueError(f"duration must be >= 0, got {duration!r}.")
        if num_sites is not None and np.max(value) * num_sites > _MAX_MEAN_ATTEMPTS:
            raise ValueError(
                f"duration {float(np.max(value))!r} on {num_sites} sites needs about "
                f"{float(np.max(value)) * num_sites:.3g} attempts, more than the int32 attempt "
                f"count allows (2^30 expected): advance in shorter steps (e.g. `trajectory`)."
            )
    return jnp.asarray(duration, jnp.float32)


Process = tuple[Any, Callable[..., tuple[Any, jax.Array]], Callable[[Any], jax.Array]]


class AbstractHeatBathSpins(AbstractSystem):
    """Spins under continuous-time heat-bath Glauber dynamics, simulated by uniformization.

    Every updatable site carries a rate-1 Poisson clock; at each tick of the merged clock a site
    k is drawn uniformly and flipped with probability w_k (``_uniformized.run_attempts``).
    Subclasses provide the fields ``temperature``, ``field``, ``coupling`` and ``_process``,
    which returns the attempt function for a patch seeing a boundary.

    ``batch_lanes`` (class attribute): under ``jax.vmap``, event-count drivers run the batch
    on this many lanes that switch lattices as theirs stop (None: lock-step ``vmap``).

    Drivers (implemented once here):
        - by flip count: exactly ``num_events`` flips (default: as many as sites, the
          reference's "step"); dt is the time of the last flip, Gamma(attempts, n);
        - by time: Poisson(n t) attempts in a window t; dt = t.
    """

    temperature: eqx.AbstractVar[Float[Array, ""]]
    field: eqx.AbstractVar[Float[Array, ""]]
    coupling: eqx.AbstractVar[Float[Array, ""]]
    min_side: eqx.AbstractClassVar[int]
    state_dtype: ClassVar[Any] = jnp.int8
    batch_lanes: eqx.AbstractClassVar[int | None]

    @property
    def beta(self) -> Float[Array, ""]:
        """Inverse temperature 1/T."""
        return 1.0 / self.temperature

    @abc.abstractmethod
    def _process(self, spins: Int8[Array, "H W"], boundary: AbstractBoundary) -> Process:
        """``(carry, attempt, finish)`` of the uniformized process of ``spins`` seeing
        ``boundary``: ``attempt(carry, k, bits, live) -> (accepted, write)`` decides
        ``accepted = live and bits < floor(2**32 w_k)`` and ``write(carry, ordered)`` flips site k
        iff ``accepted and ordered`` (see ``_uniformized.run_attempts``); ``finish(carry)``
        returns the ``(H, W)`` spins."""

    # ------------------------------------------------------------------ contract
    def init_state(
        self, key: PRNGKeyArray, shape: tuple[int, int], magnetisation: float | Array = 0.0
    ) -> Int8[Array, "H W"]:
        """Independent random spins with mean ``magnetisation`` (int8 -1/+1), shape ``(H, W)``."""
        return random_spins(key, check_lattice_shape(shape, min_side=self.min_side), magnetisation)

    def advance(
        self, state: Shaped[Array, "H W"], key: PRNGKeyArray, duration: float | Array
    ) -> Int8[Array, "H W"]:
        """The whole (periodic) lattice after the continuous time ``duration`` >= 0 (sweeps)."""
        spins = self._check(state, Periodic())
        return self._run_for(spins, key, duration, Periodic())

    def patch_step(
        self,
        patch: Shaped[Array, "h w"],
        key: PRNGKeyArray,
        duration: float | Array,
        boundary: AbstractBoundary,
    ) -> tuple[Int8[Array, "h w"], Float[Array, ""]]:
        """The patch after the time ``duration`` seeing ``boundary``; ``(patch, duration)``."""
        spins = self._check(patch, boundary)
        duration = check_duration(duration)
        return self._run_for(spins, key, duration, boundary), duration

    def patch_events(
        self,
        patch: Shaped[Array, "h w"],
        key: PRNGKeyArray,
        num_events: int | None,
        boundary: AbstractBoundary,
    ) -> tuple[Int8[Array, "h w"], Float[Array, ""]]:
        """Exactly ``num_events`` flips of the patch (default h*w) seeing ``boundary``;
        ``(patch, dt)`` with ``dt = inf`` if more than 10^4 attempts per flip were needed."""
        spins = self._check(patch, boundary)
        return self._run_events(spins, key, num_events, boundary)

    def trajectory(
        self,
        state: Shaped[Array, "H W"],
        key: PRNGKeyArray,
        num_steps: int,
        step_duration: float,
        save_every: int = 1,
    ) -> Int8[Array, "S H W"]:
        """``advance`` by ``step_duration`` ``num_steps`` times, saving every ``save_every``.

        Step t uses the key ``jr.split(key, num_steps)[t]``. Returns
        ``(num_steps // save_every + 1, H, W)`` int8, row 0 the initial state.
        """
        num_steps, save_every = check_save_grid(num_steps, save_every)
        if step_duration is None:
            raise ValueError(
                f"{type(self).__name__} is a continuous-time system: give a step_duration."
            )
        keys = jr.split(key, num_steps)

        def step(spins, k):
            spins = self.advance(spins, k, step_duration)
            return spins, spins

        if save_every == 1:
            _, path = jax.lax.scan(step, state, keys)
        else:

            def saved(spins, ks):
                spins = jax.lax.scan(step, spins, ks)[0]
                return spins, spins

            keys = keys.reshape(num_steps // save_every, save_every)
            _, path = jax.lax.scan(saved, state, keys)
        return jnp.concatenate([state[None].astype(path.dtype), path])

    def time_step(self) -> None:
        """None: continuous time."""
        return None

    def check_shape(self, shape: tuple[int, ...]) -> None:
        """A 2D lattice with sides >= ``min_side``."""
        check_lattice_shape(shape, min_side=self.min_side)

    def check_states(self, states, name: str = "states", batched: bool = False) -> None:
        """Shape ``(H, W)`` (``(B, H, W)``) and, when concrete, values in {-1, +1} only.

        The entry check of every batch driver (``simulate.trajectories``, ``evolve_patches``,
        ``evolve_patch``, ``local_relax``) before any compute: 0, 2, 0.5, NaN are refused
        rather than cast to int8. The value scan reads all of a memory-mapped dataset once,
        in slices (``jmacro._checks.check_spins``); tracers are checked by shape only.
        """
        ndim = 3 if batched else 2
        if np.ndim(states) != ndim:
            expected = "(B, H, W)" if batched else "(H, W)"
            hint = "" if batched else " (use jax.vmap for batches)"
            raise ValueError(
                f"{name} must have shape {expected} (spin lattices), got {np.shape(states)}{hint}."
            )
        self.check_shape(np.shape(states)[-2:])
        check_spins(states, name)

    # ------------------------------------------------------------------ drivers
    def _check(self, spins, boundary: AbstractBoundary) -> Int8[Array, "H W"]:
        check_spins(spins)
        if spins.ndim != 2:
            raise ValueError(
                f"spins must be one (H, W) lattice, got shape {spins.shape}; "
                "use jax.vmap for batches."
            )
        check_lattice_shape(spins.shape, min_side=self.min_side)
        self.check_boundary(boundary)
        boundary.check(spins)
        if isinstance(boundary, FrozenHalo):
            check_spins(boundary.values, "halo")
        return spins.astype(jnp.int8)

    def _sequential(self, spins, key, boundary, *, max_events=None, max_attempts=None, lanes=True):
        """``(spins, num_flips, num_attempts)`` of ``_uniformized.run_attempts``. Under
        ``jax.vmap`` the batch runs on ``batch_lanes`` switching lanes if ``lanes`` (for
        event counts, whose attempt counts vary from lattice to lattice), else in lock-step
        (fixed times: Poisson attempt counts vary little, and lock-step measured faster)."""
        limit = jnp.iinfo(jnp.int32).max
        max_events = jnp.asarray(limit if max_events is None else max_events, jnp.int32)
        max_attempts = jnp.asarray(limit if max_attempts is None else max_attempts, jnp.int32)
        run = _run_sequential if lanes and self.batch_lanes else _run_one
        return run(self, spins, boundary, key, max_events, max_attempts)

    def _run_events(self, spins, key, num_events, boundary):
        def run(key, **stop):
            return self._sequential(spins, key, boundary, **stop)

        return _uniformized.advance_events(run, key, num_events, spins.size)

    def _run_for(self, spins, key, duration, boundary):
        duration = check_duration(duration, spins.size)
        key_count, key_run = jr.split(key)
        attempts = _uniformized.num_ticks(key_count, duration, spins.size)
        return self._sequential(spins, key_run, boundary, max_attempts=attempts, lanes=False)[0]


def _run_one(system, spins, boundary, key, max_events, max_attempts):
    carry, attempt, finish = system._process(spins, boundary)
    carry, num_flips, num_attempts = _uniformized.run_attempts(
        carry, key, spins.size, attempt, max_events=max_events, max_attempts=max_attempts
    )
    return finish(carry), num_flips, num_attempts


# One system per call; under ``jax.vmap`` the batch runs on ``batch_lanes`` lanes that take
# the next system when theirs stops (``_uniformized.run_attempts_lanes``), with the same bits.
_run_sequential = custom_vmap(_run_one)


@_run_sequential.def_vmap
def _run_lanes(axis_size, in_batched, *args):
    def broadcast(x, batched):
        return x if batched else jnp.broadcast_to(x, (axis_size, *jnp.shape(x)))

    args = jax.tree.map(broadcast, args, tuple(in_batched))
    system, spins, boundary, key, max_events, max_attempts = args
    carry = jax.vmap(lambda m, s, b: m._process(s, b)[0])(system, spins, boundary)
    # ``_process``'s attempt depends on shapes only (all per-system data is in the carry):
    # build it once from the first system, then map it over the lanes.
    _, attempt, finish = _first(system)._process(spins[0], _first(boundary))
    carry, num_flips, num_attempts = _uniformized.run_attempts_lanes(
        carry,
        jax.random.key_data(key),
        spins[0].size,
        attempt,
        max_events=max_events,
        max_attempts=max_attempts,
        num_lanes=system.batch_lanes,
    )
    return (jax.vmap(finish)(carry), num_flips, num_attempts), (True, True, True)


def _first(tree):
    return jax.tree.map(lambda x: x[0], tree)
