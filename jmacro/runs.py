"""Open a finished run directory from your own code: ``jmacro.load_run(path)``.

A run directory (``jmacro run ... --out DIR``) holds ``run.json`` (the config), ``metrics.json``
(scores and the path of every stage) and the report; the stages themselves live in the store
(``DIR/../stages`` by default). ``load_run`` reads the two JSON files and returns a ``Run``
whose ``models`` and ``datasets`` are mappings from stage names to the trained Equinox models
and the memory-mapped datasets, each loaded the first time it is asked for::

    run = jmacro.load_run("runs/ising-quick")
    ae, sde = run.models["ns256_autoencoder"], run.models["ns256_sde_ours"]
    snapshots = run.datasets["ns256_large"]["snapshots"]    # np.memmap, read-only
    run.metrics["summary"]["ns256"]["ours"]["mean"]

Stage names are those of ``metrics.json["stages"]``: ``seed<s>/<scale>_<stage>``; a name
without the ``seed<s>/`` part means the first replicate (master seed ``config.seed``).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

MODEL_FILE = "model.eqx"


class _LazyStages(Mapping):
    """Stage name -> object, loaded by ``load`` on first access and kept."""

    def __init__(self, paths: Mapping[str, Path], load: Callable[[Path], Any], first_seed: int):
        self._paths, self._load, self._first = dict(paths), load, first_seed
        self._loaded: dict[str, Any] = {}

    def _full(self, name: str) -> str:
        if name in self._paths or "/" in name:
            return name
        return f"seed{self._first}/{name}"

    def __getitem__(self, name: str) -> Any:
        full = self._full(name)
        if full not in self._paths:
            short = sorted({k.split("/", 1)[1] for k in self._paths})
            raise KeyError(f"no stage {name!r} here; stages: {', '.join(short)}.")
        if full not in self._loaded:
            self._loaded[full] = self._load(self._paths[full])
        return self._loaded[full]

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self._full(name) in self._paths

    def __iter__(self) -> Iterator[str]:
        return iter(self._paths)

    def __len__(self) -> int:
        return len(self._paths)

    def __repr__(self) -> str:
        return f"{{{', '.join(self._paths)}}} (loaded on access)"


@dataclasses.dataclass(frozen=True, eq=False)
class Run:
    """A finished run, as ``load_run`` returns it.

    Attributes:
        path: the run directory.
        config: the experiment's config (a frozen dataclass, as ``get_experiment`` builds it).
        metrics: ``metrics.json`` (``summary``, ``results``, ``floors``, ``wall_time_s``...).
        models: stage name -> trained model (``ClosureAutoencoder`` or ``LatentSDE``), e.g.
            ``"ns256_sde_ours"``; loaded on first access.
        datasets: stage name -> read-only ``jmacro.io.Dataset`` of memory-mapped arrays, e.g.
            ``"truth"``, ``"ns256_large"``, ``"ns256_evaluation"``; opened on first access.
        histories: stage name -> per-epoch training records of an SDE stage (``epoch``,
            ``train_loss``, ``val_loss``, ``learning_rate``, ``seconds``).
    """

    path: Path
    config: Any
    metrics: dict
    models: Mapping[str, Any]
    datasets: Mapping[str, Any]
    histories: Mapping[str, list]


def load_run(path: str | Path) -> Run:
    """Open the finished run in ``path`` (see the module docstring).

    Stage paths are read from ``metrics.json``; a stage that is not there (the run directory and
    its store were moved together) is looked up in ``<path>/../stages``.

    Raises:
        FileNotFoundError: ``path`` is not a finished run directory (no ``run.json`` or no
            ``metrics.json``: re-run the same command to finish it).
    """
    from jmacro.io import load_dataset
    from jmacro.pipelines import EXPERIMENTS
    from jmacro.training import load_model

    path = Path(path)
    for name in ("run.json", "metrics.json"):
        if not (path / name).is_file():
            raise FileNotFoundError(
                f"{path} is not a finished jmacro run directory (no {name}); "
                "a run writes metrics.json when it completes: re-run the same command."
            )
    identity = json.loads((path / "run.json").read_text())
    metrics = json.loads((path / "metrics.json").read_text())
    config = _rebuild_config(EXPERIMENTS[identity["experiment"]], identity["config"])
    paths = {name: _locate(path, Path(stage)) for name, stage in metrics["stages"].items()}
    kinds = {name: (p / MODEL_FILE).is_file() for name, p in paths.items()}
    models = {name: p for name, p in paths.items() if kinds[name]}
    datasets = {name: p for name, p in paths.items() if not kinds[name]}
    histories = {name: p for name, p in models.items() if (p / "history.json").is_file()}
    return Run(
        path=path,
        config=config,
        metrics=metrics,
        models=_LazyStages(models, load_model, config.seed),
        datasets=_LazyStages(datasets, load_dataset, config.seed),
        histories=_LazyStages(
            histories, lambda p: json.loads((p / "history.json").read_text()), config.seed
        ),
    )


def _locate(run_dir: Path, stage: Path) -> Path:
    if stage.exists():
        return stage
    return run_dir.parent / "stages" / stage.name


def _rebuild_config(cls, stored: dict) -> Any:
    """The config from its JSON form (``run.json``): JSON lists back to tuples, sub-configs
    from their dicts (``AbstractExperiment.create``)."""

    def tuples(value):
        if isinstance(value, list):
            return tuple(tuples(v) for v in value)
        if isinstance(value, dict):
            return {k: tuples(v) for k, v in value.items()}
        return value

    return cls.create(**tuples(stored))
