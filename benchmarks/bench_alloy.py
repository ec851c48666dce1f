"""Vacancy KMC throughput against the reference-style numpy driver; one JSON line per case.

    python benchmarks/bench_alloy.py [--weights PATH] [--dump PATH] [--replicas 1 64 1024]

Cases: barrier model (NNK from ``--weights``; the built-in KRA) x replica count. jmacro runs
``jax.vmap(VacancyKMC.advance_events)`` over R copies of the 1,024-site start (the reference's
dump if ``--dump`` exists, else a random equimolar cell), each for a fixed number of events,
jitted; events/s counts the events of all replicas. The baseline (``reference_alloy.py``) is
the reference's per-event numpy loop on one configuration (8 crops, the NNK MLP in numpy, the
draw; for KRA the same loop with numpy KRA barriers); replicas would run one after another, so
its events/s does not depend on R. Both are timed alternately in this process (``--repeats``
rounds after a warm-up each) and the medians reported: on a shared CPU the absolute numbers
are noise, the ratio measured in one run is the result.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import reference_alloy as ref

from jmacro import bcc
from jmacro.io.structures import read_lammps_dump
from jmacro.systems import KRABarrier, NNKBarrier, VacancyKMC, alloy_state, state_to_voxels

_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "nbmota"


def start_state(dump: Path):
    """The reference's start (vacancy at voxel 0) or a random equimolar 8^3-cell state."""
    if dump.is_file():
        structure = read_lammps_dump(dump)
        grid = bcc.voxels_from_positions(structure.positions, structure.types, 1.62, 16)
        grid[0, 0, 0] = bcc.VACANCY
        return alloy_state(bcc.voxels_to_occupancy(jnp.asarray(grid))), "reference dump"
    occupancy = bcc.random_occupancy(jr.key(0), 8, 1)
    return alloy_state(occupancy), "random equimolar"


def median_time(fn, repeats: int) -> float:
    jax.block_until_ready(fn())  # warm-up / compilation
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def jmacro_rate(kmc, state, replicas: int, events: int, repeats: int) -> float:
    states = jax.tree.map(lambda a: jnp.broadcast_to(a, (replicas, *a.shape)), state)
    keys = jr.split(jr.key(1), replicas)

    @jax.jit
    def run(kmc, states, keys):
        return jax.vmap(lambda s, k: kmc.advance_events(s, k, events))(states, keys)

    return replicas * events / median_time(lambda: run(kmc, states, keys), repeats)


def baseline_rate(make_driver, events: int, repeats: int) -> float:
    def fn():
        make_driver().run(events)

    return events / median_time(fn, repeats)


def models(weights: Path, state, temperature: float):
    """(name, jmacro barrier model, baseline driver factory)."""
    grid = np.asarray(state_to_voxels(state))
    vacancy = np.asarray(state.vacancies[0])
    kra = KRABarrier.nbmota()
    yield (
        "kra",
        kra,
        lambda: ref.KRADriver(kra.e0, kra.v1, kra.v2, grid, vacancy, temperature),
    )
    if weights.is_file():
        arrays = list(np.load(weights, allow_pickle=True))
        nnk = NNKBarrier.from_arrays(arrays)
        driver = ref.NNKDriver(arrays, grid, vacancy, temperature)
        gap = np.abs(driver.barriers() - np.asarray(nnk.barriers(state.occupancy, vacancy)))
        assert gap.max() < 1e-4, f"baseline and jmacro NNK barriers differ by {gap.max()}"
        yield "nnk", nnk, lambda: ref.NNKDriver(arrays, grid, vacancy, temperature)
    else:
        print(json.dumps({"model": "nnk", "skipped": f"no weights file at {weights}"}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--weights", type=Path, default=_DATA / "nnk_weights" / "weights.npy")
    parser.add_argument("--dump", type=Path, default=_DATA / "initial_N_1024_equimolar.dump")
    parser.add_argument("--replicas", type=int, nargs="+", default=[1, 64, 1024])
    parser.add_argument("--temperature", type=float, default=2000.0)
    parser.add_argument("--events", type=int, default=20_000, help="total events per timing")
    parser.add_argument("--baseline-events", type=int, default=500)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    state, start = start_state(args.dump)
    device = f"{jax.devices()[0].platform}:{jax.devices()[0].device_kind}"
    for name, model, make_driver in models(args.weights, state, args.temperature):
        kmc = VacancyKMC(model, args.temperature)
        baseline = baseline_rate(make_driver, args.baseline_events, args.repeats)
        for replicas in args.replicas:
            events = max(50, args.events // replicas)
            rate = jmacro_rate(kmc, state, replicas, events, args.repeats)
            line = {
                "case": "vacancy_kmc_1024_sites",
                "model": name,
                "replicas": replicas,
                "events_per_replica": events,
                "jmacro_events_per_s": round(rate),
                "baseline_events_per_s": round(baseline),
                "ratio": round(rate / baseline, 1),
                "baseline": "numpy reference-style driver, one configuration",
                "start": start,
                "device": device,
                "host": platform.processor() or platform.machine(),
            }
            print(json.dumps(line), flush=True)


if __name__ == "__main__":
    main()
