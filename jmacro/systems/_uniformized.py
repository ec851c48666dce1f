"""Exact sequential simulation of a continuous-time spin-flip process by uniformization.

Every site carries a Poisson clock of rate 1 (an upper bound on the heat-bath rate
w_i = 1 / (1 + exp(beta dH_i)) <= 1). At each tick of the merged clock (rate = number of
updatable sites n) a site is chosen uniformly and flipped with probability w_i. Thinning a
rate-n Poisson process this way produces exactly the continuous-time Markov process with
flip rates w_i, at O(1) work per attempt (no O(n) scan of all rates).

Each attempt uses two uniform 32-bit words: one picks the site (the top bits when n is a power
of two; otherwise ``b mod n`` for ``b < n floor(2**32 / n)`` and a null tick above, the clock
running at ``n 2**32 / (n floor(2**32 / n))`` so that each site still ticks at rate 1), the
other accepts iff it is below the integer threshold ``floor(2**32 w_i)``. The words are drawn
a block of attempts at a time by an unrolled Threefry (``jmacro.systems._bits``).

Because the tick times are independent of the jump chain, times never need to be drawn
per attempt:
- by events: the time of the A-th tick, A being the number of attempts used to collect the
  requested number of flips, is Gamma(A, rate=n);
- by time: the number of ticks in a window of length t is Poisson(n t).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
from jaxtyping import Array, Float, Int, PRNGKeyArray, UInt32

from jmacro._checks import check_positive_int, is_concrete
from jmacro.systems import _bits

AttemptFn = Callable[
    [Any, Int[Array, ""], UInt32[Array, ""], jax.Array],
    tuple[jax.Array, Callable[[Any, jax.Array], Any]],
]

# Attempts per block: the 2 * _BLOCK random words of a block are drawn at once (amortising the
# generator's fixed cost; the unrolled hash vectorises over the block), and the stopping rule is
# checked between blocks only through the per-attempt ``live`` flag. Small blocks keep the
# unused tail of the last block (and, under vmap, the lock-step overshoot) short.
_BLOCK = 128
# Attempts per iteration of the scalar attempt loop. Keep 1: unrolled, XLA fuses the flip
# count of one attempt into the next ones, which then read an old state after the in-place
# write and force a copy of the whole state per iteration (checked by tests/test_kernels.py).
_UNROLL = 1
_INT_MAX = jnp.iinfo(jnp.int32).max
# Above this many attempts per requested flip the rates are too small to reach the requested
# number of flips; the event-count driver then stops and reports an infinite elapsed time.
_MAX_ATTEMPTS_PER_EVENT = 10_000
# Largest float32 below 2**32: integer thresholds are clamped to it.
_THRESHOLD_MAX = 4294967040.0


def accept_threshold(rate: Float[Array, "..."]) -> UInt32[Array, "..."]:
    """``floor(2**32 w)`` as uint32: a uniform 32-bit word ``b`` has ``P(b < t) = t / 2**32``.

    Exact for float32 rates up to the clamp at ``2**32 - 256`` (a rate that rounds to 1.0 in
    float32 is accepted with probability ``1 - 2**-24``, within float32's own rounding).
    """
    scaled = jnp.floor(rate.astype(jnp.float32) * jnp.float32(2.0**32))
    return jnp.clip(scaled, 0.0, _THRESHOLD_MAX).astype(jnp.uint32)


def site_choice(num_sites: int) -> tuple[int, int | None]:
    """``(shift, limit)`` of the map from a uniform 32-bit word to a site in ``[0, n)``.

    A power of two n takes the top ``log2 n`` bits (``limit`` None). Otherwise a word
    ``b < limit = n * floor(2**32 / n)`` picks site ``b mod n`` and a larger word is a null tick
    that flips nothing; the merged clock then runs at ``clock_rate(n) = n 2**32 / limit`` so that
    every site still ticks at rate exactly 1 (thinning, as for the rejected attempts).
    """
    if num_sites < 1 or num_sites > 2**31 - 1:
        raise ValueError(f"the number of sites must be in [1, 2**31), got {num_sites}.")
    if num_sites & (num_sites - 1) == 0:
        return 32 - (num_sites.bit_length() - 1), None
    return 0, (2**32 // num_sites) * num_sites


def clock_rate(num_sites: int) -> float:
    """Rate of the merged clock whose ticks are the attempts (n, up to the null ticks)."""
    limit = site_choice(num_sites)[1]
    return float(num_sites) if limit is None else num_sites * 2.0**32 / limit


def pick_site(word: UInt32[Array, "*b"], num_sites: int) -> tuple[Int[Array, "*b"], jax.Array]:
    """``(k, valid)``: the site each uniform word picks, and False for a null tick."""
    shift, limit = site_choice(num_sites)
    if limit is None:
        if shift == 32:  # one site
            return jnp.zeros(jnp.shape(word), jnp.int32), jnp.ones(jnp.shape(word), bool)
        return (word >> np.uint32(shift)).astype(jnp.int32), jnp.ones(jnp.shape(word), bool)
    return (word % np.uint32(num_sites)).astype(jnp.int32), word < np.uint32(limit)


def run_attempts(
    carry: Any,
    key: PRNGKeyArray,
    num_sites: int,
    attempt_fn: AttemptFn,
    *,
    max_events: Int[Array, ""] | int = _INT_MAX,
    max_attempts: Int[Array, ""] | int = _INT_MAX,
) -> tuple[Any, Int[Array, ""], Int[Array, ""]]:
    """Run uniformized attempts until ``max_events`` flips or ``max_attempts`` attempts.

    Attempt ``a`` uses two uniform 32-bit words of the key's stream (``_bits.block_bits``):
    word ``j`` of block ``a // _BLOCK`` picks the site (``pick_site``) and word
    ``_BLOCK + j`` decides acceptance; ``j = a % _BLOCK``.

    Args:
        carry: the simulation state (a pytree), threaded through ``attempt_fn``.
        key: PRNG key (threefry).
        num_sites: n, the number of updatable sites.
        attempt_fn: ``(carry, k, bits, live) -> (accepted, write)``: reads site ``k`` and
            its neighbours, ``accepted = live and bits < accept_threshold(w_k)`` (``bits`` a
            uniform uint32 word), and ``write(carry, ordered) -> carry`` flips site k iff
            ``accepted and ordered``. ``ordered`` is always True; it carries a data dependency
            from everything that consumes the reads (the flip count) to the in-place write, so
            XLA never copies the state to keep the old values alive. Read and write single
            sites (scalar dynamic slices): a gather or a whole-state copy costs 10-60x.
        max_events, max_attempts: stopping rule (the first reached wins); null ticks count
            as attempts.

    Returns:
        ``(carry, num_flips, num_attempts)``.
    """
    k0, k1 = _bits.key_words(key)

    def block_body(state):
        carry, num_flips, num_attempts, block = state
        words = _bits.block_bits(k0, k1, block, 2 * _BLOCK)
        # Materialise the words once per block: without the barrier XLA may fuse their
        # generation into every iteration of the attempt loop.
        words = jax.lax.optimization_barrier(words)

        def attempt(j, inner):
            carry, num_flips, num_attempts = inner
            site_word = jax.lax.dynamic_index_in_dim(words, j, keepdims=False)
            accept_word = jax.lax.dynamic_index_in_dim(words, j + _BLOCK, keepdims=False)
            k, valid = pick_site(site_word, num_sites)
            live = (num_flips < max_events) & (num_attempts < max_attempts)
            accepted, write = attempt_fn(carry, k, accept_word, live & valid)
            num_flips = num_flips + accepted.astype(jnp.int32)
            # ``num_flips >= 0`` always holds; as an operand of the write it orders every read
            # of the old state (the flip count needs them) before the in-place write, so XLA
            # needs no copy of the state (it cannot prove the condition and drop it).
            return write(carry, num_flips >= 0), num_flips, num_attempts + live.astype(jnp.int32)

        carry, num_flips, num_attempts = jax.lax.fori_loop(
            0, _BLOCK, attempt, (carry, num_flips, num_attempts), unroll=_UNROLL
        )
        return carry, num_flips, num_attempts, block + np.uint32(1)

    def keep_going(state):
        _, num_flips, num_attempts, _ = state
        return (num_flips < max_events) & (num_attempts < max_attempts)

    zero = jnp.zeros((), jnp.int32)
    carry, num_flips, num_attempts, _ = jax.lax.while_loop(
        keep_going, block_body, (carry, zero, zero, jnp.zeros((), jnp.uint32))
    )
    return carry, num_flips, num_attempts


def elapsed_time(
    key: PRNGKeyArray, num_attempts: Int[Array, ""], num_sites: int
) -> Float[Array, ""]:
    """Continuous time of the ``num_attempts``-th tick of the merged clock of ``num_sites``.

    ``dt ~ Gamma(num_attempts, rate=clock_rate(num_sites))``; exactly 0 for zero attempts.
    """
    shape = jnp.maximum(num_attempts, 1).astype(jnp.float32)
    dt = jr.gamma(key, shape) / jnp.float32(clock_rate(num_sites))
    return jnp.where(num_attempts > 0, dt, 0.0)


def num_ticks(key: PRNGKeyArray, duration: Float[Array, ""], num_sites: int) -> Int[Array, ""]:
    """Number of ticks of the merged clock of ``num_sites`` in a window: Poisson(rate t)."""
    return jr.poisson(key, duration * jnp.float32(clock_rate(num_sites))).astype(jnp.int32)


def advance_events(
    run: Callable[..., tuple[Any, Int[Array, ""], Int[Array, ""]]],
    key: PRNGKeyArray,
    num_events: Int[Array, ""] | int | None,
    num_sites: int,
) -> tuple[Any, Float[Array, ""]]:
    """Advance by exactly ``num_events`` flips (default ``num_sites``) and time the result.

    Args:
        run: ``run(key, max_events=..., max_attempts=...) -> (state, num_flips,
            num_attempts)``, a system's uniformized driver.
        key: PRNG key.
        num_events: positive integer (may be traced); None means ``num_sites``.
        num_sites: n, the number of sites (the merged clock runs at ``clock_rate(n)``).

    Returns:
        ``(state, dt)``; ``dt`` is ``inf`` if more than 10^4 attempts per flip were needed
        (a numerically frozen state).
    """
    if num_events is None:
        num_events = num_sites
    elif is_concrete(num_events):
        num_events = check_positive_int(num_events, "num_events")
    max_attempts = jnp.minimum(
        jnp.asarray(num_events, jnp.float32) * _MAX_ATTEMPTS_PER_EVENT, 2.0**31 - 2**7
    ).astype(jnp.int32)
    key_run, key_time = jr.split(key)
    state, num_flips, num_attempts = run(key_run, max_events=num_events, max_attempts=max_attempts)
    dt = elapsed_time(key_time, num_attempts, num_sites)
    return state, jnp.where(num_flips < num_events, jnp.inf, dt)


# ---------------------------------------------------------------------------- batched lanes
# Default lanes of the batched driver: enough to amortise each attempt's fixed cost, few
# enough that the lanes' states stay in cache and switching systems keeps them busy.
_LANES = 256


def run_attempts_lanes(
    carry: Any,
    keys: UInt32[Array, "B 2"],
    num_sites: int,
    attempt_fn: AttemptFn,
    *,
    max_events: Int[Array, " B"],
    max_attempts: Int[Array, " B"],
    num_lanes: int | None = None,
) -> tuple[Any, Int[Array, " B"], Int[Array, " B"]]:
    """``run_attempts`` for B independent systems on L <= B lanes (``jax.vmap`` of the attempt).

    Each lane runs one system at a time, block by block; at the end of a block, a lane whose
    system has stopped writes it back and takes the next system not yet started. Under a
    plain ``jax.vmap`` of ``run_attempts`` every system would wait, block after block, for the
    slowest of the batch (for a fixed number of flips about half the lock-step attempts were
    idle). System b consumes exactly the random words, in the same order, that
    ``run_attempts`` consumes for it alone (word j of block a of its own key's stream picks
    the site, word ``_BLOCK + j`` decides acceptance) and stops by the same rule, so the
    result equals the per-system result bit for bit (tested).

    Args:
        carry: the B systems' carries (``_process``), a pytree with a leading batch axis;
            everything an attempt needs of its system must be in it (lanes switch systems).
        keys: ``(B, 2)`` uint32 key words (``jax.random.key_data``).
        num_sites: n, the number of updatable sites of every system.
        attempt_fn: one system's attempt, as for ``run_attempts``.
        max_events, max_attempts: ``(B,)`` int32 stopping rule of each system.
        num_lanes: L (capped at B); default ``_LANES``.

    Returns:
        ``(carry, num_flips, num_attempts)``, the counts ``(B,)``.
    """
    size = max_events.shape[0]
    lanes = min(_LANES if num_lanes is None else num_lanes, size)
    stop = (max_events, max_attempts)

    def step(carry, k, bits, live):
        accepted, write = attempt_fn(carry, k, bits, live)
        return accepted, write(carry, jnp.bool_(True))

    step = jax.vmap(step)

    def block_body(state):
        state = _refill(state, stop)
        events_cap, attempts_cap = _limits(state.system, stop)
        lane_keys = keys[jnp.minimum(state.system, size - 1)]
        # (2 * _BLOCK, L): row j holds word j of every lane's block, contiguous.
        b0, b1 = _bits.threefry2x32(
            lane_keys[None, :, 0], lane_keys[None, :, 1], state.block[None, :], _COUNTERS[:, None]
        )
        words = jax.lax.optimization_barrier(b0 ^ b1)

        def attempt(j, inner):
            lanes_carry, flips, attempts = inner
            site_word = jax.lax.dynamic_index_in_dim(words, j, keepdims=False)
            accept_word = jax.lax.dynamic_index_in_dim(words, j + _BLOCK, keepdims=False)
            k, valid = pick_site(site_word, num_sites)
            live = (flips < events_cap) & (attempts < attempts_cap)
            accepted, lanes_carry = step(lanes_carry, k, accept_word, live & valid)
            flips = flips + accepted.astype(jnp.int32)
            return lanes_carry, flips, attempts + live.astype(jnp.int32)

        inner = (state.lanes_carry, state.flips, state.attempts)
        lanes_carry, flips, attempts = jax.lax.fori_loop(0, _BLOCK, attempt, inner)
        block = state.block + np.uint32(1)
        return state._replace(lanes_carry=lanes_carry, flips=flips, attempts=attempts, block=block)

    def keep_going(state):
        events_cap, attempts_cap = _limits(state.system, stop)
        running = (state.flips < events_cap) & (state.attempts < attempts_cap)
        return (state.queued < size) | jnp.any(running)

    lane_zeros = jnp.zeros((lanes,), jnp.int32)
    counts = jnp.zeros((size,), jnp.int32)
    init = _Lanes(
        carry,
        counts,
        counts,
        jax.tree.map(lambda x: x[:lanes], carry),
        jnp.full((lanes,), size, jnp.int32),
        lane_zeros,
        lane_zeros,
        lane_zeros.astype(jnp.uint32),
        jnp.int32(0),
    )
    state = _refill(jax.lax.while_loop(keep_going, block_body, init), stop)
    return state.store, state.flips_out, state.attempts_out


class _Lanes(NamedTuple):
    """State of ``run_attempts_lanes``: the B systems (``store`` and their final counts), and
    per lane the system it runs (B: idle), its carry, counts and next block; ``queued``:
    systems started so far."""

    store: Any
    flips_out: Int[Array, " B"]
    attempts_out: Int[Array, " B"]
    lanes_carry: Any
    system: Int[Array, " L"]
    flips: Int[Array, " L"]
    attempts: Int[Array, " L"]
    block: UInt32[Array, " L"]
    queued: Int[Array, ""]


def _limits(system, stop):
    """The stopping rule of each lane's system; an idle lane (``system == B``) never runs."""
    max_events, max_attempts = stop
    size = max_events.shape[0]
    safe = jnp.minimum(system, size - 1)
    running = system < size
    return jnp.where(running, max_events[safe], 0), jnp.where(running, max_attempts[safe], 0)


def _refill(state: _Lanes, stop) -> _Lanes:
    """Lanes whose system stopped write it back; free lanes take the next systems in order."""
    size = stop[0].shape[0]
    events_cap, attempts_cap = _limits(state.system, stop)
    free = ~((state.flips < events_cap) & (state.attempts < attempts_cap))
    # Index ``size`` drops the write (idle lanes).
    target = jnp.where(free & (state.system < size), state.system, size)

    def write(store, values):
        return store.at[target].set(values, mode="drop")

    store = jax.tree.map(write, state.store, state.lanes_carry)
    new = state.queued + jnp.cumsum(free.astype(jnp.int32)) - 1
    take = free & (new < size)
    system = jnp.where(free, jnp.where(take, new, size), state.system)
    loaded = jax.tree.map(lambda s: s[jnp.minimum(system, size - 1)], store)

    def choose(old, new_):
        return jnp.where(take.reshape(take.shape + (1,) * (old.ndim - 1)), new_, old)

    return _Lanes(
        store,
        write(state.flips_out, state.flips),
        write(state.attempts_out, state.attempts),
        jax.tree.map(choose, state.lanes_carry, loaded),
        system,
        jnp.where(free, 0, state.flips),
        jnp.where(free, 0, state.attempts),
        jnp.where(free, jnp.uint32(0), state.block),
        jnp.minimum(state.queued + free.astype(jnp.int32).sum(), size),
    )


_COUNTERS = np.arange(2 * _BLOCK, dtype=np.uint32)
