"""Vacancy-exchange kinetic Monte Carlo of a BCC alloy (residence-time algorithm).

State (``AlloyState``): the compact occupancy ``(L, L, L, 2)`` int8 (codes 0 vacancy, 1 Nb,
2 Mo, 3 Ta; see ``jmacro.bcc``) of a periodic box of L^3 cubic cells, and the voxel coordinates
``(V, 3)`` int32 of its V vacancies, tracked so that an event never scans the lattice.

Transition rule: vacancy m exchanges with its first neighbour in direction k (8 per vacancy)
at the rate

    r[m, k] = nu0 exp(-E_b[m, k] / (k_B T)),      nu0 = 1e13 /s,  k_B = 8.617333e-5 eV/K,

with E_b from a pluggable barrier model (``jmacro.systems.barriers``); exchanges of two
vacancies are forbidden (rate 0). Residence time: the next event is (m, k) with probability
r[m, k] / R, R = sum r, and the clock advances by an Exp(1) / R waiting time (``waiting_time =
"exponential"``, the exact continuous-time Markov chain) or by its mean 1 / R (``"mean"``, the
reference's choice for partial evolution and LocalRelax). Time is in seconds.

Work per event: the 8 barriers of the moved vacancy, plus those of any other vacancy within
the barrier model's reach of the two changed sites (rare for one vacancy per 8^3-cell tile), an
O(V) draw over the cached barriers, two site writes. Rates are handled in log space (R spans
1e-26 .. 1e13 /s over 300-3000 K) and the elapsed time is a compensated (Kahan) float32 sum,
accurate over 10^7 events.

Patches: ``patch_step`` / ``patch_events`` accept ``Periodic`` only: the patch (e.g. the
vacancy-centred 1,024-site window of partial evolution) evolves as a small periodic system.
"""

from __future__ import annotations

from typing import Any, ClassVar, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
from jaxtyping import Array, Bool, Float, Int, Int8, PRNGKeyArray, Shaped

from jmacro import bcc
from jmacro._checks import check_finite_array, check_positive_array, check_save_grid, is_concrete
from jmacro.geometry import AbstractBoundary, Periodic
from jmacro.systems._base import AbstractSystem
from jmacro.systems.barriers import AbstractBarrierModel

BOLTZMANN_EV = 8.617333e-5
"""k_B in eV/K."""
ATTEMPT_FREQUENCY = 1e13
"""nu0 in 1/s (the reference's)."""
WAITING_TIMES = ("exponential", "mean")
"""The ``waiting_time`` choices."""


class AlloyState(NamedTuple):
    """One alloy configuration.

    Attributes:
        occupancy: ``(L, L, L, 2)`` int8 species codes (``jmacro.bcc``).
        vacancies: ``(V, 3)`` int32 voxel coordinates in [0, 2L) of the V vacant sites.
    """

    occupancy: Int8[Array, "L L L 2"]
    vacancies: Int[Array, "V 3"]


def alloy_state(occupancy, num_vacancies: int | None = None) -> AlloyState:
    """The state of an occupancy, its vacancies located (host; ``num_vacancies`` is required
    under ``jit`` and defaults to the number of 0 codes of a concrete array)."""
    occupancy = jnp.asarray(occupancy).astype(jnp.int8)
    if num_vacancies is None:
        if not is_concrete(occupancy):
            raise ValueError("give num_vacancies when building a state under jit/vmap.")
        num_vacancies = int(np.sum(np.asarray(occupancy) == bcc.VACANCY))
    return AlloyState(occupancy, bcc.find_vacancies(occupancy, num_vacancies))


def state_from_voxels(grid, num_vacancies: int | None = None) -> AlloyState:
    """The state of a reference (2L)^3 voxel grid (-1 non-site, 0 vacancy, 1-3 species)."""
    return alloy_state(bcc.voxels_to_occupancy(jnp.asarray(grid)), num_vacancies)


def state_to_voxels(state: AlloyState) -> Int8[Array, "V V V"]:
    """The reference's (2L)^3 voxel grid of a state."""
    return bcc.occupancy_to_voxels(state.occupancy)


def _positive(value, name: str) -> Float[Array, ""]:
    return jnp.asarray(check_positive_array(value, name), jnp.float32)


def check_duration(duration) -> Float[Array, ""]:
    """A duration (s) as a float32 scalar; a concrete one must be finite and >= 0."""
    check_finite_array(duration, "duration")
    if is_concrete(duration) and np.any(np.asarray(duration) < 0):
        raise ValueError(f"duration must be >= 0 seconds, got {duration!r}.")
    return jnp.asarray(duration, jnp.float32)


