"""Checkpoints: ``eqx.tree_serialise_leaves`` of the training state plus JSON files.

A checkpoint directory holds

- ``state.eqx``: the leaves of a ``TrainingState`` (model, optimiser state, completed epochs,
  best model so far, its validation loss, epochs since the last improvement);
- ``hyperparams.json``: what is needed to rebuild the model skeleton
  (``jmacro.models.build_model``) and the training configuration;
- ``history.json``: one record per completed epoch.

Every file is written atomically (``jmacro.io.atomic``: a temporary file in the same directory,
fsynced, renamed over the old one), so a run killed at any moment leaves the previous complete
checkpoint. ``state.eqx`` is the source of truth for the epoch count;
``history.json`` is written before it and truncated to it on load.

``save_model``/``load_model`` store a final model the same way (``model.eqx`` +
``hyperparams.json``).
"""

from __future__ import annotations

import json
import os
import pathlib
from collections.abc import Mapping
from typing import Any, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp

from jmacro.io.atomic import atomic_file, atomic_write_json
from jmacro.models.registry import build_model

STATE_FILE = "state.eqx"
MODEL_FILE = "model.eqx"
HYPERPARAMS_FILE = "hyperparams.json"
HISTORY_FILE = "history.json"


class TrainingState(NamedTuple):
    """Everything ``fit`` needs to continue a run.

    Attributes:
        model: the current model.
        opt_state: the optimiser state.
        epoch: number of completed epochs.
        best_model: the model with the lowest validation loss so far.
        best_val_loss: that loss (``inf`` before the first epoch).
        epochs_since_improvement: completed epochs since ``best_val_loss`` last improved.
    """

    model: Any
    opt_state: Any
    epoch: int
    best_model: Any
    best_val_loss: float
    epochs_since_improvement: int


def write_json(path: str | os.PathLike, data: Any) -> None:
    """Atomically write ``data`` as indented JSON (tuples, sets and NumPy scalars allowed)."""
    atomic_write_json(path, data, default=_json_default)


def as_json(data: Any) -> Any:
    """``data`` as it reads back from JSON (tuples become lists), for comparisons."""
    return json.loads(json.dumps(data, default=_json_default))


def read_json(path: str | os.PathLike) -> Any:
    with open(path) as f:
        return json.load(f)


def checkpoint_exists(directory: str | os.PathLike) -> bool:
    return (pathlib.Path(directory) / STATE_FILE).is_file()


def save_checkpoint(
    directory: str | os.PathLike,
    state: TrainingState,
    history: list[Mapping[str, Any]] | None = None,
) -> None:
    """Atomically write ``history.json`` then ``state.eqx`` into ``directory``."""
    directory = pathlib.Path(directory)
    if history is not None:
        write_json(directory / HISTORY_FILE, list(history))
    with atomic_file(directory / STATE_FILE) as f:
        eqx.tree_serialise_leaves(f, state)


def load_checkpoint(directory: str | os.PathLike, like: TrainingState) -> TrainingState:
    """Read ``state.eqx`` into the structure of ``like`` (same model and optimiser shapes)."""
    path = pathlib.Path(directory) / STATE_FILE
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}.")
    return _deserialise(path, like)


def load_history(directory: str | os.PathLike, num_epochs: int) -> list[dict[str, Any]]:
    """The first ``num_epochs`` records of ``history.json`` (empty if absent)."""
    path = pathlib.Path(directory) / HISTORY_FILE
    return read_json(path)[:num_epochs] if path.is_file() else []


def save_model(
    directory: str | os.PathLike, model: eqx.Module, hyperparams: Mapping[str, Any]
) -> None:
    """Write ``model.eqx`` and ``hyperparams.json`` (``{"model": hyperparams}``) atomically.

    ``hyperparams`` must let ``jmacro.models.build_model`` rebuild the model's skeleton.
    """
    directory = pathlib.Path(directory)
    write_json(directory / HYPERPARAMS_FILE, {"model": dict(hyperparams)})
    with atomic_file(directory / MODEL_FILE) as f:
        eqx.tree_serialise_leaves(f, model)


def load_model(directory: str | os.PathLike, like: eqx.Module | None = None) -> eqx.Module:
    """Load ``model.eqx`` from ``directory``, rebuilding the skeleton from its JSON if
    ``like`` is not given (``fit`` writes both into its checkpoint directory on exit)."""
    directory = pathlib.Path(directory)
    if like is None:
        like = build_model(read_json(directory / HYPERPARAMS_FILE)["model"])
    if (directory / MODEL_FILE).is_file():
        return _deserialise(directory / MODEL_FILE, like)
    if checkpoint_exists(directory):
        raise FileNotFoundError(
            f"{directory} holds a training checkpoint but no final {MODEL_FILE}; load it with "
            "load_checkpoint, or let fit finish (it writes the best model on exit)."
        )
    raise FileNotFoundError(f"no {MODEL_FILE} in {directory}.")


def _as_like(file, like):
    """Read a JAX array leaf in the dtype of ``like``'s: a model written in float32 loads into
    a skeleton built under JAX_ENABLE_X64 (float64) and back; shapes must still match."""
    if isinstance(like, jax.Array):
        return jnp.asarray(jnp.load(file), like.dtype)
    return eqx.default_deserialise_filter_spec(file, like)


def _deserialise(path, like):
    try:
        with open(path, "rb") as f:
            return eqx.tree_deserialise_leaves(f, like, filter_spec=_as_like)
    except RuntimeError as error:  # equinox: a leaf changed type or shape
        raise ValueError(
            f"{path} does not fit this model (it was written for another model or "
            f"optimiser): {error}"
        ) from error


def _json_default(value):
    if isinstance(value, tuple | set):
        return list(value)
    if hasattr(value, "item"):  # NumPy / JAX scalars
        return value.item()
    raise TypeError(f"cannot store {type(value).__name__} {value!r} in JSON hyperparameters.")
