"""Partial-evolution throughput and the extrapolated cost of the reference Ising dataset.

    python benchmarks/bench_partial.py [--num 1024]

Prints JSON lines: pairs/s and flips/s for 64x64 snapshots with 16x16 patches (one step =
256 flips per pair, isolated-periodic and frozen-halo), then the time to build the
reference-size n_s = 16^2 Ising dataset (REFERENCE.md 2.2: 1000 x 200-step small
trajectories, 100,000 upsampled + 100,000 random snapshots, one pair each) extrapolated from
measured fractions. Steady state: the batched functions that ``evolve_patches``,
``upsample_dataset`` and ``small_trajectories`` compile once per call are timed after their
compilation. Reference implementation: 3.4e5 flips/s for batched patches.
"""

from __future__ import annotations

import argparse
import json
import time

import jax
import jax.numpy as jnp
import jax.random as jr

from jmacro.geometry import SquareTiling2D
from jmacro.scale.partial import PartialEvolution, evolve_patch
from jmacro.scale.upsample import HierarchicalUpsampling, LocalRelax, hierarchical_upsample
from jmacro.sharding import sharded_vmap
from jmacro.systems import GlauberIsing


def steady(fn, *args):
    """Seconds of one call after a compiling call."""
    jax.block_until_ready(fn(*args))
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    return time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--num", type=int, default=1024, help="snapshots per measurement")
    args = parser.parse_args()
    model = GlauberIsing(2.5, 0.1)
    num, key = args.num, jr.key(0)
    snapshots = jax.vmap(lambda k: model.init_state(k, (64, 64), 0.5))(jr.split(key, num))
    index = jnp.arange(num)
    seconds = {}
    for boundary in ("periodic", "halo"):
        scheme = PartialEvolution(SquareTiling2D(16), boundary)
        run = sharded_vmap(lambda x, i, s=scheme: evolve_patch(model, x, jr.fold_in(key, i), s))
        seconds[boundary] = sec = steady(run, snapshots, index)
        print(
            json.dumps(
                {
                    "case": f"partial_evolution_64x64_16x16_{boundary}",
                    "pairs": num,
                    "pairs_per_s": num / sec,
                    "flips_per_s": num * 256 / sec,
                    "speedup_vs_reference": num * 256 / sec / 3.4e5,
                }
            ),
            flush=True,
        )

    # Fractions of the reference dataset build.
    traj, steps = 64, 200

    def trajectory(i):
        spins = model.init_state(jr.fold_in(key, i), (16, 16))

        def step(s, k):
            s, dt = model.advance_events(s, k)
            return s, dt

        return jax.lax.scan(step, spins, jr.split(jr.fold_in(key, -i - 1), steps))

    sec_small = steady(sharded_vmap(trajectory), jnp.arange(traj))
    cfg = HierarchicalUpsampling(64, relax=LocalRelax(SquareTiling2D(16, stride=8)), num_random=0)
    small = snapshots[:, :16, :16]
    upsample = sharded_vmap(
        lambda s, i: hierarchical_upsample(model, s[None], jr.fold_in(key, i), cfg)[0]
    )
    sec_up = steady(upsample, small, index)
    total = {
        "small_trajectories_s": sec_small * 1000 / traj,
        # 100,000 upsampled + 100,000 random snapshots all pass through LocalRelax.
        "upsampling_s": sec_up * 200_000 / num,
        "partial_evolution_s": seconds["periodic"] * 200_000 / num,
    }
    total["total_s"] = sum(total.values())
    print(json.dumps({"case": "reference_ising_dataset_16x16_extrapolated", **total}), flush=True)


if __name__ == "__main__":
    main()
