"""One pipeline per experiment: a frozen config dataclass with named presets and ``run``.

from jmacro.pipelines import PRESETS, run_experiment
result = run_experiment("ising", "smoke", "runs/ising-smoke")
"""

from __future__ import annotations

from pathlib import Path

from jmacro.pipelines.spins import PRESETS, RunResult, SpinPipelineConfig
from jmacro.pipelines.spins import run as run_spins

EXPERIMENTS = tuple(PRESETS)


def get_config(experiment: str, preset: str = "quick") -> SpinPipelineConfig:
    """The preset config of an experiment; clear error on an unknown name."""
    if experiment not in PRESETS:
        raise ValueError(f"unknown experiment {experiment!r}; choose one of {EXPERIMENTS}.")
    if preset not in PRESETS[experiment]:
        raise ValueError(
            f"unknown preset {preset!r} for {experiment}; choose one of "
            f"{tuple(PRESETS[experiment])}."
        )
    return PRESETS[experiment][preset]


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
    return run_spins(
        cfg, run_dir or Path("runs") / f"{experiment}-{preset}", force=force, progress=progress
    )


__all__ = [
    "EXPERIMENTS",
    "PRESETS",
    "RunResult",
    "SpinPipelineConfig",
    "get_config",
    "run_experiment",
    "run_spins",
]
