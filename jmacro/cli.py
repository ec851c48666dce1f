"""The ``jmacro`` command line: ``run`` (an experiment) and ``simulate`` (a microscopic system).

jmacro --help                                  # the commands
jmacro run --help                              # experiments and presets
jmacro run ising --preset smoke --help         # every parameter of an experiment
jmacro simulate ising --size 64 --num-steps 10

User errors (bad flags, bad values, an unusable ``--out``) exit with status 2 and one message,
before any compute; Ctrl-C exits with status 130 and one line; errors inside a run keep their
traceback. Messages go through ``logging`` (logger ``jmacro``, timestamped, on stderr);
progress bars are drawn only on a terminal, and ``--quiet`` keeps warnings and errors only.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import os
import sys
import time
from pathlib import Path
from typing import Annotated, Literal

import jax
import jax.numpy as jnp
import jax.random as jr
import tyro
from tqdm.contrib.logging import logging_redirect_tqdm

import jmacro
from jmacro import observables, pipelines
from jmacro._checks import check_positive_int
from jmacro.pipelines import EXPERIMENTS
from jmacro.pipelines._spins import AbstractSpinExperiment

logger = logging.getLogger("jmacro")


@dataclasses.dataclass(frozen=True)
class SimulateConfig:
    """Simulate a batch of replicas of a microscopic system and print its observables."""

    system: Annotated[str, tyro.conf.Positional, tyro.conf.arg(metavar="SYSTEM")]
    """The microscopic system of a registered spin experiment: ising or curie-weiss."""
    size: int = 64
    """Lattice side L (L x L spins)."""
    num_steps: int = 10
    """Number of steps to print."""
    dynamics: Literal["events", "time"] = "events"
    """events: a step is L*L flips (random duration); time: a step lasts --step-time."""
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


def check_simulate(cfg: SimulateConfig) -> None:
    """Raise ``ValueError`` naming the flag for a value ``simulate`` cannot use."""
    check_positive_int(cfg.num_steps, "--num-steps")
    check_positive_int(cfg.num_replicas, "--num-replicas")
    if cfg.seed < 0:
        raise ValueError(f"--seed must be an integer >= 0, got {cfg.seed}.")
    if cfg.size < 2:
        raise ValueError(f"--size must be at least 2, got {cfg.size}.")
    if not (math.isfinite(cfg.step_time) and cfg.step_time > 0):
        raise ValueError(f"--step-time must be finite and > 0 (sweeps), got {cfg.step_time}.")
    if not -1 <= cfg.magnetisation <= 1:
        raise ValueError(f"--magnetisation must be in [-1, 1], got {cfg.magnetisation}.")
    if cfg.temperature is not None and not (math.isfinite(cfg.temperature) and cfg.temperature > 0):
        raise ValueError(f"--temperature must be finite and > 0, got {cfg.temperature}.")
    if not math.isfinite(cfg.field):
        raise ValueError(f"--field must be finite, got {cfg.field}.")


def simulate(cfg: SimulateConfig) -> list[dict]:
    """Run ``cfg`` and print one JSON line per step (ensemble means); return the records."""

    check_simulate(cfg)
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

    step_all = jax.jit(jax.vmap(step))
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
--force recomputes everything. Ctrl-C stops a run; completed stages are kept.

experiments: {experiments}
presets:     {presets}
parameters:  jmacro run EXPERIMENT --preset PRESET --help lists every parameter and its value.
"""

RUNNER_OPTIONS = """Runner options (anywhere on the line):
  --preset NAME   preset whose values the parameters below show; default quick
                  ({presets})
  --out DIR       run directory (default runs/{name}-PRESET, plus a config hash when overridden)
  --store DIR     stage store shared by runs (default DIR/../stages)
  --force         recompute every stage of this run
  --quiet         no progress bars and no progress messages, only warnings and errors"""


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
    base = pipelines.get_experiment(known.experiment, known.preset)
    cls = type(base)
    title = (cls.__doc__ or cls.name).replace("``", "`")
    options = RUNNER_OPTIONS.format(presets=", ".join(cls.presets), name=cls.name)
    cfg = tyro.cli(
        cls,
        default=base,
        args=overrides,
        prog=f"jmacro run {known.experiment} --preset {known.preset}",
        description=f"{title}\n\n{options}\n\nParameters (this preset's values):",
        # Comments above fields explain the code to its readers, they are not flag help.
        config=(tyro.conf.HelptextFromCommentsOff,),
    )
    cfg.check_inputs()  # user-given files (e.g. model weights), before the run directory
    run_dir = Path(known.out) if known.out else pipelines.default_run_dir(cfg)
    pipelines.claim_run_dir(run_dir, cfg)
    return cfg, run_dir, known


