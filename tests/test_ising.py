"""GlauberIsing: exactness against enumeration, physics against Onsager, invariants, errors."""

import chex
import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

from jmacro import observables
from jmacro.systems import GlauberIsing, onsager_energy_per_site

from . import exact

T, H = 2.5, 0.1


def state_index(spins) -> np.ndarray:
    """Row of ``exact.all_states`` for each lattice in a batch (first site = top bit)."""
    bits = (np.asarray(spins).reshape(len(spins), -1) + 1) // 2
    n = bits.shape[1]
    return bits @ (1 << np.arange(n - 1, -1, -1))


def batch_from_one(spins, num):
    return jnp.broadcast_to(spins, (num, *spins.shape))


@pytest.mark.parametrize("method", ["parallel", "sequential"])
def test_transient_law_matches_generator(method):
    """E[m(t)] and E[E(t)] from all-up 3x3 at t = 0.4 and 1.5 follow exp(Q t) exactly."""
    shape, num = (3, 3), 4000
    model = GlauberIsing(T, H)
    states = exact.all_states(9)
    q = exact.generator(states, exact.ising_rates(states, shape, T, H))
    start = jnp.ones(shape, jnp.int8)
    mags = states.mean(axis=1)
    energies = exact.ising_energy(states, shape, H) / 9
    for i, time in enumerate((0.4, 1.5)):
        law = exact.transient(q, len(states) - 1, time)  # all-up is the last state
        run = jax.jit(jax.vmap(lambda s, k, t=time: model.advance_time(s, k, t, method=method)))
        out = run(batch_from_one(start, num), jr.split(jr.key(i), num))
        idx = state_index(out)
        exact.assert_mean_within(mags[idx], law @ mags, what=f"m({time})")
        exact.assert_mean_within(energies[idx], law @ energies, what=f"E({time})")


@pytest.mark.parametrize("method", ["parallel", "sequential"])
def test_long_run_distribution_is_boltzmann(method):
    """After a long time a 3x3 lattice is Boltzmann distributed: chi-square on 512 states
    lumped into (E, M) classes, plus the mean energy and magnetisation within 4 SE. The
    generator's relaxation time at T = 3.5 is 7.0, so t = 80 leaves an e^-11 bias."""
    shape, num, temperature = (3, 3), 8000, 3.5
    model = GlauberIsing(temperature, H)
    states = exact.all_states(9)
    energies = exact.ising_energy(states, shape, H)
    pi = exact.boltzmann(energies, temperature)
    start = jax.vmap(lambda k: model.init_state(k, shape))(jr.split(jr.key(1), num))
    run = jax.jit(jax.vmap(lambda s, k: model.advance_time(s, k, 80.0, method=method)))
    idx = state_index(run(start, jr.split(jr.key(2), num)))
    exact.assert_mean_within(energies[idx] / 9, pi @ energies / 9, what="energy")
    exact.assert_mean_within(states.mean(1)[idx], pi @ states.mean(1), what="magnetisation")
    _assert_chi_square(idx, pi, energies, states.sum(axis=1))


def _assert_chi_square(idx, pi, energies, magnetisations):
    """Pearson chi-square of the (E, M) class histogram; p > 1e-4 required."""
    from scipy.stats import chi2

    keys = energies * 100 + magnetisations
    classes, inverse = np.unique(keys, return_inverse=True)
    expected = np.bincount(inverse, weights=pi) * len(idx)
    observed = np.bincount(inverse[idx], minlength=len(classes))
    keep = expected > 5  # standard validity condition of the chi-square approximation
    stat = ((observed[keep] - expected[keep]) ** 2 / expected[keep]).sum()
    p_value = chi2.sf(stat, keep.sum() - 1)
    assert p_value > 1e-4, f"chi-square {stat:.1f} on {keep.sum() - 1} dof, p = {p_value:.2g}"


def test_event_step_waiting_time_and_flip_choice_are_exact():
    """From a fixed state, one event takes Exp(R) time (mean 1/R) and flips site i with
    probability w_i / R."""
    shape, num = (4, 4), 20000
    model = GlauberIsing(T, H)
    spins = model.init_state(jr.key(3), shape)
    rates = np.asarray(model.flip_rates(spins), np.float64).reshape(-1)
    run = jax.jit(jax.vmap(lambda k: model.advance_events(spins, k, 1)))
    out, dt = run(jr.split(jr.key(4), num))
    exact.assert_mean_within(dt, 1.0 / rates.sum(), what="waiting time")
    changed = np.asarray(out != spins[None]).reshape(num, -1)
    assert np.all(changed.sum(axis=1) == 1), "exactly one spin flips per event"
    counts = changed.sum(axis=0)
    expected = num * rates / rates.sum()
    from scipy.stats import chisquare

    assert chisquare(counts, expected).pvalue > 1e-4


