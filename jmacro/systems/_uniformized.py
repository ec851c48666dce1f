"""Exact sequential simulation of a continuous-time spin-flip process by uniformization.

Every site carries a Poisson clock of rate 1 (an upper bound on the heat-bath rate
w_i = 1 / (1 + exp(beta dH_i)) <= 1). At each tick of the merged clock (rate = number of
updatable sites n) a site is chosen uniformly and flipped with probability w_i. Thinning a
rate-n Poisson process this way produces exactly the continuous-time Markov process with
flip rates w_i, at O(1) work per attempt (no O(n) scan of all rates).

Because the tick times are independent of the jump chain, times never need to be drawn
per attempt:
- by events: the time of the A-th tick, A being the number of attempts used to collect the
  requested number of flips, is Gamma(A, rate=n);
- by time: the number of ticks in a window of length t is Poisson(n t).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import jax.random as jr
from jaxtyping import Array, Float, Int, PRNGKeyArray

from jmacro._checks import check_positive_int, is_concrete

AttemptFn = Callable[[Any, Int[Array, ""], Float[Array, ""], jax.Array], tuple[Any, jax.Array]]

# Attempts drawn per random-number batch: large enough to amortise the generator's call
# overhead, small enough that the unused tail of the last batch costs little.
_CHUNK = 128
_INT_MAX = jnp.iinfo(jnp.int32).max
# Above this many attempts per requested flip the rates are too small to reach the requested
# number of flips; the event-count driver then stops and reports an infinite elapsed time.
_MAX_ATTEMPTS_PER_EVENT = 10_000


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

    Args:
        carry: the simulation state (a pytree), threaded through ``attempt_fn``.
        key: PRNG key.
        num_sites: n, the number of updatable sites; attempts pick ``k`` uniformly in [0, n).
        attempt_fn: ``(carry, k, u, live) -> (carry, accepted)``; must flip site ``k`` iff
            ``live and u < w_k`` and report that boolean. ``u ~ U[0, 1)``.
        max_events, max_attempts: stopping rule (the first reached wins).

    Returns:
        ``(carry, num_flips, num_attempts)``.
    """

    def chunk_body(state):
        carry, num_flips, num_attempts, key = state
        key, key_site, key_u = jr.split(key, 3)
        sites = jr.randint(key_site, (_CHUNK,), 0, num_sites)
        uniforms = jr.uniform(key_u, (_CHUNK,))
        # Materialise the random numbers once per chunk: without the barrier XLA may fuse
        # their generation into every iteration of the attempt loop.
        sites, uniforms = jax.lax.optimization_barrier((sites, uniforms))

        def attempt(j, inner):
            carry, num_flips, num_attempts = inner
            live = (num_flips < max_events) & (num_attempts < max_attempts)
            carry, accepted = attempt_fn(carry, sites[j], uniforms[j], live)
            return (
                carry,
                num_flips + accepted.astype(jnp.int32),
                num_attempts + live.astype(jnp.int32),
            )

        carry, num_flips, num_attempts = jax.lax.fori_loop(
            0, _CHUNK, attempt, (carry, num_flips, num_attempts)
        )
        return carry, num_flips, num_attempts, key

    def keep_going(state):
        _, num_flips, num_attempts, _ = state
        return (num_flips < max_events) & (num_attempts < max_attempts)

    zero = jnp.zeros((), jnp.int32)
    carry, num_flips, num_attempts, _ = jax.lax.while_loop(
        keep_going, chunk_body, (carry, zero, zero, key)
    )
    return carry, num_flips, num_attempts


def elapsed_time(
    key: PRNGKeyArray, num_attempts: Int[Array, ""], num_sites: int
) -> Float[Array, ""]:
    """Continuous time of the ``num_attempts``-th tick of a rate-``num_sites`` Poisson clock.

    ``dt ~ Gamma(num_attempts, rate=num_sites)``; exactly 0 for zero attempts.
    """
    shape = jnp.maximum(num_attempts, 1).astype(jnp.float32)
    dt = jr.gamma(key, shape) / num_sites
    return jnp.where(num_attempts > 0, dt, 0.0)


def num_ticks(key: PRNGKeyArray, duration: Float[Array, ""], num_sites: int) -> Int[Array, ""]:
    """Number of ticks of a rate-``num_sites`` Poisson clock in a window: Poisson(n t)."""
    return jr.poisson(key, duration * num_sites).astype(jnp.int32)


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
        num_sites: n, the rate of the merged Poisson clock.

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
