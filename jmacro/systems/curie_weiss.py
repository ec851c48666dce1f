"""Curie-Weiss (mean-field) spins with continuous-time Glauber (heat-bath) dynamics.

N spins s_i in {-1, +1} with magnetisation m = (1/N) sum_i s_i and energy

    E(s) = -N (J m^2 / 2 + h m).

Spin i flips at the heat-bath rate w_i = 1 / (1 + exp(beta dE_i)) with

    dE_i = 2 s_i (J (M - s_i) / N + h),      M = N m,

i.e. the local field is the mean field of the other spins. The lattice geometry is irrelevant;
states keep the 2D shape only so that patches and images work as for the Ising model.

Partial evolution evolves a subset (a patch) of a larger system while the field is the whole
system's magnetisation: the patch sees a ``MeanField`` boundary holding the sum of the spins
outside the patch and the total number of spins N (or, with ``advance_*``, pass them as
``background_sum`` and ``num_total``); the field is updated as the patch's spins flip and is
normalised by the large N. With the defaults the patch is the whole system.

Simulation is exact uniformization (see ``jmacro.systems._uniformized``): O(1) work per attempt
since the running patch sum is carried along.
"""

from __future__ import annotations

import math
from typing import ClassVar

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, Int8, PRNGKeyArray, Shaped, UInt32

from jmacro.geometry import AbstractBoundary, MeanField, Periodic
from jmacro.systems import _uniformized
from jmacro.systems._spins import AbstractHeatBathSpins, as_param


class CurieWeiss(AbstractHeatBathSpins):
    """Mean-field Ising model under continuous-time heat-bath Glauber dynamics.

    Attributes:
        temperature: T > 0 (critical temperature T_c = J).
        field: external field h.
        coupling: J.

    Patches (partial evolution, LocalRelax) accept the boundaries ``MeanField`` (the field of
    the whole large system) and ``Periodic`` (the patch is its own whole system).

    Example::

        model = CurieWeiss(temperature=1.1, field=0.1)
        spins = model.init_state(jr.key(0), (64, 64), magnetisation=-0.5)
        spins, dt = model.advance_events(spins, jr.key(1))   # N flips, elapsed time dt
    """

    temperature: Float[Array, ""]
    field: Float[Array, ""]
    coupling: Float[Array, ""]

    boundaries: ClassVar[tuple[type[AbstractBoundary], ...]] = (MeanField, Periodic)
    min_side: ClassVar[int] = 1
    # A plain jax.vmap (lock-step) under vmap: lanes that switch patches moved each patch's
    # (2n + 2)-entry threshold table at every switch and measured 0.75-0.85x of it.
    batch_lanes: ClassVar[int | None] = None

    def __init__(self, temperature=1.1, field=0.1, coupling=1.0):
        self.temperature = as_param(temperature, "temperature", positive=True)
        self.field = as_param(field, "field")
        self.coupling = as_param(coupling, "coupling")

    def flip_rate(self, spin, total_sum, num_total) -> Float[Array, "..."]:
        """Heat-bath rate of flipping ``spin`` when the whole system's spin sum is ``total_sum``."""
        spin = jnp.asarray(spin, jnp.float32)
        total_sum = jnp.asarray(total_sum, jnp.float32)
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
                Same as ``patch_events(spins, key, num_events, MeanField(background_sum, N))``.

        Returns:
            ``(spins, dt)`` with ``dt`` the elapsed continuous time (``inf`` if more than 10^4
            attempts per flip were needed).
        """
        return self.patch_events(spins, key, num_events, _field(spins, background_sum, num_total))

    def advance_time(
        self,
        spins: Shaped[Array, "H W"],
        key: PRNGKeyArray,
        duration: float | Array = 1.0,
        background_sum: int | Array = 0,
        num_total: int | None = None,
    ) -> Int8[Array, "H W"]:
        """Advance the given spins by a continuous-time interval ``duration`` >= 0."""
        boundary = _field(spins, background_sum, num_total)
        return self.patch_step(spins, key, duration, boundary)[0]

    def accept_thresholds(self, num_sites: int, background_sum, num_total) -> UInt32[Array, "2 m"]:
        """Integer acceptance thresholds ``floor(2**32 w)`` of a patch of ``num_sites`` spins:
        row ``s > 0``, column ``(p + n) / 2`` for the patch sum ``p = -n, -n + 2, ..., n``
        (the whole system's sum is ``background_sum + p``)."""
        patch_sum = jnp.arange(-num_sites, num_sites + 1, 2, dtype=jnp.int32)
        total = patch_sum + jnp.asarray(background_sum, jnp.int32)
        spin = jnp.array([[-1], [1]], jnp.int32)
        return _uniformized.accept_threshold(self.flip_rate(spin, total[None], num_total))

    def _process(self, spins, boundary):
        shape = spins.shape
        n = spins.size
        if isinstance(boundary, MeanField):
            background_sum, num_total = boundary.background_sum, boundary.num_total
        else:
            background_sum, num_total = 0, n
        flat = spins.reshape(-1)
        thresholds = self.accept_thresholds(n, background_sum, num_total).reshape(-1)
        patch_sum = flat.astype(jnp.int32).sum()

        def attempt(carry, k, bits, live):
            # Scalar reads and one scalar write: the state is never copied.
            flat, patch_sum, thresholds = carry
            s_k = _read(flat, k)
            index = jnp.where(s_k > 0, n + 1, 0) + ((patch_sum + n) >> 1)
            accepted = live & (bits < _read(thresholds, index))

            def write(carry, ordered):
                flat, patch_sum, thresholds = carry
                patch_sum = patch_sum - jnp.where(accepted, 2 * s_k.astype(jnp.int32), 0)
                # |patch_sum| <= n always: the condition orders the sum's read of s_k before
                # the in-place write, as ``ordered`` does for the flip count.
                flip = accepted & ordered & (patch_sum >= -n)
                flat = jax.lax.dynamic_update_index_in_dim(flat, jnp.where(flip, -s_k, s_k), k, 0)
                return flat, patch_sum, thresholds

            return accepted, write

        def finish(carry):
            return carry[0].reshape(shape)

        # The table rides in the carry (it depends on the patch's background): a batch runs
        # as lanes that switch patches (``_uniformized.run_attempts_lanes``).
        return (flat, patch_sum, thresholds), attempt, finish


def _read(array, index):
    """One element of a 1D array by a scalar dynamic slice (never a gather)."""
    return jax.lax.dynamic_index_in_dim(array, index, keepdims=False)


def _field(spins, background_sum, num_total) -> MeanField:
    return MeanField(background_sum, spins.size if num_total is None else num_total)


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
