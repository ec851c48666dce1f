"""Throughput of the predator-prey SPDE simulator; prints ONE JSON line.

    python benchmarks/bench_predator_prey.py [--trajectories 100] [--cells 200] [--steps 3000]

The reference workload (REFERENCE.md 2.4): trajectories of 200 cells, 3000 Euler-Maruyama
steps of dt = 0.01. Measured: ``jax.jit(jax.vmap(system.simulate))`` keeping only the final
state (``simulate``), and saving every step as the pipeline does (``simulate_save_every_1``),
against two floors on the same ``(B, n, 2)`` float32 array and the same ``lax.scan``:

- ``floor_loop``: a trivial body (x + 1): the cost of the loop itself;
- ``floor_rng``: the body x + sigma sqrt(dt) N(0, 1) with the simulator's per-trajectory key
  usage (``jr.split(key, num_steps)``, one ``jr.normal`` per step): the random numbers alone.

Compilation is excluded (one warm-up call); the best of ``--repeats`` calls is reported.
"""

from __future__ import annotations

import argparse
import json
import platform

import jax
import jax.numpy as jnp
import jax.random as jr
from bench_glauber import timed  # run as a script: benchmarks/ is on sys.path

from jmacro.systems import PredatorPrey, predator_prey_initial_condition


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trajectories", type=int, default=100)
    parser.add_argument("--cells", type=int, default=200)
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    num, cells, steps = args.trajectories, args.cells, args.steps

    system = PredatorPrey()
    k = jnp.linspace(0.05, 0.15, num)
    m = jnp.linspace(0.45, 0.55, num)
    x0 = jax.vmap(lambda k, m: predator_prey_initial_condition(cells, k, m))(k, m)
    keys = jr.split(jr.key(0), num)

    final = jax.jit(jax.vmap(lambda x, key: system.simulate(x, key, steps, steps)[-1]))
    saving = jax.jit(jax.vmap(lambda x, key: system.simulate(x, key, steps, 1)))

    def loop_floor(x):
        return jax.lax.scan(lambda y, _: (y + 1.0, None), x, None, length=steps)[0]

    def rng_floor(x, key):
        scale = system.sigma * jnp.sqrt(system.dt)

        def body(y, k):
            return y + scale * jr.normal(k, y.shape, jnp.float32), None

        return jax.lax.scan(body, x, jr.split(key, steps))[0]

    seconds = {
        "simulate": timed(final, x0, keys, repeats=args.repeats),
        "simulate_save_every_1": timed(saving, x0, keys, repeats=args.repeats),
        "floor_loop": timed(jax.jit(loop_floor), x0, repeats=args.repeats),
        "floor_rng": timed(jax.jit(jax.vmap(rng_floor)), x0, keys, repeats=args.repeats),
    }
    trajectory_steps = num * steps
    record = {
        "case": f"predator_prey_{num}x{cells}_cells_{steps}_steps",
        "trajectory_steps_per_s": trajectory_steps / seconds["simulate"],
        "cell_steps_per_s": trajectory_steps * cells / seconds["simulate"],
        "cell_steps_per_s_save_every_1": trajectory_steps
        * cells
        / seconds["simulate_save_every_1"],
        "seconds": seconds,
        "floor_loop_cell_steps_per_s": trajectory_steps * cells / seconds["floor_loop"],
        "floor_rng_cell_steps_per_s": trajectory_steps * cells / seconds["floor_rng"],
        "simulate_over_rng_floor": seconds["simulate"] / seconds["floor_rng"],
        "simulate_over_loop_floor": seconds["simulate"] / seconds["floor_loop"],
        "backend": jax.default_backend(),
        "device": str(jax.devices()[0]),
        "cpu": platform.processor() or platform.machine(),
    }
    print(json.dumps(record), flush=True)


if __name__ == "__main__":
    main()
