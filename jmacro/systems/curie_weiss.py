"""Curie-Weiss (mean-field) spins with continuous-time Glauber (heat-bath) dynamics.

N spins s_i in {-1, +1} with magnetisation m = (1/N) sum_i s_i and energy

    E(s) = -N (J m^2 / 2 + h m).

Spin i flips at the heat-bath rate w_i = 1 / (1 + exp(beta dE_i)) with

    dE_i = 2 s_i (J (M - s_i) / N + h),      M = N m,

i.e. the local field is the mean field of the other spins. The lattice geometry is irrelevant;
states keep the 2D shape only so that patches and images work as for the Ising model.

Partial evolution evolves a subset (a patch) of a larger system while the field is the whole
system's magnetisation: pass the sum of the spins outside the patch as ``background_sum`` and the
total number of spins as ``num_total``; the field is updated as the patch's spins flip and is
normalised by the large N. With the defaults the patch is the whole system.

Simulation is exact uniformization (see ``jmacro.systems._uniformized``): O(1) work per attempt
since the running patch sum is carried along.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
from jaxtyping import Array, Float, Int8, PRNGKeyArray, Shaped

from jmacro._checks import check_lattice_shape, check_positive_int, check_spins, is_concrete
from jmacro.systems import _uniformized
from jmacro.systems.base import AbstractSpinSystem
from jmacro.systems.ising import _as_param, random_spins


class CurieWeiss(AbstractSpinSystem):
    """Mean-field Ising model under continuous-time heat-bath Glauber dynamics.

    Attributes:
        temperature: T > 0 (critical temperature T_c = J).
        field: external field h.
        coupling: J.

    Example::

        model = CurieWeiss(temperature=1.1, field=0.1)
        spins = model.init_state(jr.key(0), (64, 64), magnetisation=-0.5)
        spins, dt = model.advance_events(spins, jr.key(1))   # N flips, elapsed time dt
    """

    temperature: Float[Array, ""]
    field: Float[Array, ""]
    coupling: Float[Array, ""]

    def __init__(self, temperature=1.1, field=0.1, coupling=1.0):
        self.temperature = _as_param(temperature, "temperature", positive=True)
        self.field = _as_param(field, "field")
        self.coupling = _as_param(coupling, "coupling")

    @property
    def beta(self) -> Float[Array, ""]:
        """Inverse temperature 1/T."""
        return 1.0 / self.temperature

    def init_state(
        self, key: PRNGKeyArray, shape: tuple[int, int], magnetisation: float | Array = 0.0
    ) -> Int8[Array, "H W"]:
        """Independent random spins with mean ``magnetisation``; shape ``(H, W)``."""
        return random_spins(key, check_lattice_shape(shape, min_side=1), magnetisation)

    def flip_rate(self, spin, total_sum, num_total) -> Float[Array, "..."]:
        """Heat-bath rate of flipping ``spin`` when the whole system's spin sum is ``total_sum``."""
        spin = jnp.asarray(spin, jnp.float32)
        local_field = self.coupling * (total_sum - spin) / num_total + self.field
        return jax.nn.sigmoid(-2.0 * self.beta * spin * local_field)

    def advance_events(
        self,
        spins: Shaped[Array, "H W"],
        key: PRNGKeyArray,
        num_events: int | None = None,
        background_sum: int | Array = 0,
        num_total: int | None = None,
    ) -> tuple[Int8[Array, "H W"], Float[Array, ""]]:
        """Advance by exactly ``num_events`` flips of the given spins (default: all of them).

        Args:
            spins: the evolving spins, any 2D shape; the whole system by default.
            key: PRNG key.
            num_events: number of flips, positive (may be traced); default ``spins.size``.
            background_sum: sum of the frozen spins outside ``spins`` (partial evolution).
            num_total: total number of spins N; default ``spins.size``.

        Returns:
            ``(spins, dt)`` with ``dt`` the elapsed continuous time (``inf`` if more than 10^4
            attempts per flip were needed).
        """
        spins, num_total = self._check(spins, num_total)

        def run(key, **stop):
            return self._sequential(spins, key, background_sum, num_total, **stop)

        return _uniformized.advance_events(run, key, num_events, spins.size)

    def advance_time(
        self,
        spins: Shaped[Array, "H W"],
        key: PRNGKeyArray,
        duration: float | Array = 1.0,
        background_sum: int | Array = 0,
        num_total: int | None = None,
    ) -> Int8[Array, "H W"]:
        """Advance the given spins by a continuous-time interval ``duration`` >= 0."""
        spins, num_total = self._check(spins, num_total)
        if is_concrete(duration) and not np.all(np.asarray(duration) >= 0):
            raise ValueError(f"duration must be >= 0, got {duration!r}.")
        key_count, key_run = jr.split(key)
        attempts = _uniformized.num_ticks(key_count, jnp.asarray(duration, jnp.float32), spins.size)
        return self._sequential(spins, key_run, background_sum, num_total, max_attempts=attempts)[0]

    def _check(self, spins, num_total):
        check_spins(spins)
        if spins.ndim != 2:
            raise ValueError(
                f"spins must be one 2D array, got shape {spins.shape}; use jax.vmap for batches."
            )
        if num_total is None:
            num_total = spins.size
        else:
            num_total = check_positive_int(num_total, "num_total")
            if num_total < spins.size:
                raise ValueError(
                    f"num_total={num_total} is smaller than the number of "
                    f"evolving spins {spins.size}."
                )
        return spins.astype(jnp.int8), num_total

    def _sequential(self, spins, key, background_sum, num_total, **stop):
        shape = spins.shape
        flat = spins.reshape(-1)
        total = flat.astype(jnp.int32).sum() + jnp.asarray(background_sum, jnp.int32)

        def attempt(carry, k, u, live):
            flat, total = carry
            s_k = flat[k]
            accepted = live & (u < self.flip_rate(s_k, total, num_total))
            flat = flat.at[k].set(jnp.where(accepted, -s_k, s_k))
            total = total - 2 * accepted * s_k.astype(jnp.int32)
            return (flat, total), accepted

        (flat, _), num_flips, num_attempts = _uniformized.run_attempts(
            (flat, total), key, flat.size, attempt, **stop
        )
        return flat.reshape(shape), num_flips, num_attempts


def mean_field_magnetisation(temperature: float, field: float, coupling: float = 1.0) -> float:
    """Stable solution of the self-consistency m = tanh((J m + h) / T) (large-N limit).

    For h != 0 the root with the sign of h (the global free-energy minimum); for h = 0 the
    non-negative one. Solved by bisection in float64.
    """
    beta = 1.0 / temperature
    sign = 1.0 if field >= 0 else -1.0

    def g(m):
        return math.tanh(beta * (coupling * m + field)) - m

    # g > 0 just above 0 on the side of h (or for the ordered root at h = 0), g(sign) < 0.
    lo, hi = (1e-12, 1.0) if sign > 0 else (-1.0, -1e-12)
    if g(lo) * g(hi) > 0:
        return 0.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if g(mid) * g(lo) > 0:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


def mean_field_drift(m, temperature, field, coupling=1.0):
    """Exact large-N drift of m under heat-bath Glauber: b(m) = tanh(beta (J m + h)) - m."""
    return jnp.tanh((coupling * m + field) / temperature) - m


def mean_field_diffusion_sq(m, temperature, field, num_spins, coupling=1.0):
    """Exact large-N squared diffusion of m: 2 (1 - m tanh(beta (J m + h))) / N."""
    return 2.0 * (1.0 - m * jnp.tanh((coupling * m + field) / temperature)) / num_spins
