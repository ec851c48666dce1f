"""Throughput of the spin simulators; prints one JSON line per measurement.

    python benchmarks/bench_glauber.py [--model ising|curie-weiss|all]

Events are actual spin flips (the reference's unit); attempts include rejected ones.
Reference implementation on a 2-core CPU (REFERENCE.md 4): 1.1e5 flips/s on one 64x64
lattice, 3.4e5 flips/s for 2000 batched 16x16 patches.
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

from jmacro.systems import CurieWeiss, GlauberIsing

REFERENCE = {"single_64": 1.1e5, "patches_2000x16": 3.4e5}


def timed(fn, *args, repeats=3):
    """Best wall time of ``repeats`` calls after one warm-up (compilation) call."""
    jax.block_until_ready(fn(*args))
    best = np.inf
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        best = min(best, time.perf_counter() - start)
    return best


def emit(**record):
    record.update(
        backend=jax.default_backend(),
        device=str(jax.devices()[0]),
        cpu=platform.processor() or platform.machine(),
    )
    print(json.dumps(record), flush=True)


def memory_bandwidth_gbs() -> float:
    """Host copy bandwidth (read + write bytes per second), measured with NumPy."""
    src = np.ones(2**28, np.uint8)
    dst = np.empty_like(src)
    best = np.inf
    for _ in range(5):
        start = time.perf_counter()
        np.copyto(dst, src)
        best = min(best, time.perf_counter() - start)
    return 2 * src.nbytes / best / 1e9


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="ising", choices=["ising", "curie-weiss", "all"])
    args = parser.parse_args()
    key = jr.key(0)
    ising = GlauberIsing(2.5, 0.1)

    if args.model in ("ising", "all"):
        # 1. One 64x64 lattice, reference step (4096 flips) x 20.
        spins = ising.advance_time(ising.init_state(key, (64, 64)), key, 10.0)

        @jax.jit
        def events_single(s, k):
            def step(s, k):
                s, _, _ = ising._sequential(s, k, None, max_events=4096)
                return s, None

            return jax.lax.scan(step, s, jr.split(k, 20))[0]

        sec = timed(events_single, spins, key)
        emit(
            case="ising_events_single_64x64",
            flips_per_s=20 * 4096 / sec,
            speedup_vs_reference=20 * 4096 / sec / REFERENCE["single_64"],
        )

        for method in ("parallel", "sequential"):
            run = jax.jit(lambda s, k, m=method: _count_time(ising, s, k, 10.0, m))
            sec = timed(run, spins, key)
            flips, attempts = (int(x) for x in run(spins, key)[1:])
            emit(
                case=f"ising_time_{method}_single_64x64",
                flips_per_s=flips / sec,
                attempts_per_s=attempts / sec,
                speedup_vs_reference=flips / sec / REFERENCE["single_64"],
            )

        # 2. 2000 patches of 16x16, one sweep each: 256 flips (events) or t = 1 (time).
        patches = jax.vmap(lambda k: ising.advance_time(ising.init_state(k, (16, 16)), k, 5.0))(
            jr.split(key, 2000)
        )
        keys = jr.split(jr.fold_in(key, 1), 2000)
        events = jax.jit(jax.vmap(lambda s, k: ising._sequential(s, k, None, max_events=256)))
        sec = timed(events, patches, keys)
        emit(
            case="ising_events_2000_patches_16x16",
            flips_per_s=2000 * 256 / sec,
            speedup_vs_reference=2000 * 256 / sec / REFERENCE["patches_2000x16"],
        )
        for method in ("parallel", "sequential"):
            run = jax.jit(jax.vmap(lambda s, k, m=method: _count_time(ising, s, k, 1.0, m)))
            sec = timed(run, patches, keys)
            _, flips, attempts = run(patches, keys)
            emit(
                case=f"ising_time_{method}_2000_patches_16x16",
                flips_per_s=int(flips.sum()) / sec,
                attempts_per_s=int(attempts.sum()) / sec,
                speedup_vs_reference=int(flips.sum()) / sec / REFERENCE["patches_2000x16"],
            )

        # 3. Checkerboard heat-bath sweeps.
        bandwidth = memory_bandwidth_gbs()
        for label, batch, size, sweeps in (("512x512", None, 512, 20), ("256x64x64", 256, 64, 20)):
            if batch is None:
                lattice_ = jnp.ones((size, size), jnp.int8)
                run = jax.jit(lambda s, k, n=sweeps: ising.checkerboard_sweeps(s, k, n))
                updates = size * size * sweeps
            else:
                lattice_ = jnp.ones((batch, size, size), jnp.int8)
                run = jax.jit(jax.vmap(lambda s, k, n=sweeps: ising.checkerboard_sweeps(s, k, n)))
                key_ = jr.split(key, batch)
                updates = batch * size * size * sweeps
            sec = timed(run, lattice_, key if batch is None else key_)
            per_ns = updates / sec / 1e9
            # Minimum traffic of an int8 sweep: read + write one byte per spin update.
            emit(
                case=f"ising_checkerboard_{label}",
                spin_updates_per_ns=per_ns,
                bytes_per_update_min=2,
                memory_bandwidth_gb_s=bandwidth,
                fraction_of_bandwidth=2 * per_ns / bandwidth,
                gpu_h100_record_per_ns=900,
            )

    if args.model in ("curie-weiss", "all"):
        cw = CurieWeiss(1.1, 0.1)
        states = jax.vmap(lambda k: cw.init_state(k, (64, 64)))(jr.split(key, 64))
        run = jax.jit(jax.vmap(lambda s, k: cw.advance_events(s, k)))
        sec = timed(run, states, jr.split(key, 64))
        emit(case="curie_weiss_events_64x_64x64", flips_per_s=64 * 4096 / sec)


def _count_time(model, spins, key, duration, method):
    duration = jnp.float32(duration)
    if method == "parallel":
        return model._parallel(spins, key, duration, None)
    from jmacro.geometry import Periodic
    from jmacro.systems import _uniformized

    k1, k2 = jr.split(key)
    attempts = _uniformized.num_ticks(k1, duration, spins.size)
    return model._sequential(spins, k2, Periodic(), max_attempts=attempts)


if __name__ == "__main__":
    main()
