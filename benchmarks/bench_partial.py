"""Partial-evolution throughput and the extrapolated cost of the reference Ising dataset.

    python benchmarks/bench_partial.py [--num 2048]

Prints JSON lines: pairs/s and flips/s for 64x64 snapshots with 16x16 patches (one step =
256 flips per pair, isolated-periodic and frozen-halo), then the time to build the
reference-size n_s = 16^2 Ising dataset (REFERENCE.md 2.2: 1000 x 200-step small
trajectories, 100,000 upsampled + 100,000 random snapshots, one pair each) extrapolated from
measured fractions. Reference implementation: 3.4e5 flips/s for batched patches.
"""

from __future__ import annotations

import argparse
import json
import time

import jax
import jax.random as jr
import numpy as np

from jmacro.scale.builder import small_trajectories
from jmacro.scale.partial import PartialEvolution, evolve_patches
from jmacro.scale.upsample import HierarchicalUpsampling, LocalRelax, upsample_dataset
from jmacro.systems import GlauberIsing


def timed(fn):
    fn()  # compile
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--num", type=int, default=2048, help="snapshots per measurement")
    args = parser.parse_args()
    model = GlauberIsing(2.5, 0.1)
    num = args.num
    key = jr.key(0)
    snapshots = np.asarray(
        jax.vmap(lambda k: model.init_state(k, (64, 64), 0.5))(jr.split(key, num))
    )
    for boundary in ("periodic", "halo"):
        scheme = PartialEvolution(16, boundary)
        _, sec = timed(
            lambda s=scheme: evolve_patches(
                model, snapshots, key, s, batch_size=num, progress=False
            )
        )
        print(
            json.dumps(
                {
                    "case": f"partial_evolution_64x64_16x16_{boundary}",
                    "pairs_per_s": num / sec,
                    "flips_per_s": num * 256 / sec,
                    "speedup_vs_reference": num * 256 / sec / 3.4e5,
                }
            ),
            flush=True,
        )

    # Fractions of the reference dataset build.
    traj, steps = 32, 200
    small, sec_small = timed(
        lambda: small_trajectories(model, key, traj, steps, 16, batch_size=traj, progress=False)
    )
    cfg = HierarchicalUpsampling(64, relax=LocalRelax(16, 8), num_random=0)
    pool = small["snapshots"].reshape(-1, 16, 16)[:num]
    _, sec_up = timed(
        lambda: upsample_dataset(model, pool, key, cfg, batch_size=num, progress=False)
    )
    _, sec_pe = timed(
        lambda: evolve_patches(
            model, snapshots, key, PartialEvolution(16), batch_size=num, progress=False
        )
    )
    total = {
        "small_trajectories_s": sec_small * 1000 / traj,
        # 100,000 upsampled + 100,000 random snapshots all pass through LocalRelax.
        "upsampling_s": sec_up * 200_000 / num,
        "partial_evolution_s": sec_pe * 200_000 / num,
    }
    total["total_s"] = sum(total.values())
    print(json.dumps({"case": "reference_ising_dataset_16x16_extrapolated", **total}), flush=True)


if __name__ == "__main__":
    main()
