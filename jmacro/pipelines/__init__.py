"""One pipeline per experiment: a frozen config dataclass with named presets and ``run``.

from jmacro.pipelines import run_experiment
result = run_experiment("ising", "smoke", "runs/ising-smoke")

Experiments: ``ising`` and ``curie-weiss`` (``jmacro.pipelines.spins``), ``predator-prey``
(``jmacro.pipelines.predator_prey``).
"""

from __future__ import annotations

from pathlib import Path

from jmacro.pipelines import predator_prey, spins
from jmacro.pipelines.predator_prey import PredatorPreyPipelineConfig
from jmacro.pipelines.spins import RunResult, SpinPipelineConfig
from jmacro.pipelines.spins import run as run_spins

PRESETS: dict[str, dict[str, SpinPipelineConfig | PredatorPreyPipelineConfig]] = {
    **spins.PRESETS,
    "predator-prey": predator_prey.PRESETS,
}
EXPERIMENTS = tuple(PRESETS)


def get_config(
    experiment: str, preset: str = "quick"
) -> SpinPipelineConfig | PredatorPreyPipelineConfig:
    """The preset config of an experiment; clear error on an unknown name."""
    if experiment not in PRESETS:
        raise ValueError(f"unknown experiment {experiment!r}; choose one of {EXPERIMENTS}.")
    if preset not in PRESETS[experiment]:
        raise ValueError(
            f"unknown preset {preset!r} for {experiment}; choose one of "
            f"{tuple(PRESETS[experiment])}."
        )
    return PRESETS[experiment][preset]


def run(
    cfg: SpinPipelineConfig | PredatorPreyPipelineConfig,
    run_dir: str | Path,
    *,
    force: bool = False,
    progress: bool = True,
) -> RunResult:
    """Run (or resume) the pipeline that ``cfg`` configures in ``run_dir``."""
    if isinstance(cfg, PredatorPreyPipelineConfig):
        return predator_prey.run(cfg, run_dir, force=force, progress=progress)
    if isinstance(cfg, SpinPipelineConfig):
        return run_spins(cfg, run_dir, force=force, progress=progress)
    raise TypeError(f"not a pipeline config: {type(cfg).__name__}.")


def run_experiment(
    experiment: str,
    preset: str = "quick",
    run_dir: str | Path | None = None,
    *,
    force: bool = False,
    progress: bool = True,
) -> RunResult:
    """Run an experiment preset in ``run_dir`` (default ``runs/<experiment>-<preset>``)."""
    cfg = get_config(experiment, preset)
    run_dir = run_dir or Path("runs") / f"{experiment}-{preset}"
    return run(cfg, run_dir, force=force, progress=progress)


__all__ = [
    "EXPERIMENTS",
    "PRESETS",
    "PredatorPreyPipelineConfig",
    "RunResult",
    "SpinPipelineConfig",
    "get_config",
    "run",
    "run_experiment",
    "run_spins",
]
