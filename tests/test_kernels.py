"""Exactness of the optimised spin kernels, bit for bit, and guards on their compiled loops.

- ``_bits``: the unrolled Threefry gives the bits of ``jax.random.bits`` / jax's own hash.
- Each uniformized kernel (Ising periodic, Ising in a frozen halo, Curie-Weiss in a mean field)
  equals a short NumPy transcription of the algorithm fed the same random words: same final
  state, flip count and attempt count. The law of the transcription is the textbook one
  (uniform site, accept with probability floor(2**32 w) / 2**32, null ticks above the largest
  multiple of n); the statistical tests in test_ising.py / test_curie_weiss.py check the law.
- Guards: the optimised HLO of every simulator's loops holds no gather and no copy of the
  whole state (either costs 10-60x on XLA:CPU).
"""

import re

import jax
import jax.extend.random as jex_random
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

from jmacro.geometry import FrozenHalo, MeanField, Periodic
from jmacro.systems import CurieWeiss, GlauberIsing, _bits, _uniformized

# ---------------------------------------------------------------------------- random bits


@pytest.mark.parametrize("seed", [0, 1, 2**31 - 1])
@pytest.mark.parametrize("shape", [(1,), (7,), (3, 5), (2, 3, 4), (1000,), (2, 129)])
def test_random_bits_equal_jax_random_bits(seed, shape):
    key = jr.key(seed)
    np.testing.assert_array_equal(_bits.random_bits(key, shape), jr.bits(key, shape))
    jitted = jax.jit(lambda k: _bits.random_bits(k, shape))(key)
    np.testing.assert_array_equal(jitted, jr.bits(key, shape))


@pytest.mark.parametrize("block", [0, 1, 12345, 2**32 - 1])
def test_block_bits_equal_jax_threefry(block):
    key = jr.fold_in(jr.key(3), 7)
    k0, k1 = _bits.key_words(key)
    counts_hi = jnp.full(64, block, jnp.uint32)
    counts_lo = jnp.arange(64, dtype=jnp.uint32)
    hi, lo = jex_random.threefry2x32_p.bind(k0, k1, counts_hi, counts_lo)
    np.testing.assert_array_equal(_bits.block_bits(k0, k1, block, 64), hi ^ lo)


def test_vmapped_random_bits_equal_jax():
    keys = jr.split(jr.key(5), 6)
    out = jax.vmap(lambda k: _bits.random_bits(k, (33,)))(keys)
    np.testing.assert_array_equal(out, jax.vmap(lambda k: jr.bits(k, (33,)))(keys))


# ---------------------------------------------------------------------------- site choice


@pytest.mark.parametrize("n", [1, 2, 9, 15, 16, 256, 4095, 4096, 10**6])
def test_site_choice_is_uniform_over_the_valid_words(n):
    shift, limit = _uniformized.site_choice(n)
    words = np.array([0, 1, 2**31, 2**32 - 1, 12345678, 3_000_000_000], np.uint64)
    k, valid = _uniformized.pick_site(jnp.asarray(words, jnp.uint32), n)
    if limit is None:  # a power of two: top bits, never a null tick
        assert np.all(valid)
        np.testing.assert_array_equal(k, words >> shift if shift < 32 else 0)
        assert _uniformized.clock_rate(n) == n
    else:  # every site owns floor(2**32 / n) words below the limit
        assert limit % n == 0 and 2**32 - limit < n
        np.testing.assert_array_equal(valid, words < limit)
        np.testing.assert_array_equal(np.asarray(k)[valid], (words % n)[valid])
        assert _uniformized.clock_rate(n) == pytest.approx(n * 2**32 / limit, rel=1e-15)


def test_accept_threshold_is_floor_of_2_to_32_w():
    rates = jnp.array([0.0, 1e-9, 0.25, 0.5, 0.7310586, 0.999, 1.0], jnp.float32)
    got = np.asarray(_uniformized.accept_threshold(rates), np.float64)
    want = np.minimum(np.floor(np.asarray(rates, np.float64) * 2.0**32), 2.0**32 - 256)
    np.testing.assert_array_equal(got, want)


# ---------------------------------------------------------------------------- NumPy transcriptions


