"""Experiments and the one runner.

    from jmacro.pipelines import get_experiment, run
    cfg = get_experiment("ising", "smoke")          # a frozen, documented config
    result = run(cfg, "runs/ising-smoke")           # metrics.json, report.md, plots

``EXPERIMENTS`` maps a name to its experiment class (``jmacro.pipelines.base``); a new
experiment is one module with one class, added here.
"""

from __future__ import annotations

from jmacro.pipelines.base import AbstractExperiment, RunResult, Scale, SDEVariant
from jmacro.pipelines.curie_weiss import CurieWeiss
from jmacro.pipelines.ising import Ising
from jmacro.pipelines.nbmota import NbMoTa
from jmacro.pipelines.predator_prey import PredatorPrey
from jmacro.pipelines.runner import claim_run_dir, default_run_dir, run

EXPERIMENTS: dict[str, type[AbstractExperiment]] = {
    cls.name: cls for cls in (Ising, CurieWeiss, PredatorPrey, NbMoTa)
}


def get_experiment(name: str, preset: str = "quick", **overrides) -> AbstractExperiment:
    """The config of experiment ``name`` at ``preset``, with ``overrides`` (sub-configs may be
    given as dicts of the fields that change); clear errors on unknown names."""
    if name not in EXPERIMENTS:
        raise ValueError(f"unknown experiment {name!r}; choose one of {tuple(EXPERIMENTS)}.")
    return EXPERIMENTS[name].from_preset(preset, **overrides)


__all__ = [
    "EXPERIMENTS",
    "AbstractExperiment",
    "CurieWeiss",
    "Ising",
    "NbMoTa",
    "PredatorPrey",
    "RunResult",
    "SDEVariant",
    "Scale",
    "claim_run_dir",
    "default_run_dir",
    "get_experiment",
    "run",
]
