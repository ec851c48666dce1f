"""The ``jmacro`` command line (tyro over frozen dataclasses).

jmacro simulate ising --size 64 --num-steps 10
jmacro simulate curie-weiss --magnetisation -0.5
jmacro simulate --help
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
import time
from pathlib import Path
from typing import Annotated, Literal

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import tyro

from jmacro import observables, pipelines
from jmacro._checks import check_positive_int
from jmacro.pipelines import EXPERIMENTS
from jmacro.pipelines._spins import AbstractSpinExperiment

logger = logging.getLogger("jmacro")


@dataclasses.dataclass(frozen=True)
class SimulateConfig:
    """Simulate a batch of replicas of a microscopic system and print its observables."""

    system: Annotated[str, tyro.conf.Positional]
    """A registered spin experiment whose microscopic system to simulate (ising,
    curie-weiss; `jmacro run --help` lists the registry)."""
    size: int = 64
    """Lattice side L (L x L spins)."""
    num_steps: int = 10
    """Number of steps to print."""
    dynamics: Literal["events", "time"] = "events"
    """'events': a step is L*L flips (the reference's step, random dt); 'time': a step is a
    fixed time interval `step-time` (exact uniformized algorithm)."""
    step_time: float = 1.0
    """Step duration for `--dynamics time`, in sweeps."""
    temperature: float | None = None
    """Temperature; default: the experiment's (2.5 for Ising, 1.1 for Curie-Weiss)."""
    field: float = 0.1
    """External field h."""
    magnetisation: float = 0.0
    """Mean magnetisation of the random initial states."""
    num_replicas: int = 8
    """Independent replicas simulated in one vmapped call."""
    seed: int = 0
    """Seed of the PRNG key."""


def simulate(cfg: SimulateConfig) -> list[dict]:
    """Run ``cfg`` and print one JSON line per step (ensemble means); return the records."""

    check_positive_int(cfg.num_steps, "num-steps")
    check_positive_int(cfg.num_replicas, "num-replicas")
    spins_experiments = {
        name: cls for name, cls in EXPERIMENTS.items() if issubclass(cls, AbstractSpinExperiment)
    }
    if cfg.system not in spins_experiments:
        raise ValueError(
            f"unknown system {cfg.system!r}; registered spin experiments: "
            f"{', '.join(spins_experiments)}."
        )
    experiment = spins_experiments[cfg.system]
    temperature = {f.name: f.default for f in dataclasses.fields(experiment)}["temperature"]
    if cfg.temperature is not None:
        temperature = cfg.temperature
    model = experiment.system_class(temperature, cfg.field)
    key_init, key_run = jr.split(jr.key(cfg.seed))
    keys = jr.split(key_init, cfg.num_replicas)
    spins = jax.vmap(lambda k: model.init_state(k, (cfg.size, cfg.size), cfg.magnetisation))(keys)

    def step(spins, key):
        if cfg.dynamics == "events":
            return model.advance_events(spins, key)
        return model.advance_time(spins, key, cfg.step_time), jnp.float32(cfg.step_time)

    def measure(spins):
        return {
            "m": jax.vmap(observables.magnetisation)(spins).mean(),
            "domain_wall_density": jax.vmap(observables.domain_wall_density)(spins).mean(),
        }

    step_all = eqx.filter_jit(jax.vmap(step))
    elapsed, records = 0.0, []
    start = time.perf_counter()
    for i in range(cfg.num_steps):
        spins, dt = step_all(spins, jr.split(jr.fold_in(key_run, i), cfg.num_replicas))
        elapsed += float(dt.mean())
        record = {
            "step": i + 1,
            "time": elapsed,
            **{k: float(v) for k, v in measure(spins).items()},
        }
        records.append(record)
        print(json.dumps(record), flush=True)
    wall = time.perf_counter() - start
    logger.info(
        "%d steps of %d replicas in %.2f s (including compilation)",
        cfg.num_steps,
        cfg.num_replicas,
        wall,
    )
    return records


RUN_HELP = """usage: jmacro run EXPERIMENT [--preset PRESET] [--out DIR] [--store DIR] [--force]
                  [--quiet] [--<parameter> VALUE ...]

Run a whole experiment and write metrics.json, report.md and plots to DIR (default
runs/<experiment>-<preset>, plus a short config hash when parameters are overridden: each config
gets its own directory). Stages are cached in a store shared by all runs beside DIR (default
DIR/../stages): a re-run resumes, a changed parameter recomputes only what depends on it, and
--force recomputes everything.

experiments: {experiments}
presets:     {presets}
parameters:  jmacro run EXPERIMENT --preset PRESET --help lists every parameter and its value.
"""


def _describe_presets() -> str:

    return "; ".join(f"{name}: {', '.join(cls.presets)}" for name, cls in EXPERIMENTS.items())


def prepare_run(argv: list[str]) -> tuple:
    """``jmacro run EXPERIMENT [--preset P] [--out DIR] [--store DIR] [--force] [--quiet]
    [overrides]``: the validated config, its claimed run directory and the runner options.
    Raises ``ValueError`` for the user's mistakes, before any compute."""

    if not argv or argv[0] in ("-h", "--help"):
        experiments = ", ".join(pipelines.EXPERIMENTS)
        print(RUN_HELP.format(experiments=experiments, presets=_describe_presets()))
        raise SystemExit(0 if argv else 2)
    parser = argparse.ArgumentParser(prog="jmacro run", add_help=False)
    parser.add_argument("experiment")
    parser.add_argument("--preset", default="quick")
    parser.add_argument("--out", default=None)
    parser.add_argument("--store", default=None)
    parser.add_argument("--force", action="store_true")
    parser.add_argument("--quiet", action="store_true")
    known, overrides = parser.parse_known_args(argv)
    try:
        base = pipelines.get_experiment(known.experiment, known.preset)
    except ValueError as error:
        print(f"jmacro: error: {error}", file=sys.stderr)
        raise SystemExit(2) from error
    cfg = tyro.cli(
        type(base),
        default=base,
        args=overrides,
        prog=f"jmacro run {known.experiment} --preset {known.preset}",
        description=f"{type(base).__doc__}\n\nRunner options, before the parameters: --preset "
        f"({', '.join(type(base).presets)}), --out DIR, --store DIR, --force, --quiet (see "
        "`jmacro run --help`). Parameters below show this preset's values.",
    )
    run_dir = Path(known.out) if known.out else pipelines.default_run_dir(cfg)
    pipelines.claim_run_dir(run_dir, cfg)
    return cfg, run_dir, known


def run_command(cfg, run_dir, options) -> None:
    """Run a validated config (``prepare_run``); errors from here on are not the user's and
    surface with their traceback."""
    result = pipelines.run(
        cfg, run_dir, store=options.store, force=options.force, progress=not options.quiet
    )
    metrics = result.metrics
    summary = ("experiment", "preset", "metric", "wall_time_s", "summary")
    print(json.dumps({k: metrics[k] for k in summary}, indent=2))
    print(f"wrote {result.run_dir}/metrics.json, report.md and plots")


COMMANDS = {"simulate": (SimulateConfig, simulate)}


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``jmacro`` console script; user errors exit with status 2."""
    logging.basicConfig(format="%(levelname)s %(name)s: %(message)s")
    logger.setLevel(logging.INFO)
    argv = sys.argv[1:] if argv is None else argv
    job = None
    try:
        if argv and argv[0] == "run":
            job = prepare_run(argv[1:])
        else:
            cfg = tyro.extras.subcommand_cli_from_dict(
                {name: config for name, (config, _) in COMMANDS.items()},
                prog="jmacro",
                args=argv,
                description="jmacro: learn macroscopic stochastic dynamics from small systems. "
                "Commands: simulate, run (see `jmacro run --help`).",
            )
            next(fn for config, fn in COMMANDS.values() if isinstance(cfg, config))(cfg)
    except ValueError as error:
        print(f"jmacro: error: {error}", file=sys.stderr)
        raise SystemExit(2) from error
    if job is not None:
        run_command(*job)


if __name__ == "__main__":
    main()