def _jump_chain(shape, field=H):
    states = exact.all_states(shape[0] * shape[1])
    energies = exact.ising_energy(states, shape, field)
    rates = exact.ising_rates(states, shape, T, field)
    total = rates.sum(axis=1)
    jump = (exact.generator(states, rates) + np.diag(total)) / total[:, None]
    return states, energies, exact.boltzmann(energies, T), total, jump


def test_event_steps_follow_the_jump_chain():
    """From Boltzmann-distributed 3x3 states, the state after 20 flip events has the law
    pi P^20 (P the embedded jump chain), and the elapsed time has the mean
    sum_k (pi P^k) . (1/R): checks both the events semantics and the time bookkeeping."""
    shape, num, num_events = (3, 3), 8000, 20
    states, energies, pi, total, jump = _jump_chain(shape)
    law, expected_time = pi.copy(), 0.0
    for _ in range(num_events):
        expected_time += law @ (1.0 / total)
        law = law @ jump
    rows = np.random.default_rng(0).choice(len(pi), size=num, p=pi)
    start = jnp.asarray(states[rows].reshape(num, *shape), jnp.int8)
    model = GlauberIsing(T, H)
    out, dt = jax.jit(jax.vmap(lambda s, k: model.advance_events(s, k, num_events)))(
        start, jr.split(jr.key(6), num)
    )
    idx = state_index(out)
    exact.assert_mean_within(dt, expected_time, what="step time")
    exact.assert_mean_within(energies[idx], law @ energies, what="energy after events")
    _assert_chi_square(idx, law, energies, states.sum(axis=1))


def test_frozen_halo_patch_matches_enumeration():
    """A 3x3 patch inside a frozen all-up halo relaxes to the Boltzmann law of the patch
    with those fixed boundary spins (generator's stationary law), in both time methods.
    Relaxation time 2.1: t = 25 leaves an e^-12 bias."""
    shape, num = (3, 3), 6000
    model = GlauberIsing(T, 0.0)
    halo = np.ones((5, 5), np.int8)
    states = exact.all_states(9)
    q = exact.generator(states, exact.ising_rates(states, shape, T, 0.0, halo=halo))
    pi = exact.stationary(q)
    mags = states.mean(axis=1)
    start = jnp.full((num, *shape), -1, jnp.int8)
    for method in ("parallel", "sequential"):
        run = jax.jit(
            jax.vmap(lambda s, k, m=method: model.advance_time(s, k, 25.0, jnp.asarray(halo), m))
        )
        idx = state_index(run(start, jr.split(jr.key(10), num)))
        exact.assert_mean_within(mags[idx], pi @ mags, what=f"halo magnetisation ({method})")
    # Without the halo the same patch (periodic, h = 0) is symmetric: <m> = 0. The all-up sea
    # must pull it strongly positive.
    assert pi @ mags > 0.5


@pytest.mark.parametrize("temperature", [1.8, 3.2])
def test_checkerboard_energy_matches_onsager(temperature):
    """Energy per site on 32x32 (correlation length ~1 at these T, so finite-size effects are
    O(exp(-L/xi)), far below the statistical error) against Onsager's exact result."""
    num, size = 16, 32
    model = GlauberIsing(temperature, 0.0)
    spins = jnp.ones((num, size, size), jnp.int8)

    @jax.jit
    def energies(spins, key):
        def one(s, k):
            k1, k2 = jr.split(k)
            s = model.checkerboard_sweeps(s, k1, 200)

            def measure(s, k):
                s = model.checkerboard_sweeps(s, k, 2)
                return s, observables.ising_energy_per_site(s)

            _, e = jax.lax.scan(measure, s, jr.split(k2, 150))
            return e.mean()

        return jax.vmap(one)(spins, jr.split(key, num))

    per_lattice = energies(spins, jr.key(11))  # time averages: independent across lattices
    exact.assert_mean_within(per_lattice, onsager_energy_per_site(temperature), what="u")


def test_continuous_time_and_checkerboard_agree_with_onsager():
    """Both dynamics give Onsager's energy at T = 3.2 (continuous time: 24 x 24, t = 60)."""
    num, size, temperature = 16, 24, 3.2
    model = GlauberIsing(temperature, 0.0)
    start = jnp.ones((num, size, size), jnp.int8)

    def one(s, k):
        def segment(s, k):
            s = model.advance_time(s, k, 1.0)
            return s, observables.ising_energy_per_site(s)

        _, e = jax.lax.scan(segment, s, jr.split(k, 60))
        return e[10:].mean()

    per_lattice = jax.jit(jax.vmap(one))(start, jr.split(jr.key(12), num))
    exact.assert_mean_within(per_lattice, onsager_energy_per_site(temperature), what="u(t)")