def stage_store(run_dir: Path, options) -> Path:
    """Where the run's stages live (``--store``, default ``<run_dir>/../stages``)."""
    return Path(options.store) if options.store else run_dir.parent / "stages"


def run_command(cfg, run_dir, options) -> None:
    """Run a validated config (``prepare_run``); errors from here on are not the user's and
    surface with their traceback. Progress bars only on a terminal (a log file gets one line
    per stage and epoch instead of bar redraws), none with ``--quiet``."""
    progress = not options.quiet and sys.stderr.isatty()
    with logging_redirect_tqdm(loggers=[logger]):
        result = pipelines.run(
            cfg, run_dir, store=stage_store(run_dir, options), force=options.force,
            progress=progress,
        )  # fmt: skip
    metrics = result.metrics
    summary = ("experiment", "preset", "metric", "wall_time_s", "summary")
    print(json.dumps({k: metrics[k] for k in summary}, indent=2))
    print(f"wrote {result.run_dir}/metrics.json, report.md and plots")


COMMANDS = {
    "run": "run (or resume) a whole experiment: data, models, evaluation, report\n"
    "              (`jmacro run --help`: experiments and presets)",
    "simulate": "simulate a microscopic system and print its observables",
}

MAIN_HELP = """usage: jmacro [-h] [--version] COMMAND ...

jmacro {version}: learn the macroscopic stochastic dynamics of large systems from simulations
of small ones (Chen, Huang, Novoselov, Li 2025).

commands:
{commands}

options:
  -h, --help    show this help message and exit
  --version     show jmacro's version and exit

`jmacro COMMAND --help` documents each command.
"""


def _main_help() -> str:
    commands = "\n".join(f"  {name:<10}  {text}" for name, text in COMMANDS.items())
    return MAIN_HELP.format(version=jmacro.__version__, commands=commands)


class _Formatter(logging.Formatter):
    """``2025-01-31 12:00:00 INFO jmacro.io.cache: message``."""

    def __init__(self):
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s", "%Y-%m-%d %H:%M:%S")


def setup_logging(quiet: bool = False) -> None:
    """Timestamped messages of the ``jmacro`` loggers on stderr: INFO and up, or WARNING and up
    with ``quiet``. Replaces the handler an earlier call installed (tests call ``main`` many
    times, each with its own stderr)."""
    for handler in [h for h in logger.handlers if getattr(h, "_jmacro_cli", False)]:
        logger.removeHandler(handler)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_Formatter())
    handler._jmacro_cli = True
    logger.addHandler(handler)
    logger.setLevel(logging.WARNING if quiet else logging.INFO)


def _interrupted(message: str) -> None:
    """Report a Ctrl-C in one line and exit with status 130 (128 + SIGINT) at once.

    ``os._exit`` skips the interpreter's teardown: run after an interrupt inside JAX, that
    teardown segfaulted in 2 of 3 tries (exit 139). Every write is atomic and cleans up its
    temporaries as the interrupt unwinds, so nothing is left to do; streams are flushed first.
    """
    print(f"jmacro: interrupted; {message}", file=sys.stderr)
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(130)


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``jmacro`` console script and of ``python -m jmacro``; user errors
    exit with status 2, Ctrl-C with 130."""
    argv = sys.argv[1:] if argv is None else list(argv)
    setup_logging(quiet="--quiet" in argv)
    job = None
    try:
        if not argv or argv[0] in ("-h", "--help"):
            print(_main_help(), end="")
            raise SystemExit(0 if argv else 2)
        if argv[0] in ("-V", "--version"):
            print(f"jmacro {jmacro.__version__}")
            raise SystemExit(0)
        command, rest = argv[0], argv[1:]
        if command == "run":
            job = prepare_run(rest)
        elif command == "simulate":
            simulate(tyro.cli(SimulateConfig, args=rest, prog="jmacro simulate"))
        else:
            raise ValueError(
                f"unknown command {command!r}; commands: {', '.join(COMMANDS)} (`jmacro --help`)."
            )
    except ValueError as error:
        print(f"jmacro: error: {error}", file=sys.stderr)
        raise SystemExit(2) from error
    except KeyboardInterrupt:
        _interrupted("nothing was computed.")
    if job is not None:
        cfg, run_dir, options = job
        try:
            run_command(cfg, run_dir, options)
        except KeyboardInterrupt:
            _interrupted(
                f"completed stages are kept in {stage_store(run_dir, options)}; "
                "re-run the same command to resume."
            )


if __name__ == "__main__":
    main()
