"""Pieces shared by the experiment pipelines: run-directory ownership and model stages."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from jmacro.cache import StageCache, StageResult


def fit_stage(
    cache: StageCache,
    name: str,
    key_config: dict,
    train_fn: Callable[[Path], None],
    force: bool,
) -> StageResult:
    """A cached directory stage: ``train_fn(tmp_dir)`` writes a model (and its history) into a
    temporary directory that becomes ``run_dir/name`` atomically."""

    def build(tmp_dir):
        train_fn(Path(tmp_dir))

    return cache.get_or_build_dir(name, key_config, build, force=force)


def train_latent_sde(
    directory: Path,
    hyperparams: dict,
    normaliser,
    train,
    val,
    init_key,
    fit_key,
    covariance_scale: float,
    jitter: float,
    learning_rate: float,
    batch_size: int,
    num_epochs: int,
    progress: bool,
) -> None:
    """Fit a fresh latent SDE (``hyperparams``, ``init_key``, with ``normaliser``) on normalised
    ``train`` pairs with the covariance scale lambda, select it on ``val`` with lambda = 1, and
    write the model and ``history.json`` into ``directory`` (the body of an SDE stage)."""
    from jmacro.models import build_model
    from jmacro.training import TrainConfig, fit, increment_loss_fn, save_model

    sde = build_model(hyperparams, init_key).with_normaliser(normaliser)
    result = fit(
        sde,
        increment_loss_fn(covariance_scale, jitter),
        train,
        val,
        fit_key,
        TrainConfig(
            learning_rate=learning_rate,
            batch_size=batch_size,
            num_epochs=num_epochs,
            show_progress=progress,
            device_epochs=True,
        ),
        val_loss_fn=increment_loss_fn(1.0, jitter),
        hyperparams=hyperparams,
    )
    save_model(directory, result.model, hyperparams)
    (directory / "history.json").write_text(json.dumps([r._asdict() for r in result.history]))


def claim_run_dir(run_dir: Path, identity: dict) -> None:
    """Create ``run_dir`` for a run described by ``identity`` (JSON-friendly), or check that it
    already belongs to a run with the same identity. Raises ``ValueError`` (and leaves the
    directory untouched) if it holds another run or unrelated files, or cannot be written."""
    marker = run_dir / "run.json"
    if marker.is_file():
        stored = json.loads(marker.read_text())
        if stored != identity:
            raise ValueError(
                f"{run_dir} holds a run of {stored}, not {identity}; choose another --out "
                "directory (the existing run is left untouched)."
            )
        return
    if run_dir.exists() and any(run_dir.iterdir()):
        raise ValueError(
            f"{run_dir} exists, is not empty and is not a jmacro run directory; "
            "choose another --out directory."
        )
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        marker.write_text(json.dumps(identity))
    except OSError as error:
        raise ValueError(f"cannot write the run directory {run_dir}: {error}") from error