def test_vmap_over_temperature():
    """Temperatures are arrays: one vmapped call runs three temperatures, energies increase
    with T and each matches Onsager."""
    temperatures = jnp.array([1.8, 2.6, 3.4])
    num, size = 8, 32

    def energy(temperature, key):
        model = GlauberIsing(temperature, 0.0)
        s = model.checkerboard_sweeps(jnp.ones((size, size), jnp.int8), key, 300)
        return observables.ising_energy_per_site(s)

    keys = jr.split(jr.key(13), (3, num))
    u = jax.jit(jax.vmap(jax.vmap(energy, in_axes=(None, 0))))(temperatures, keys)
    assert u.shape == (3, num)
    means = np.asarray(u.mean(axis=1))
    assert np.all(np.diff(means) > 0)
    # Single snapshots, independent across lattices; 2.6 is closer to T_c: larger xi, still
    # well below L = 32.
    for t, row in zip(np.asarray(temperatures), np.asarray(u), strict=True):
        exact.assert_mean_within(row, onsager_energy_per_site(float(t)), what=f"u(T={t})")


def test_invariants_and_untouched_halo():
    model = GlauberIsing(T, H)
    spins = model.init_state(jr.key(14), (5, 7))  # rectangular and odd
    halo = -jnp.ones((7, 9), jnp.int8)
    outs = [
        model.advance_events(spins, jr.key(15), 50)[0],
        model.advance_events(spins, jr.key(15), 50, halo=halo)[0],
        model.advance_time(spins, jr.key(16), 2.0),
        model.advance_time(spins, jr.key(16), 2.0, halo=halo, method="sequential"),
    ]
    for out in outs:
        chex.assert_shape(out, (5, 7))
        assert out.dtype == jnp.int8
        assert np.all(np.abs(np.asarray(out)) == 1)
    # 50 flips change at most 50 sites, and an even number of them (parity).
    changed = int((outs[0] != spins).sum())
    assert changed <= 50 and changed % 2 == 0
    even = model.checkerboard_sweeps(model.init_state(jr.key(17), (6, 8)), jr.key(18), 3)
    chex.assert_shape(even, (6, 8))
    # Zero duration changes nothing.
    chex.assert_trees_all_equal(model.advance_time(spins, jr.key(19), 0.0), spins)


def test_same_key_same_result_and_jit_matches_eager():
    model = GlauberIsing(T, H)
    spins = model.init_state(jr.key(20), (8, 8))
    a = model.advance_events(spins, jr.key(21), 64)
    b = eqx.filter_jit(model.advance_events)(spins, jr.key(21), 64)
    chex.assert_trees_all_equal(a, b)


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: GlauberIsing(temperature=0.0), "temperature"),
        (lambda: GlauberIsing(temperature=-1.0), "temperature"),
        (lambda: GlauberIsing(field=float("nan")), "field"),
        (lambda: GlauberIsing().init_state(jr.key(0), (1, 8)), "at least 2"),
        (lambda: GlauberIsing().init_state(jr.key(0), (4.5, 8)), "positive integer|shape"),
        (lambda: GlauberIsing().init_state(jr.key(0), (-4, 8)), "positive integer"),
        (lambda: GlauberIsing().advance_events(jnp.zeros((4, 4), jnp.int8), jr.key(0)), "-1"),
        (
            lambda: GlauberIsing().advance_events(jnp.ones((4, 4), jnp.int8), jr.key(0), 0),
            "num_events",
        ),
        (
            lambda: GlauberIsing().advance_time(jnp.ones((4, 4), jnp.int8), jr.key(0), -1.0),
            "duration",
        ),
        (
            lambda: GlauberIsing().advance_time(jnp.ones((4, 4)), jr.key(0), 1.0, method="x"),
            "method",
        ),
        (lambda: GlauberIsing().advance_time(jnp.ones((2, 4, 4)), jr.key(0)), "vmap|spins"),
        (lambda: GlauberIsing().checkerboard_sweeps(jnp.ones((5, 4)), jr.key(0)), "even"),
        (
            lambda: GlauberIsing().advance_events(
                jnp.ones((4, 4)), jr.key(0), halo=jnp.ones((4, 4))
            ),
            "halo",
        ),
    ],
)
def test_bad_input_raises_clear_error(build, message):
    # Under pytest the jaxtyping annotations are checked at run time (TypeCheckError, a
    # TypeError); without them the library's own checks raise ValueError.
    with pytest.raises((ValueError, TypeError), match=message):
        build()
