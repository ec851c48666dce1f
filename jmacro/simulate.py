"""Host drivers for many trajectories of any system, written once over the system contract.

Each trajectory runs ``system.trajectory`` (or the event-count steps of ``advance_events``)
on ONE state; the drivers vmap it, jit it, shard the batch axis over the local devices
(``jmacro.sharding.map_in_batches``) and return NumPy arrays. Trajectory ``b`` always uses a
key derived from ``jr.fold_in(key, b)``, so results do not depend on ``batch_size`` or on the
number of devices.

- ``trajectories``: from given initial states, on a fixed time grid (the ground-truth and
  validation runs of the pipelines; for the SPDE, its time steps);
- ``random_trajectories``: from initial states drawn per trajectory (the small-system data),
  on a fixed time grid or by event count (random times), with the elapsed times.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
from jaxtyping import ArrayLike, PRNGKeyArray

from jmacro._checks import check_positive_int, check_save_grid
from jmacro.sharding import map_in_batches
from jmacro.systems._base import AbstractSystem, SimulationBlowUpError


def trajectories(
    system: AbstractSystem,
    initial: ArrayLike,
    key: PRNGKeyArray,
    num_steps: int,
    step_duration: float | None = None,
    *,
    save_every: int = 1,
    batch_size: int = 256,
    progress: bool = False,
) -> np.ndarray:
    """Trajectories of ``system`` from the host states ``initial`` on a fixed time grid.

    Trajectory b is ``system.trajectory(initial[b], fold_in(key, b), num_steps,
    step_duration, save_every)``: for spin systems step t advances by ``step_duration`` with
    the key ``jr.split(fold_in(key, b), num_steps)[t]``; for an SPDE, ``step_duration`` (default
    its dt) is a whole number of time steps, each with its own key (``PredatorPrey.simulate``).

    Args:
        system: any ``AbstractSystem``.
        initial: ``(B, *state_shape)`` initial states (cast to ``system.state_dtype``).
        key: PRNG key.
        num_steps: steps per trajectory; a multiple of ``save_every``.
        step_duration: time per step; None only for time-stepped systems (one dt).
        save_every: keep one state every this many steps.
        batch_size: trajectories per compiled call.
        progress: show a tqdm bar.

    Returns:
        ``(B, num_steps // save_every + 1, *state_shape)``; row 0 the initial state.

    Raises:
        ValueError: bad shapes or arguments, non-finite initial states, an unstable dt.
        SimulationBlowUpError: a trajectory became non-finite; the message names the first
            such trajectory, its first non-finite saved step and the time.
    """
    system.check_states(initial, "initial", batched=True)
    num_steps, save_every = check_save_grid(num_steps, save_every)
    batch_size = check_positive_int(batch_size, "batch_size")
    if step_duration is None:
        step_duration = system.time_step()
        if step_duration is None:
            raise ValueError(
                f"{type(system).__name__} is a continuous-time system: give a step_duration."
            )

    def one(state, index):
        return system.trajectory(
            state, jr.fold_in(key, index), num_steps, step_duration, save_every
        )

    return map_in_batches(
        one,
        len(initial),
        initial,
        batch_size=batch_size,
        dtype=system.state_dtype,
        desc="trajectories",
        unit="traj",
        progress=progress,
        check=lambda paths, start: check_trajectories_finite(
            paths, save_every * step_duration, start
        ),
    )


def random_trajectories(
    system: AbstractSystem,
    key: PRNGKeyArray,
    num_trajectories: int,
    shape: tuple[int, ...],
    num_steps: int,
    *,
    initial_condition: Callable[[PRNGKeyArray], dict[str, Any]] | None = None,
    step_duration: float | None = None,
    num_events: int | None = None,
    batch_size: int = 256,
    progress: bool = False,
) -> dict[str, np.ndarray]:
    """Trajectories from random initial states, with their elapsed times.

    Trajectory i splits ``fold_in(key, i)`` into ``(key_ic, key_init, key_run)``; its initial
    state is ``system.init_state(key_init, shape, **initial_condition(key_ic))`` and step t
    uses ``jr.split(key_run, num_steps)[t]``. A step advances by ``step_duration`` (times
    k * step_duration) or, if None, by ``num_events`` elementary events with
    ``system.advance_events`` (default: one step of the system, e.g. n spin flips; random
    times, the reference's small-system data).

    Args:
        initial_condition: ``key -> init_state keyword arguments``, e.g.
            ``lambda k: {"magnetisation": jr.uniform(k, minval=-1, maxval=1)}``; None: none.

    Returns:
        ``{"snapshots": (T, S + 1, *shape), "times": (T, S + 1) float32}`` (cumulative time
        from 0).
    """
    num_trajectories = check_positive_int(num_trajectories, "num_trajectories")
    num_steps = check_positive_int(num_steps, "num_steps")
    batch_size = check_positive_int(batch_size, "batch_size")
    shape = tuple(shape)
    system.check_shape(shape)

    def one(index):
        key_ic, key_init, key_run = jr.split(jr.fold_in(key, index), 3)
        kwargs = {} if initial_condition is None else initial_condition(key_ic)
        state = system.init_state(key_init, shape, **kwargs)
        if step_duration is not None:
            path = system.trajectory(state, key_run, num_steps, step_duration)
            steps = jnp.full(num_steps, step_duration, jnp.float32)
            return path, jnp.concatenate([jnp.zeros(1), jnp.cumsum(steps)])

        return _event_path(system, state, key_run, num_steps, num_events)

    snapshots, times = map_in_batches(
        one,
        num_trajectories,
        batch_size=batch_size,
        desc="trajectories",
        unit="traj",
        progress=progress,
    )
    return {"snapshots": snapshots, "times": times}


def event_trajectories(
    system: AbstractSystem,
    initial: ArrayLike,
    key: PRNGKeyArray,
    num_steps: int,
    num_events: int | None = None,
    *,
    batch_size: int = 256,
    progress: bool = False,
) -> dict[str, np.ndarray]:
    """Trajectories from the host states ``initial`` whose steps are ``num_events``
    elementary events each (default: the system's own step, e.g. n spin flips), with their
    random elapsed times: the reference's step semantics for validation and ground truth.

    Trajectory b steps with ``jr.split(fold_in(key, b), num_steps)[t]``.

    Returns:
        ``{"snapshots": (B, S + 1, *state_shape), "times": (B, S + 1) float32}``, row 0 the
        initial state at time 0.
    """
    system.check_states(initial, "initial", batched=True)
    num_steps = check_positive_int(num_steps, "num_steps")
    batch_size = check_positive_int(batch_size, "batch_size")

    def one(state, index):
        return _event_path(system, state, jr.fold_in(key, index), num_steps, num_events)

    snapshots, times = map_in_batches(
        one,
        len(initial),
        initial,
        batch_size=batch_size,
        dtype=system.state_dtype,
        desc="event trajectories",
        unit="traj",
        progress=progress,
    )
    return {"snapshots": snapshots, "times": times}


def _event_path(system, state, key, num_steps, num_events):
    """``num_steps`` steps of ``num_events`` events from ``state``: (states, cumulative times)."""

    def step(state, k):
        state, dt = system.advance_events(state, k, num_events)
        return state, (state, dt)

    _, (path, dts) = jax.lax.scan(step, state, jr.split(key, num_steps))
    states = jnp.concatenate([state[None], path])
    return states, jnp.concatenate([jnp.zeros(1), jnp.cumsum(dts)])


def check_trajectories_finite(paths: np.ndarray, saved_duration: float, offset: int = 0) -> None:
    """Raise ``SimulationBlowUpError`` if any of the ``(B, S + 1, ...)`` float paths is
    non-finite, naming the first bad trajectory (index + ``offset``), its first non-finite
    saved step and the time (``saved_duration`` per saved step)."""
    if not np.issubdtype(paths.dtype, np.floating):
        return
    finite = np.isfinite(paths).reshape(*paths.shape[:2], -1).all(axis=2)
    if finite.all():
        return
    traj = int(np.argmin(finite.all(axis=1)))
    saved = int(np.argmin(finite[traj]))
    raise SimulationBlowUpError(
        f"trajectory {traj + offset} blew up: its first non-finite saved step is {saved} "
        f"(t = {saved * saved_duration:.6g}; {int((~finite).any(axis=1).sum())} of "
        f"{len(paths)} trajectories in this batch are non-finite). Reduce the time step or "
        "check the initial condition and parameters."
    )


__all__ = [
    "check_trajectories_finite",
    "event_trajectories",
    "random_trajectories",
    "trajectories",
]
