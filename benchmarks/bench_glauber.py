"""Spin simulators against the reference algorithm, side by side; one JSON line per case.

    python benchmarks/bench_glauber.py [--model ising|curie-weiss|all] [--repeats 5]

Each case times jmacro and the baseline alternately in this process (``--repeats`` rounds,
after a warm-up/compilation call each) and prints the median throughputs and their ratio:
absolute numbers on a shared CPU are noise, the ratio measured in one run is the result.

Baseline (``reference_glauber.py``, numba, optional: ``pip install jmacro[bench]``): the
reference's rejection-free O(n)-per-event algorithm, one thread. Without numba the lines
carry jmacro's numbers only and say so.

Cases (flips are actual spin flips, the reference's unit; a step is n flips):
- one 64x64 lattice, ``advance_events`` steps (4096 flips each), Ising and Curie-Weiss;
- 2000 patches of 16x16, one 256-flip step each (``jax.vmap`` of ``advance_events``, which
  runs the batch as vector lanes, sharded over the host's devices, one per core by default;
  also on one device; the baseline runs the patches one after another on one core);
- checkerboard heat-bath sweeps of a 512x512 lattice, spin updates per ns, beside the RNG
  floor: the rate at which ``jax.random.bits`` and jmacro's unrolled Threefry
  (``jmacro.systems._bits``) generate one 32-bit word per update, and the rate of the words
  the kernel actually draws (both halves of one hash per two sites); ``fraction_of_rng_floor``
  is against the best of these.
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import reference_glauber as ref

from jmacro.sharding import sharded_vmap
from jmacro.systems import CurieWeiss, GlauberIsing

try:
    from jmacro.systems._bits import block_pairs, key_words, random_bits
except ImportError:  # jmacro before the unrolled Threefry (to measure the old kernels)
    random_bits = None

TEMPERATURE = {"ising": 2.5, "curie_weiss": 1.1}
FIELD = 0.1


def _once(fn):
    start = time.perf_counter()
    jax.block_until_ready(fn())
    return time.perf_counter() - start


def side_by_side(jmacro_fn, baseline_fn, repeats):
    """Alternating wall times of the two thunks after one warm-up call each."""
    jax.block_until_ready(jmacro_fn())
    if baseline_fn is not None:
        baseline_fn()
    t_jmacro, t_baseline = [], []
    for _ in range(repeats):
        t_jmacro.append(_once(jmacro_fn))
        if baseline_fn is not None:
            t_baseline.append(_once(baseline_fn))
    return np.array(t_jmacro), (np.array(t_baseline) if t_baseline else None)


def emit(case, unit, work_jmacro, t_jmacro, work_baseline=None, t_baseline=None, **extra):
    """One JSON line: median throughputs, their ratio and the spread of per-round ratios."""
    jm = work_jmacro / t_jmacro
    record = {"case": case, "unit": unit, "jmacro": float(np.median(jm))}
    if t_baseline is None:
        record.update(baseline=None, ratio=None, note="numba not installed: no baseline")
    else:
        base = work_baseline / t_baseline
        ratios = jm / base
        record.update(
            baseline=float(np.median(base)),
            ratio=float(np.median(jm) / np.median(base)),
            ratio_min=float(ratios.min()),
            ratio_max=float(ratios.max()),
        )
    record.update(extra)
    record.update(
        repeats=len(t_jmacro),
        backend=jax.default_backend(),
        cpu=platform.processor() or platform.machine(),
    )
    print(json.dumps(record), flush=True)


def events_cases(name, model, repeats):
    temperature = TEMPERATURE[name]
    key = jr.key(0)
    beta = 1.0 / temperature

    # One 64x64 lattice: 20 steps of 4096 flips; baseline: 1 step.
    spins = model.advance_events(model.init_state(key, (64, 64)), key, 20 * 4096)[0]
    num_steps = 20

    @jax.jit
    def single(s, k):
        def step(s, k):
            return model.advance_events(s, k)[0], None

        return jax.lax.scan(step, s, jr.split(k, num_steps))[0]

    flat = np.asarray(spins).reshape(-1).copy()
    baseline_single = None
    if ref.available():
        ref.seed(0)
        if name == "ising":
            table = ref.neighbour_table(64, 64)

            def baseline_single():
                return ref.ising_events(flat, table, beta, 1.0, FIELD, 4096)
        else:

            def baseline_single():
                return ref.curie_weiss_events(flat, beta, 1.0, FIELD, 4096)

    t_j, t_b = side_by_side(lambda: single(spins, key), baseline_single, repeats)
    emit(f"{name}_events_single_64x64", "flips/s", num_steps * 4096, t_j, 4096, t_b)

    # 2000 patches of 16x16, one 256-flip step each; baseline: 200 patches in a row.
    keys = jr.split(jr.fold_in(key, 1), 2000)
    patches = jax.vmap(lambda k: model.advance_events(model.init_state(k, (16, 16)), k, 2560)[0])(
        keys
    )
    one_step = jax.vmap(lambda s, k: model.advance_events(s, k)[0])
    # Sharded over every host device (one per core by default, ``jmacro._devices``), and on
    # one device for the per-core figure.
    batched = sharded_vmap(lambda s, k: model.advance_events(s, k)[0])
    one_device = jax.jit(one_step)
    flat_patches = np.asarray(patches[:200]).reshape(200, -1).copy()
    baseline_patches = None
    if ref.available():
        if name == "ising":
            table16 = ref.neighbour_table(16, 16)

            def baseline_patches():
                return ref.ising_patches(flat_patches, table16, beta, 1.0, FIELD, 256)
        else:

            def baseline_patches():
                return ref.curie_weiss_patches(flat_patches, beta, 1.0, FIELD, 256)

    t_j, t_b = side_by_side(lambda: batched(patches, keys), baseline_patches, repeats)
    t_one, _ = side_by_side(lambda: one_device(patches, keys), None, repeats)
    per_device = 2000 * 256 / np.median(t_one)
    emit(
        f"{name}_events_2000_patches_16x16",
        "flips/s",
        2000 * 256,
        t_j,
        200 * 256,
        t_b,
        devices=jax.device_count(),
        jmacro_one_device=float(per_device),
        ratio_one_device=None if t_b is None else float(per_device / np.median(200 * 256 / t_b)),
    )


def checkerboard_case(repeats):
    model = GlauberIsing(TEMPERATURE["ising"], FIELD)
    key = jr.key(0)
    size, sweeps = 512, 20
    spins = jnp.ones((size, size), jnp.int8)
    run = jax.jit(lambda s, k: model.checkerboard_sweeps(s, k, sweeps))
    updates = size * size * sweeps
    lattice = np.ones((size, size), np.int8)
    baseline = None
    if ref.available():
        beta = 1.0 / TEMPERATURE["ising"]

        def baseline():
            return ref.checkerboard_sweeps(lattice, beta, 1.0, FIELD, 2)

    t_j, t_b = side_by_side(lambda: run(spins, key), baseline, repeats)
    # The RNG floor: one 32-bit word per spin update, nothing else.
    jax_bits = jax.jit(lambda k: jr.bits(k, (sweeps, size, size)))
    unrolled_bits = kernel_bits = None
    if random_bits is not None:
        unrolled = jax.jit(lambda k: random_bits(k, (sweeps, size, size)))

        def unrolled_bits():
            return unrolled(key)

        @jax.jit
        def pair_words(k):
            # What the kernel draws: both words of one hash per two sites, per sweep.
            k0, k1 = key_words(k)

            def one(i):
                return jnp.concatenate(block_pairs(k0, k1, i, (size, size // 2)), axis=1)

            return jax.lax.map(one, jnp.arange(sweeps, dtype=jnp.uint32))

        def kernel_bits():
            return pair_words(key)

    t_jax, t_unrolled = side_by_side(lambda: jax_bits(key), unrolled_bits, repeats)
    per_ns = updates / np.median(t_j) / 1e9
    floor_jax = updates / np.median(t_jax) / 1e9
    floor_unrolled = floor_kernel = None
    if t_unrolled is not None:
        floor_unrolled = updates / np.median(t_unrolled) / 1e9
        t_kernel, _ = side_by_side(kernel_bits, None, repeats)
        floor_kernel = updates / np.median(t_kernel) / 1e9
    best_floor = floor_jax if floor_kernel is None else max(floor_jax, floor_kernel)
    emit(
        "ising_checkerboard_512x512",
        "spin updates/ns",
        updates / 1e9,
        t_j,
        size * size * 2 / 1e9,
        t_b,
        rng_floor_jax_random_bits=floor_jax,
        rng_floor_unrolled_threefry=floor_unrolled,
        rng_floor_kernel_words=floor_kernel,
        fraction_of_rng_floor=per_ns / best_floor,
    )


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="all", choices=["ising", "curie-weiss", "all"])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    if not ref.available():
        print("numba is not installed: printing jmacro's numbers without the baseline.")
    if args.model in ("ising", "all"):
        events_cases("ising", GlauberIsing(TEMPERATURE["ising"], FIELD), args.repeats)
        checkerboard_case(args.repeats)
    if args.model in ("curie-weiss", "all"):
        events_cases("curie_weiss", CurieWeiss(TEMPERATURE["curie_weiss"], FIELD), args.repeats)


if __name__ == "__main__":
    main()
