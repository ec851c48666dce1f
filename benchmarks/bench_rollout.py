"""Rollout throughput of a learned d = 4 SDE: Diffrax vs plain lax.scan (one JSON line).

1000 trajectories, 500 Euler-Maruyama steps, full diffusion (reference architecture, random
weights: the cost does not depend on the values). Throughput = trajectory-steps per second of
a warm (compiled) call; compile time reported apart.

Usage: python benchmarks/bench_rollout.py [--trajectories N] [--steps T]
"""

from __future__ import annotations

import argparse
import json
import os
import time

import jax
import jax.numpy as jnp
import jax.random as jr

from jmacro.models import make_latent_sde
from jmacro.rollout import rollout


def measure(sde, z0, times, method, brownian="unsafe", repeats=3):
    """Best-of-``repeats`` wall time of a compiled rollout, as trajectory-steps per second."""
    start = time.perf_counter()
    rollout(sde, z0, times, jr.key(0), method=method, brownian=brownian).block_until_ready()
    compile_seconds = time.perf_counter() - start
    best = float("inf")
    for repeat in range(repeats):
        start = time.perf_counter()
        rollout(
            sde, z0, times, jr.key(repeat), method=method, brownian=brownian
        ).block_until_ready()
        best = min(best, time.perf_counter() - start)
    steps = z0.shape[0] * (times.shape[0] - 1)
    return {
        "trajectory_steps_per_s": round(steps / best, 1),
        "seconds": round(best, 4),
        "compile_s": round(compile_seconds, 2),
    }


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--trajectories", type=int, default=1000)
    parser.add_argument("--steps", type=int, default=500)
    args = parser.parse_args()
    sde = make_latent_sde(jr.key(0), 4, "full")
    z0 = 0.1 * jr.normal(jr.key(1), (args.trajectories, 4))
    times = jnp.arange(args.steps + 1, dtype=jnp.float32)
    result = {
        "benchmark": "rollout_throughput",
        "device": jax.devices()[0].device_kind,
        "cpu_count": os.cpu_count(),
        "jax": jax.__version__,
        "trajectories": args.trajectories,
        "steps": args.steps,
        "latent_dim": 4,
        "diffrax_unsafe_brownian": measure(sde, z0, times, "diffrax"),
        "scan": measure(sde, z0, times, "scan"),
        # VirtualBrownianTree resolves each increment by a tree descent: exact, reproducible
        # under any step size, slower; measured on 1/10 of the steps.
        "diffrax_virtual_tree": measure(
            sde, z0, times[: args.steps // 10 + 1], "diffrax", brownian="virtual_tree"
        ),
    }
    result["scan_speedup"] = round(
        result["scan"]["trajectory_steps_per_s"]
        / result["diffrax_unsafe_brownian"]["trajectory_steps_per_s"],
        2,
    )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
