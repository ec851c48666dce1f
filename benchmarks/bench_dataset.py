"""The reference-size Ising dataset at n_s = 16^2, built by the library's own stage functions.

    python benchmarks/bench_dataset.py [--fraction 1.0]

Builds, with the ``ising`` experiment's ``paper`` preset (the reference's sizes, REFERENCE.md
2.2) and ``patch_sizes=(16,)``, exactly what ``jmacro run ising --preset paper`` builds for that
scale, stage by stage, and prints one JSON line with each stage's wall time and size:

- ``small``: 1000 trajectories x 200 steps of 16x16 (``random_trajectories``);
- ``large``: 100,000 snapshots picked from them, upsampled 16 -> 32 -> 64 with LocalRelax
  (16x16 windows, stride 8, frozen halo, sequential, 2 sweeps per window) plus 100,000
  relaxed random-magnetisation ones and 10,000 unrelaxed i.i.d. ones (``upsample``);
- ``pairs``: partial evolution of one 16x16 patch per snapshot, ``per_snapshot`` (2) blocks
  (``partial_pairs``).

``--fraction f`` scales every count by f (e.g. 0.05 for a quick look) and says so in the line;
the issue's figure is the full build (``--fraction 1``). Times include compilation, as a user
running the pipeline pays it; the line also gives the host's device count (one per core
by default) and the relaxed-window flips per second.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time

import jax
import jax.random as jr
import numpy as np

from jmacro.pipelines import get_experiment
from jmacro.pipelines.runner import pick_snapshots


def scaled(cfg, fraction: float):
    """The preset with every data count multiplied by ``fraction`` (at least 1)."""

    def n(x):
        return max(1, round(x * fraction))

    small = dataclasses.replace(cfg.small, num_trajectories=n(cfg.small.num_trajectories))
    up = cfg.upsampling
    upsampling = dataclasses.replace(
        up,
        num_large=n(up.num_large),
        num_random=n(up.num_random),
        num_unrelaxed=n(up.num_unrelaxed),
    )
    return dataclasses.replace(cfg, small=small, upsampling=upsampling)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fraction", type=float, default=1.0)
    args = parser.parse_args()
    if not 0 < args.fraction <= 1:
        raise SystemExit(f"--fraction must be in (0, 1], got {args.fraction}.")
    cfg = get_experiment("ising", "paper", patch_sizes=(16,))
    cfg = scaled(cfg, args.fraction)
    system, scale = cfg.system(), cfg.scales()[0]
    root = jr.key(0)
    seconds, sizes = {}, {}

    start = time.perf_counter()
    small = cfg.small_data(system, scale, jr.fold_in(root, 1), False)
    seconds["small"] = time.perf_counter() - start
    sizes["small_snapshots"] = int(np.prod(small["snapshots"].shape[:2]))

    start = time.perf_counter()
    picked = pick_snapshots(small["snapshots"], cfg.upsampling, cfg.seed)
    large = cfg.upsample(system, scale, picked, jr.fold_in(root, 2), False)
    seconds["large"] = time.perf_counter() - start
    sizes["large_snapshots"] = len(large)

    start = time.perf_counter()
    keys = [jr.fold_in(root, 3)]
    keys += [jr.fold_in(keys[0], 1_000_000 + r) for r in range(1, cfg.pairs.per_snapshot)]
    pairs = [cfg.partial_pairs(system, scale, large, k, False) for k in keys]
    seconds["pairs"] = time.perf_counter() - start
    sizes["pairs"] = sum(len(p["dt"]) for p in pairs)

    # Relaxed windows: 16 at 32x32 and 64 at 64x64 per relaxed snapshot, each evolved for
    # relax_time sweeps of 256 sites (the expected attempt count; flips are fewer).
    relaxed = cfg.upsampling.num_large + cfg.upsampling.num_random
    attempts = relaxed * (16 + 64) * 256 * cfg.upsampling.relax_time
    record = {
        "case": "reference_ising_dataset_16x16",
        "fraction": args.fraction,
        "seconds": {k: round(v, 1) for k, v in seconds.items()},
        "total_s": round(sum(seconds.values()), 1),
        "sizes": sizes,
        "relax_attempts_per_s": attempts / seconds["large"],
        "devices": jax.device_count(),
        "backend": jax.default_backend(),
    }
    print(json.dumps(record), flush=True)


if __name__ == "__main__":
    main()
