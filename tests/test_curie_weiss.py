"""CurieWeiss: exactness against the birth-death chain of N_+, mean-field limit, patches."""

import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest
import scipy.linalg
from scipy.special import gammaln

from jmacro import observables
from jmacro.systems import CurieWeiss, mean_field_magnetisation

from . import exact

T, H = 1.1, 0.1


def birth_death(num_evolving, temperature, field, background=0, num_total=None):
    """Generator of k = number of up spins among ``num_evolving`` spins (the rest frozen with
    sum ``background``) and the log-Boltzmann weight of each k."""
    num_total = num_evolving if num_total is None else num_total
    k = np.arange(num_evolving + 1)
    total = 2 * k - num_evolving + background  # spin sum of the whole system

    def rate(spin):
        d_energy = 2.0 * spin * ((total - spin) / num_total + field)
        return 1.0 / (1.0 + np.exp(d_energy / temperature))

    up = (num_evolving - k) * rate(-1)  # a down spin flips up: k -> k + 1
    down = k * rate(1)
    q = np.diag(up[:-1], 1) + np.diag(down[1:], -1)
    q -= np.diag(q.sum(axis=1))
    m = total / num_total
    log_weight = (
        gammaln(num_evolving + 1)
        - gammaln(k + 1)
        - gammaln(num_evolving - k + 1)
        + num_total * (0.5 * m**2 + field * m) / temperature
    )
    return k, q, log_weight


def law_from_log(log_weight):
    w = np.exp(log_weight - log_weight.max())
    return w / w.sum()


def num_up(spins):
    return (np.asarray(spins).reshape(len(spins), -1) > 0).sum(axis=1)


def test_transient_and_equilibrium_match_birth_death_chain():
    """N = 16: E[N_+(t)] from all-down at t = 0.5 follows exp(Q t); at t = 60 (relaxation
    time < 6) the law of N_+ is the exact finite-N Boltzmann law (chi-square and mean)."""
    model, num = CurieWeiss(T, H), 6000
    k, q, log_weight = birth_death(16, T, H)
    start = -jnp.ones((num, 4, 4), jnp.int8)
    for time, key in ((0.5, 0), (60.0, 1)):
        run = jax.jit(jax.vmap(lambda s, kk, t=time: model.advance_time(s, kk, t)))
        ups = num_up(run(start, jr.split(jr.key(key), num)))
        law = scipy.linalg.expm(q * time)[0]
        exact.assert_mean_within(ups, law @ k, what=f"N_+({time})")
    pi = law_from_log(log_weight)
    np.testing.assert_allclose(law, pi, atol=1e-6)  # t = 60 is stationary
    from scipy.stats import chisquare

    observed = np.bincount(ups, minlength=17)
    keep = pi * num > 5
    expected = pi[keep] * num
    assert chisquare(observed[keep], expected * observed[keep].sum() / expected.sum()).pvalue > 1e-4


def test_relaxation_time_claim():
    _, q, _ = birth_death(16, T, H)
    gap = -np.sort(np.real(np.linalg.eigvals(q)))[-2]
    assert 1.0 / gap < 6.0


def test_waiting_time_per_event():
    model, num = CurieWeiss(T, H), 10000
    spins = model.init_state(jr.key(2), (4, 8), magnetisation=0.3)
    total = int(spins.astype(jnp.int32).sum())
    rates = np.asarray(model.flip_rate(spins, total, spins.size), np.float64)
    _, dt = jax.jit(jax.vmap(lambda kk: model.advance_events(spins, kk, 1)))(
        jr.split(jr.key(3), num)
    )
    exact.assert_mean_within(dt, 1.0 / rates.sum(), what="waiting time")


def test_patch_in_background_field_matches_enumeration():
    """4 spins evolving inside N = 64 with a frozen background sum of 30: the patch's N_+
    relaxes to the exact conditional Boltzmann law."""
    model, num, background = CurieWeiss(T, H), 6000, 30
    k, q, log_weight = birth_death(4, T, H, background=background, num_total=64)
    pi = law_from_log(log_weight)
    np.testing.assert_allclose(pi @ q, 0.0, atol=1e-9)  # the weights are stationary for Q
    start = -jnp.ones((num, 2, 2), jnp.int8)
    run = jax.jit(
        jax.vmap(
            lambda s, kk: model.advance_time(s, kk, 20.0, background_sum=background, num_total=64)
        )
    )
    exact.assert_mean_within(num_up(run(start, jr.split(jr.key(4), num))), pi @ k)


def test_large_n_magnetisation_matches_mean_field():
    """N = 64^2: the time-averaged magnetisation equals the exact finite-N mean within 4 SE,
    and that mean is within 1e-3 of the mean-field root of m = tanh(beta (m + h))."""
    model, num = CurieWeiss(T, H), 24
    size = 64
    n = size * size
    ks = np.arange(n + 1)
    m = (2 * ks - n) / n
    log_w = gammaln(n + 1) - gammaln(ks + 1) - gammaln(n - ks + 1) + n * (0.5 * m**2 + H * m) / T
    exact_mean = law_from_log(log_w) @ m
    m_star = mean_field_magnetisation(T, H)
    assert abs(exact_mean - m_star) < 1e-3

    def one(key):
        k0, k1 = jr.split(key)
        spins = model.advance_time(model.init_state(k0, (size, size), m_star), k1, 10.0)

        def segment(s, kk):
            s = model.advance_time(s, kk, 4.0)
            return s, observables.magnetisation(s)

        _, mags = jax.lax.scan(segment, spins, jr.split(k1, 8))
        return mags.mean()

    per_run = jax.jit(jax.vmap(one))(jr.split(jr.key(5), num))
    exact.assert_mean_within(per_run, exact_mean, what="<m>")


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: CurieWeiss(temperature=0.0), "temperature"),
        (
            lambda: CurieWeiss().advance_events(jnp.ones((4, 4)), jr.key(0), num_total=8),
            "num_total",
        ),
        (lambda: CurieWeiss().advance_events(jnp.ones((4, 4)), jr.key(0), 0), "num_events"),
        (lambda: CurieWeiss().advance_time(jnp.full((4, 4), 2), jr.key(0)), "-1"),
        (lambda: CurieWeiss().advance_time(jnp.ones((4, 4)), jr.key(0), -0.5), "duration"),
    ],
)
def test_bad_input_raises_clear_error(build, message):
    with pytest.raises((ValueError, TypeError), match=message):
        build()