def _words(key, num_blocks):
    """The kernel's random words, block by block (checked against jax above)."""
    k0, k1 = _bits.key_words(key)
    size = 2 * _uniformized._BLOCK
    return np.stack([np.asarray(_bits.block_bits(k0, k1, b, size)) for b in range(num_blocks)])


def _reference_attempts(key, n, max_events, max_attempts, step):
    """Uniformized attempts in NumPy: ``step(k, bits) -> accepted`` flips site k if accepted.

    Attempt a uses word a % B of block a // B for the site and word B + a % B to accept; the
    loop stops at the end of the block in which a stopping rule was reached."""
    block_size = _uniformized._BLOCK
    shift, limit = _uniformized.site_choice(n)
    flips = attempts = 0
    block = 0
    while flips < max_events and attempts < max_attempts:
        words = _words(key, block + 1)[block]
        for j in range(block_size):
            live = flips < max_events and attempts < max_attempts
            word = int(words[j])
            if limit is None:
                k, valid = (0 if shift == 32 else word >> shift), True
            else:
                k, valid = word % n, word < limit
            if live and valid and step(k, int(words[block_size + j])):
                flips += 1
            attempts += live
        block += 1
    return flips, attempts


def _ising_reference(model, spins, key, halo, max_events, max_attempts):
    spins = np.asarray(spins, np.int64).copy()
    height, width = spins.shape
    padded = np.pad(spins, 1, mode="wrap") if halo is None else np.asarray(halo, np.int64).copy()
    thresholds = np.asarray(model.accept_thresholds(), np.int64)

    def step(k, bits):
        r, c = divmod(k, width)
        if halo is None:
            neighbours = (
                spins[(r - 1) % height, c]
                + spins[(r + 1) % height, c]
                + spins[r, (c - 1) % width]
                + spins[r, (c + 1) % width]
            )
        else:
            padded[1:-1, 1:-1] = spins
            neighbours = (
                padded[r, c + 1] + padded[r + 2, c + 1] + padded[r + 1, c] + padded[r + 1, c + 2]
            )
        s = spins[r, c]
        accepted = bits < thresholds[5 * (s > 0) + (neighbours + 4) // 2]
        if accepted:
            spins[r, c] = -s
        return accepted

    flips, attempts = _reference_attempts(key, spins.size, max_events, max_attempts, step)
    return spins, flips, attempts


def _curie_weiss_reference(model, spins, key, background, num_total, max_events, max_attempts):
    flat = np.asarray(spins, np.int64).reshape(-1).copy()
    n = flat.size
    thresholds = np.asarray(model.accept_thresholds(n, background, num_total), np.int64)
    state = {"sum": int(flat.sum())}

    def step(k, bits):
        s = flat[k]
        accepted = bits < thresholds[int(s > 0), (state["sum"] + n) // 2]
        if accepted:
            flat[k] = -s
            state["sum"] -= 2 * s
        return accepted

    flips, attempts = _reference_attempts(key, n, max_events, max_attempts, step)
    return flat.reshape(np.shape(spins)), flips, attempts


STOPS = [dict(max_events=37), dict(max_attempts=150), dict(max_events=500, max_attempts=333)]


@pytest.mark.parametrize("shape", [(4, 4), (3, 5), (2, 7)])
@pytest.mark.parametrize("stop", STOPS)
@pytest.mark.parametrize("with_halo", [False, True])
def test_ising_kernel_equals_numpy_transcription(shape, stop, with_halo):
    model = GlauberIsing(2.2, 0.3, 0.9)
    spins = model.init_state(jr.key(1), shape)
    halo = model.init_state(jr.key(2), (shape[0] + 2, shape[1] + 2)) if with_halo else None
    boundary = Periodic() if halo is None else FrozenHalo(halo)
    key = jr.key(11)
    run = jax.jit(lambda s, k: model._sequential(s, k, boundary, **stop))
    out, flips, attempts = run(spins, key)
    full = dict(max_events=2**31 - 1, max_attempts=2**31 - 1) | stop
    want, want_flips, want_attempts = _ising_reference(model, spins, key, halo, **full)
    np.testing.assert_array_equal(out, want)
    assert (int(flips), int(attempts)) == (want_flips, want_attempts)
    assert want_flips > 0


@pytest.mark.parametrize("shape", [(4, 4), (3, 5), (1, 9)])
@pytest.mark.parametrize("stop", STOPS)
@pytest.mark.parametrize("field", ["whole", "mean_field"])
def test_curie_weiss_kernel_equals_numpy_transcription(shape, stop, field):
    model = CurieWeiss(0.9, 0.05, 1.2)
    spins = model.init_state(jr.key(3), shape, 0.3)
    n = shape[0] * shape[1]
    background, num_total = (0, n) if field == "whole" else (-7, n + 41)
    boundary = Periodic() if field == "whole" else MeanField(background, num_total)
    key = jr.key(12)
    run = jax.jit(lambda s, k: model._sequential(s, k, boundary, **stop))
    out, flips, attempts = run(spins, key)
    full = dict(max_events=2**31 - 1, max_attempts=2**31 - 1) | stop
    want, want_flips, want_attempts = _curie_weiss_reference(
        model, spins, key, background, num_total, **full
    )
    np.testing.assert_array_equal(out, want)
    assert (int(flips), int(attempts)) == (want_flips, want_attempts)
    assert want_flips > 0


LANE_CASES = [
    # (shape, halo): a non-power-of-two lattice (null ticks), the pipelines' 16x16 patch in
    # its frozen halo, and a long thin one.
    ((3, 5), False),
    ((16, 16), True),
    ((2, 32), False),
]


@pytest.mark.parametrize("shape, with_halo", LANE_CASES)
def test_vmapped_ising_equals_one_lattice_at_a_time(shape, with_halo, monkeypatch):
    """Under jax.vmap the lattices run as vector lanes of bit rows (``_lane_process``); each
    must consume its own words exactly as alone: same state, flip and attempt counts. The
    batch mixes temperatures (so thresholds differ per lane) and stopping rules, and has
    more lattices (6) than lanes (4), so lanes switch lattices as they stop."""
    monkeypatch.setattr(GlauberIsing, "batch_lanes", 4)
    num = 6
    temps = jnp.linspace(1.5, 4.0, num)
    keys = jr.split(jr.key(21), num)
    spins = jax.vmap(lambda k: GlauberIsing().init_state(k, shape))(keys)
    halo_shape = (num, shape[0] + 2, shape[1] + 2)
    halos = jnp.where(jr.bernoulli(jr.key(22), 0.6, halo_shape), 1, -1).astype(jnp.int8)
    max_events = jnp.array([1, 7, 40, 2**31 - 1, 300, 55], jnp.int32)
    max_attempts = jnp.array([500, 2**31 - 1, 90, 257, 1000, 2**31 - 1], jnp.int32)

    def one(temperature, s, k, h, events, attempts):
        boundary = FrozenHalo(h) if with_halo else Periodic()
        model = GlauberIsing(temperature, 0.2)
        return model._sequential(s, k, boundary, max_events=events, max_attempts=attempts)

    args = (temps, spins, keys, halos, max_events, max_attempts)
    batched = jax.jit(jax.vmap(one))(*args)
    single = jax.jit(one)
    for b in range(num):
        alone = single(*(a[b] for a in args))
        for got, want in zip(batched, alone, strict=True):
            np.testing.assert_array_equal(got[b], want)
    assert int(batched[1].sum()) > 0


@pytest.mark.parametrize(("shape", "lanes"), [((16, 16), None), ((5, 7), 4), ((1, 33), None)])
def test_vmapped_curie_weiss_equals_one_patch_at_a_time(shape, lanes, monkeypatch):
    """Vmapped Curie-Weiss patches equal each patch alone, with per-patch temperatures,
    backgrounds and stopping rules: in lock-step (the default) and on 4 switching lanes."""
    monkeypatch.setattr(CurieWeiss, "batch_lanes", lanes)
    num = 6
    n = shape[0] * shape[1]
    num_total = n + 101  # 101 frozen spins: an odd background sum
    temps = jnp.linspace(0.8, 1.6, num)
    keys = jr.split(jr.key(31), num)
    spins = jax.vmap(lambda k: CurieWeiss().init_state(k, shape, 0.2))(keys)
    backgrounds = jnp.array([-99, -41, -1, 7, 55, 101], jnp.int32)
    max_events = jnp.array([1, 9, 60, 2**31 - 1, 400, 33], jnp.int32)
    max_attempts = jnp.array([300, 2**31 - 1, 70, 129, 2000, 2**31 - 1], jnp.int32)

    def one(temperature, s, k, background, events, attempts):
        model = CurieWeiss(temperature, 0.1)
        boundary = MeanField(background, num_total)
        return model._sequential(s, k, boundary, max_events=events, max_attempts=attempts)

    args = (temps, spins, keys, backgrounds, max_events, max_attempts)
    batched = jax.jit(jax.vmap(one))(*args)
    single = jax.jit(one)
    for b in range(num):
        alone = single(*(a[b] for a in args))
        for got, want in zip(batched, alone, strict=True):
            np.testing.assert_array_equal(got[b], want)
    assert int(batched[1].sum()) > 0


@pytest.mark.parametrize("with_halo", [False, True])
def test_vmapped_ising_drivers_equal_unbatched(with_halo):
    """The public drivers (events with dt, fixed time) agree batched and alone."""
    model = GlauberIsing(2.3, 0.1)
    keys = jr.split(jr.key(5), 4)
    spins = jax.vmap(lambda k: model.init_state(k, (8, 8)))(keys)
    halos = jax.vmap(lambda k: model.init_state(k, (10, 10)))(jr.split(jr.key(6), 4))
    halo_arg = halos if with_halo else None
    h_axis = 0 if with_halo else None

    def events(s, k, h):
        return model.advance_events(s, k, 50, halo=h)

    def timed(s, k, h):
        return model.advance_time(s, k, 0.8, halo=h)

    for fn in (events, timed):
        batched = jax.jit(jax.vmap(fn, in_axes=(0, 0, h_axis)))(spins, keys, halo_arg)
        for b in range(4):
            alone = jax.jit(fn)(
                spins[b], keys[b], None if halos is None or not with_halo else halos[b]
            )
            jax.tree.map(lambda x, y, b=b: np.testing.assert_array_equal(x[b], y), batched, alone)


def test_thresholds_are_the_heat_bath_rates():
    ising = GlauberIsing(2.2, 0.3, 0.9)
    spin = np.repeat([-1.0, 1.0], 5)
    total = np.tile(np.arange(-4, 5, 2), 2)
    w = 1.0 / (1.0 + np.exp(2.0 * spin * (0.9 * total + 0.3) / 2.2))
    got = np.asarray(ising.accept_thresholds(), np.float64) / 2.0**32
    np.testing.assert_allclose(got, w, rtol=1e-6)
    cw = CurieWeiss(0.9, 0.05, 1.2)
    n, background, num_total = 6, -3, 15
    patch = np.arange(-n, n + 1, 2)
    rows = []
    for s in (-1.0, 1.0):
        field = 1.2 * (patch + background - s) / num_total + 0.05
        rows.append(1.0 / (1.0 + np.exp(2.0 * s * field / 0.9)))
    got = np.asarray(cw.accept_thresholds(n, background, num_total), np.float64) / 2.0**32
    np.testing.assert_allclose(got, np.array(rows), rtol=1e-6)


# ---------------------------------------------------------------------------- HLO guards


def _computations(hlo: str) -> dict[str, list[str]]:
    comps, current = {}, None
    for line in hlo.splitlines():
        header = re.match(r"^(?:ENTRY )?%(\S+) ", line)
        if header and line.rstrip().endswith("{"):
            current = comps.setdefault(header.group(1), [])
        elif line.startswith("}"):
            current = None
        elif current is not None:
            current.append(line)
    return comps


def _loop_computations(hlo: str) -> dict[str, list[str]]:
    """Every computation run inside a while loop (bodies, conditions and what they call)."""
    comps = _computations(hlo)
    todo = [name for lines in comps.values() for line in lines for name in _called(line, True)]
    seen = {}
    while todo:
        name = todo.pop()
        if name in seen or name not in comps:
            continue
        seen[name] = comps[name]
        todo += [callee for line in comps[name] for callee in _called(line, False)]
    return seen


def _called(line: str, loops_only: bool) -> list[str]:
    pattern = r"(?:body|condition)=%([\w.\-]+)"
    if not loops_only:
        pattern = r"(?:body|condition|calls|to_apply)=%([\w.\-]+)"
    return re.findall(pattern, line)


def _innermost_loop_computations(hlo: str) -> dict[str, list[str]]:
    """The computations of while loops that run no loop themselves (the attempt loops)."""
    comps = _computations(hlo)

    def closure(name):
        seen, todo = {}, [name]
        while todo:
            current = todo.pop()
            if current in seen or current not in comps:
                continue
            seen[current] = comps[current]
            todo += [callee for line in comps[current] for callee in _called(line, False)]
        return seen

    inner = {}
    for lines in comps.values():
        for line in lines:
            body = re.search(r"body=%([\w.\-]+)", line)
            if body is None:
                continue
            loop = closure(body.group(1))
            for name in re.findall(r"condition=%([\w.\-]+)", line):
                loop.update(closure(name))
            if not any(re.search(r"\bwhile\(", ln) for ls in loop.values() for ln in ls):
                inner.update(loop)
    return inner


def _loop_offences(fn, args, state_shape: str, innermost: bool = False) -> list[str]:
    hlo = jax.jit(fn).lower(*args).compile().as_text()
    offences = []
    loops = _innermost_loop_computations(hlo) if innermost else _loop_computations(hlo)
    for name, lines in loops.items():
        for line in lines:
            if re.search(r"\bgather\(", line):
                offences.append(f"gather in {name}: {line.strip()[:160]}")
            if re.search(rf"= {re.escape(state_shape)}(\{{[0-9,]*\}})? copy\(", line):
                offences.append(f"copy of the state in {name}: {line.strip()[:160]}")
    return offences


def _ising_cases():
    model = GlauberIsing(2.5, 0.1)
    spins = model.init_state(jr.key(0), (8, 16))
    halo = model.init_state(jr.key(1), (10, 18))
    key = jr.key(2)
    return [
        ("events", lambda s, k: model.advance_events(s, k), (spins, key), "s8[128]"),
        ("time", lambda s, k: model.advance_time(s, k, 1.0), (spins, key), "s8[128]"),
        (
            "halo_events",
            lambda s, k, h: model.advance_events(s, k, halo=h),
            (spins, key, halo),
            "s8[180]",
        ),
        (
            "halo_time",
            lambda s, k, h: model.advance_time(s, k, 1.0, halo=h),
            (spins, key, halo),
            "s8[180]",
        ),
    ]


def _curie_weiss_cases():
    model = CurieWeiss(1.1, 0.1)
    spins = model.init_state(jr.key(0), (8, 16))
    key = jr.key(2)
    return [
        ("events", lambda s, k: model.advance_events(s, k), (spins, key), "s8[128]"),
        (
            "mean_field_time",
            lambda s, k: model.advance_time(s, k, 1.0, background_sum=4, num_total=1000),
            (spins, key),
            "s8[128]",
        ),
    ]


def _lane_cases():
    """Batched Ising events (switching lanes): the lanes' states are (24, 128) int8. Under
    vmap the scalar reads become lane-wide gathers, which is the algorithm; the attempt loop
    must still never copy the lanes' states."""
    model = GlauberIsing(2.5, 0.1)
    keys = jr.split(jr.key(0), 24)
    spins = jax.vmap(lambda k: model.init_state(k, (8, 16)))(keys)
    halos = jax.vmap(lambda k: model.init_state(k, (10, 18)))(keys)
    return [
        (
            "vmap_events",
            jax.vmap(lambda s, k: model.advance_events(s, k)),
            (spins, keys),
            "s8[24,128]",
        ),
        (
            "vmap_halo_events",
            jax.vmap(lambda s, k, h: model.advance_events(s, k, halo=h)),
            (spins, keys, halos),
            "s8[24,180]",
        ),
    ]


@pytest.mark.parametrize(
    "case",
    _ising_cases() + _curie_weiss_cases() + _lane_cases(),
    ids=lambda c: c[0] if isinstance(c, tuple) else c,
)
def test_compiled_loops_have_no_gather_and_no_state_copy(case):
    name, fn, args, state_shape = case
    offences = _loop_offences(fn, args, state_shape, innermost=name.startswith("vmap"))
    if name.startswith("vmap"):
        offences = [o for o in offences if not o.startswith("gather")]
    assert offences == []


def test_the_guard_catches_a_gather_and_a_copy():
    """The guard itself: the old attempt body (a vector gather of the neighbours) and a flip
    count that re-reads the old state beside an in-place write (XLA then copies the state)
    trip it."""
    table = jnp.asarray(np.random.default_rng(0).integers(0, 128, (128, 4)), jnp.int32)
    thresholds = jnp.arange(10, dtype=jnp.uint32) * 400_000_000

    def old_style(state, key):
        sites = jr.randint(key, (64,), 0, 128)

        def body(j, carry):
            state, count = carry
            k = sites[j]
            total = state[table[k]].astype(jnp.int32).sum()
            flip = total > 0
            new = state.at[k].set(jnp.where(flip, -state[k], state[k]))
            return new, count + flip.astype(jnp.int32)

        return jax.lax.fori_loop(0, 64, body, (state, jnp.int32(0)))

    def unordered_count(state, words):
        def body(j, carry):
            state, count = carry
            k = (words[j] >> 25).astype(jnp.int32)
            s = jax.lax.dynamic_index_in_dim(state, k, keepdims=False)
            up = jax.lax.dynamic_index_in_dim(state, (k + 1) & 127, keepdims=False)
            index = jnp.where(s > 0, 5, 0) + ((up.astype(jnp.int32) + 1) >> 1)
            flip = (count < 1000) & (words[j + 64] < thresholds[index])
            new = jax.lax.dynamic_update_index_in_dim(state, jnp.where(flip, -s, s), k, 0)
            return new, count + flip.astype(jnp.int32)

        return jax.lax.fori_loop(0, 64, body, (state, jnp.int32(0)))

    state = jnp.ones(128, jnp.int8)
    for innermost in (False, True):
        gathers = _loop_offences(old_style, (state, jr.key(0)), "s8[128]", innermost)
        assert any(o.startswith("gather") for o in gathers)
    copies = _loop_offences(unordered_count, (state, jr.bits(jr.key(0), (128,))), "s8[128]")
    assert any(o.startswith("copy") for o in copies)


@pytest.mark.parametrize("shape", [(4, 6), (8, 2)])
def test_checkerboard_equals_numpy_transcription(shape):
    """Half-sweep c sets every site with (r + c') % 2 == c to +1 iff its word is below
    floor(2**32 P(+1 | neighbours)); sweep t's word of site (r, c') is half c' // (W/2) of the
    hash of counter (t, r * W/2 + c' % (W/2))."""
    model = GlauberIsing(2.1, 0.2, 1.1)
    spins = model.init_state(jr.key(4), shape)
    key, num_sweeps = jr.key(13), 3
    out = jax.jit(lambda s, k: model.checkerboard_sweeps(s, k, num_sweeps))(spins, key)
    height, width = shape
    k0, k1 = _bits.key_words(key)
    p_up = model.flip_rate(jnp.int8(-1), jnp.arange(-4, 5, 2, dtype=jnp.int32))
    thresholds = np.asarray(_uniformized.accept_threshold(p_up), np.int64)
    want = np.asarray(spins, np.int64).copy()
    for t in range(num_sweeps):
        counters = jnp.arange(height * width // 2, dtype=jnp.uint32)
        hi, lo = jex_random.threefry2x32_p.bind(k0, k1, jnp.full_like(counters, t), counters)
        words = np.concatenate(
            [np.asarray(hi).reshape(height, -1), np.asarray(lo).reshape(height, -1)], axis=1
        )
        for colour in (0, 1):
            total = sum(np.roll(want, s, a) for s in (1, -1) for a in (0, 1))
            for r in range(height):
                for c in range(width):
                    if (r + c) % 2 == colour:
                        up = words[r, c] < thresholds[(total[r, c] + 4) // 2]
                        want[r, c] = 1 if up else -1
    np.testing.assert_array_equal(out, want)