class _Carry(NamedTuple):
    occupancy: Int8[Array, "L L L 2"]
    vacancies: Int[Array, "V 3"]
    barriers: Float[Array, "V 8"]  # eV; inf where the neighbour is a vacancy
    time: Float[Array, ""]  # seconds, Kahan sum ...
    compensation: Float[Array, ""]  # ... and its running error


class VacancyKMC(AbstractSystem):
    """Residence-time vacancy-exchange KMC of a BCC alloy (transition rule: module docstring).

    Attributes:
        barrier_model: an ``AbstractBarrierModel`` (``NNKBarrier``, ``KRABarrier``).
        temperature: T in K (scalar array: ``jax.vmap`` over it for several temperatures).
        attempt_frequency: nu0 in 1/s.
        mean_waiting_time: bool scalar array, from ``waiting_time="exponential"`` (False:
            Exp(1) / R per event, exact) or ``"mean"`` (True: 1 / R). An array, not a static
            flag, so one compiled program serves both.

    Example::

        kmc = VacancyKMC(KRABarrier.nbmota(), temperature=2000.0)
        state = kmc.init_state(jr.key(0), (8, 8, 8))          # 1,024 sites, 1 vacancy
        state, dt = jax.jit(kmc.advance_events, static_argnums=2)(state, jr.key(1), 1000)
    """

    barrier_model: AbstractBarrierModel
    temperature: Float[Array, ""]
    attempt_frequency: Float[Array, ""]
    mean_waiting_time: Bool[Array, ""]

    boundaries: ClassVar[tuple[type[AbstractBoundary], ...]] = (Periodic,)
    state_dtype: ClassVar[Any] = jnp.int8

    def __init__(
        self,
        barrier_model: AbstractBarrierModel,
        temperature=1000.0,
        attempt_frequency=ATTEMPT_FREQUENCY,
        waiting_time: str = "exponential",
    ):
        if not isinstance(barrier_model, AbstractBarrierModel):
            raise TypeError(f"barrier_model must be a barrier model, got {barrier_model!r}.")
        if waiting_time not in WAITING_TIMES:
            raise ValueError(f"waiting_time must be one of {WAITING_TIMES}, got {waiting_time!r}.")
        self.barrier_model = barrier_model
        self.temperature = _positive(temperature, "temperature")
        self.attempt_frequency = _positive(attempt_frequency, "attempt_frequency")
        self.mean_waiting_time = jnp.asarray(waiting_time == "mean")

    # ------------------------------------------------------------------ rates
    def vacancy_barriers(
        self, occupancy: Shaped[Array, "L L L 2"], vacancy: Int[Array, "3"]
    ) -> Float[Array, "8"]:
        """E_b (eV) of one vacancy's 8 exchanges; inf towards another vacancy."""
        neighbours = bcc.gather_sites(occupancy, vacancy + jnp.asarray(bcc.FIRST_SHELL))
        energy = self.barrier_model.barriers(occupancy, vacancy)
        return jnp.where(neighbours == bcc.VACANCY, jnp.inf, energy)

    @eqx.filter_jit
    def barriers(self, state: AlloyState) -> Float[Array, "V 8"]:
        """E_b (eV) of every allowed exchange, inf for forbidden ones."""
        return jax.vmap(self.vacancy_barriers, (None, 0))(state.occupancy, state.vacancies)

    def log_rates(self, barriers: Float[Array, "*batch"]) -> Float[Array, "*batch"]:
        """ln r = ln nu0 - E_b / (k_B T), r in 1/s (-inf for forbidden exchanges)."""
        return jnp.log(self.attempt_frequency) - barriers / (BOLTZMANN_EV * self.temperature)

    @eqx.filter_jit
    def rates(self, state: AlloyState) -> Float[Array, "V 8"]:
        """r[m, k] in 1/s (float32: below ~1e-38 /s a rate reads 0)."""
        return jnp.exp(self.log_rates(self.barriers(state)))

    @eqx.filter_jit
    def log_total_rate(self, state: AlloyState) -> Float[Array, ""]:
        """ln R, R = sum of all exchange rates (1/s)."""
        return jax.nn.logsumexp(self.log_rates(self.barriers(state)))

    # ------------------------------------------------------------------ one event
    def _start(self, state: AlloyState) -> _Carry:
        zero = jnp.zeros((), jnp.float32)
        return _Carry(state.occupancy, state.vacancies, self.barriers(state), zero, zero)

    def _draw(self, carry: _Carry, key: PRNGKeyArray) -> tuple[Int[Array, ""], Float[Array, ""]]:
        """(flat event index m * 8 + k, waiting time in s) of the next event."""
        log_weight = -carry.barriers.reshape(-1) / (BOLTZMANN_EV * self.temperature)
        top = jnp.max(log_weight)
        cumulative = jnp.cumsum(jnp.exp(log_weight - top))
        pick, wait = jr.uniform(key, (2,))
        # First index with cumulative > u S: event i has probability w_i / S.
        index = jnp.sum(cumulative <= pick * cumulative[-1]).astype(jnp.int32)
        index = jnp.minimum(index, cumulative.shape[0] - 1)
        log_total = jnp.log(self.attempt_frequency) + top + jnp.log(cumulative[-1])
        units = jnp.where(self.mean_waiting_time, jnp.float32(1.0), -jnp.log1p(-wait))
        return index, units * jnp.exp(-log_total)

    def _apply(self, carry: _Carry, index: Int[Array, ""], live: Bool[Array, ""]) -> _Carry:
        """Carry out event ``index`` if ``live`` (else leave the lattice as it is)."""
        which, direction = index // 8, index % 8
        vacancy = carry.vacancies[which]
        target = vacancy + jnp.asarray(bcc.FIRST_SHELL)[direction]
        num_cells = carry.occupancy.shape[0]
        atom = bcc.gather_sites(carry.occupancy, target)
        occupancy = carry.occupancy.at[bcc.site_indices(vacancy, num_cells)].set(
            jnp.where(live, atom, bcc.VACANCY).astype(jnp.int8)
        )
        occupancy = occupancy.at[bcc.site_indices(target, num_cells)].set(
            jnp.where(live, bcc.VACANCY, atom).astype(jnp.int8)
        )
        moved = jnp.where(live, jnp.mod(target, 2 * num_cells), vacancy)
        vacancies = carry.vacancies.at[which].set(moved)
        barriers = self._refresh(occupancy, vacancies, carry.barriers, vacancy, moved)
        return carry._replace(occupancy=occupancy, vacancies=vacancies, barriers=barriers)

    def _refresh(self, occupancy, vacancies, barriers, old_site, new_site) -> Float[Array, "V 8"]:
        """Recompute the cached barriers of the vacancies within reach of the changed sites."""
        if vacancies.shape[0] == 1:
            return self.vacancy_barriers(occupancy, vacancies[0])[None]
        num_cells = occupancy.shape[0]
        reach = self.barrier_model.influence_sq
        stale = (bcc.min_image_sq(vacancies - old_site, num_cells) <= reach) | (
            bcc.min_image_sq(vacancies - new_site, num_cells) <= reach
        )

        # One iteration per stale vacancy (under vmap: the batch's largest count), usually 1.
        def body(loop):
            stale, barriers = loop
            m = jnp.argmax(stale)
            barriers = barriers.at[m].set(self.vacancy_barriers(occupancy, vacancies[m]))
            return stale.at[m].set(False), barriers

        return jax.lax.while_loop(lambda loop: jnp.any(loop[0]), body, (stale, barriers))[1]

    def _clock(self, carry: _Carry, dt: Float[Array, ""]) -> _Carry:
        """Kahan-add dt to the elapsed time."""
        y = dt - carry.compensation
        total = carry.time + y
        return carry._replace(time=total, compensation=(total - carry.time) - y)

    def _run_events(self, state: AlloyState, key: PRNGKeyArray, num_events) -> _Carry:
        def body(i, carry):
            index, dt = self._draw(carry, jr.fold_in(key, i))
            return self._clock(self._apply(carry, index, jnp.bool_(True)), dt)

        return jax.lax.fori_loop(0, num_events, body, self._start(state))

    def _run_for(self, state: AlloyState, key: PRNGKeyArray, duration) -> _Carry:
        # Event i uses the key fold_in(key, i), as in _run_events: the same path, cut at t.
        def body(loop):
            i, _, carry = loop
            index, dt = self._draw(carry, jr.fold_in(key, i))
            live = carry.time + dt <= duration
            carry = self._apply(carry, index, live)
            carry = self._clock(carry, jnp.where(live, dt, jnp.float32(0.0)))
            return i + 1, ~live, carry

        loop = (jnp.int32(0), jnp.bool_(False), self._start(state))
        return jax.lax.while_loop(lambda loop: ~loop[1], body, loop)[2]

    # ------------------------------------------------------------------ contract
    def init_state(
        self, key: PRNGKeyArray, shape, num_vacancies: int = 1, composition=(1.0, 1.0, 1.0)
    ) -> AlloyState:
        """A random arrangement (``bcc.random_occupancy``) on ``shape`` = (L, L, L) cells."""
        num_cells = self._cells(shape)
        occupancy = bcc.random_occupancy(key, num_cells, num_vacancies, composition)
        return AlloyState(occupancy, bcc.find_vacancies(occupancy, num_vacancies))

    def advance(self, state: AlloyState, key: PRNGKeyArray, duration) -> AlloyState:
        """The state at time ``duration`` (s): the events whose cumulative waiting time is <=
        ``duration``. Event i draws with ``jr.fold_in(key, i)``, as in ``advance_events``."""
        self._check(state)
        return self._advance(state, key, check_duration(duration))

    @eqx.filter_jit
    def _advance(self, state: AlloyState, key: PRNGKeyArray, duration) -> AlloyState:
        carry = self._run_for(state, key, duration)
        return AlloyState(carry.occupancy, carry.vacancies)

    def advance_events(
        self, state: AlloyState, key: PRNGKeyArray, num_events: int | Int[Array, ""] | None = None
    ) -> tuple[AlloyState, Float[Array, ""]]:
        """Exactly ``num_events`` exchanges (default: one per site, 2 L^3); ``(state, dt)``
        with dt the elapsed time in s. ``num_events`` may be traced (one compiled program
        serves every count)."""
        self._check(state)
        if num_events is None:
            num_events = state.occupancy.size
        if is_concrete(num_events) and np.any(np.asarray(num_events) < 0):
            raise ValueError(f"num_events must be >= 0, got {num_events!r}.")
        return self._advance_events(state, key, jnp.asarray(num_events, jnp.int32))

    @eqx.filter_jit
    def _advance_events(self, state: AlloyState, key: PRNGKeyArray, num_events):
        carry = self._run_events(state, key, num_events)
        return AlloyState(carry.occupancy, carry.vacancies), carry.time

    def patch_step(
        self, patch: AlloyState, key: PRNGKeyArray, duration, boundary: AbstractBoundary
    ) -> tuple[AlloyState, Float[Array, ""]]:
        """A patch evolved as an isolated periodic system (``Periodic``) for ``duration`` s."""
        self.check_boundary(boundary)
        return self.advance(patch, key, duration), jnp.asarray(duration, jnp.float32)

    def patch_events(
        self, patch: AlloyState, key: PRNGKeyArray, num_events, boundary: AbstractBoundary
    ) -> tuple[AlloyState, Float[Array, ""]]:
        """``num_events`` exchanges of a patch evolved as a periodic system (``Periodic``);
        e.g. the reference's 124 events of the vacancy-centred 1,024-site window, with
        ``waiting_time="mean"``."""
        self.check_boundary(boundary)
        return self.advance_events(patch, key, num_events)

    @eqx.filter_jit
    def trajectory(
        self,
        state: AlloyState,
        key: PRNGKeyArray,
        num_steps: int,
        step_duration: float | Float[Array, ""],
        save_every: int = 1,
    ) -> AlloyState:
        """``advance`` by ``step_duration`` s ``num_steps`` times (step t with key
        ``jr.split(key, num_steps)[t]``); saved states stacked on a leading axis of
        ``num_steps // save_every + 1``, row 0 the initial state. ``step_duration`` may be
        traced (e.g. one per temperature under ``jax.vmap``)."""
        num_steps, save_every = check_save_grid(num_steps, save_every)
        keys = jr.split(key, num_steps)
        keys = keys.reshape((num_steps // save_every, save_every, *keys.shape[1:]))

        def step(state, k):
            return self.advance(state, k, step_duration), None

        def saved(state, ks):
            state = jax.lax.scan(step, state, ks)[0]
            return state, state

        _, path = jax.lax.scan(saved, state, keys)
        return jax.tree.map(lambda a, b: jnp.concatenate([a[None], b]), state, path)

    @eqx.filter_jit
    def event_trajectory(
        self,
        state: AlloyState,
        key: PRNGKeyArray,
        num_frames: int,
        events_per_frame: int | Int[Array, ""],
    ) -> tuple[AlloyState, Float[Array, " F"]]:
        """Frames every ``events_per_frame`` events (the reference's logging): states stacked
        ``(num_frames + 1, ...)`` and their times in s, row 0 the initial state at t = 0.
        Frame f uses the key ``jr.split(key, num_frames)[f]``; ``events_per_frame`` may be
        traced (one compiled program for every count)."""

        def frame(loop, k):
            state, time = loop
            state, dt = self.advance_events(state, k, events_per_frame)
            return (state, time + dt), (state, time + dt)

        start = (state, jnp.zeros((), jnp.float32))
        _, (path, times) = jax.lax.scan(frame, start, jr.split(key, num_frames))
        path = jax.tree.map(lambda a, b: jnp.concatenate([a[None], b]), state, path)
        return path, jnp.concatenate([jnp.zeros(1, jnp.float32), times])

    def time_step(self) -> None:
        """None: continuous time."""
        return None

    def check_shape(self, shape: tuple[int, ...]) -> None:
        """(L, L, L) cells or an (L, L, L, 2) occupancy, L >= 2."""
        self._cells(shape)

    def check_states(self, states, name: str = "states", batched: bool = False) -> None:
        """An ``AlloyState`` (leading batch axis if ``batched``) with an ``(L, L, L, 2)``
        occupancy and ``(V, 3)`` vacancies; when concrete: codes 0-3 and 0 exactly at the V
        listed vacancy sites."""
        if not isinstance(states, AlloyState):
            raise ValueError(f"{name} must be an AlloyState, got {type(states).__name__}.")
        occupancy, vacancies = np.shape(states.occupancy), np.shape(states.vacancies)
        lead = 1 if batched else 0
        if len(occupancy) != 4 + lead or len(vacancies) != 2 + lead or vacancies[-1] != 3:
            hint = "" if batched else " (use jax.vmap for batches)"
            raise ValueError(
                f"{name} must hold an (L, L, L, 2) occupancy and (V, 3) vacancies{hint}, got "
                f"{occupancy} and {vacancies}."
            )
        bcc.check_occupancy_shape(occupancy[lead:])
        if is_concrete(states.occupancy) and is_concrete(states.vacancies):
            batch = states if batched else jax.tree.map(lambda a: np.asarray(a)[None], states)
            for occ, vac in zip(
                np.asarray(batch.occupancy), np.asarray(batch.vacancies), strict=True
            ):
                _check_one(occ, vac, name)

    # ------------------------------------------------------------------ helpers
    def _cells(self, shape) -> int:
        shape = (shape,) * 3 if isinstance(shape, int | np.integer) else tuple(shape)
        if len(shape) == 3:
            shape = (*shape, 2)
        return bcc.check_occupancy_shape(shape)

    def _check(self, state) -> None:
        if not isinstance(state, AlloyState):
            raise TypeError(
                f"the state must be an AlloyState (occupancy, vacancies), got "
                f"{type(state).__name__}; build one with alloy_state(occupancy)."
            )
        if state.occupancy.ndim != 4 or state.vacancies.ndim != 2:
            raise ValueError(
                f"one state per call: occupancy (L, L, L, 2) and vacancies (V, 3), got "
                f"{state.occupancy.shape} and {state.vacancies.shape}; use jax.vmap for batches."
            )
        bcc.check_occupancy_shape(state.occupancy.shape)


def _check_one(occupancy: np.ndarray, vacancies: np.ndarray, name: str) -> None:
    if np.any((occupancy < 0) | (occupancy >= bcc.NUM_SPECIES)):
        raise ValueError(f"{name}: species codes must be 0 ... 3.")
    num_cells = occupancy.shape[0]
    listed = np.zeros(occupancy.shape, bool)
    vox = np.mod(vacancies, 2 * num_cells)
    if np.any(vox % 2 != vox[:, :1] % 2):
        raise ValueError(f"{name}: vacancy voxels must be sites (coordinates of equal parity).")
    listed[vox[:, 0] // 2, vox[:, 1] // 2, vox[:, 2] // 2, vox[:, 0] % 2] = True
    if listed.sum() != len(vacancies) or np.any((occupancy == bcc.VACANCY) != listed):
        raise ValueError(f"{name}: the listed vacancies must be exactly the sites with code 0.")


__all__ = [
    "ATTEMPT_FREQUENCY",
    "BOLTZMANN_EV",
    "AlloyState",
    "VacancyKMC",
    "alloy_state",
    "state_from_voxels",
    "state_to_voxels",
]
