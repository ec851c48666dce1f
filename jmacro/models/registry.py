"""Rebuild a model from the JSON hyperparameters stored next to its weights.

A model's hyperparameters are ``{"kind": <builder name>, **builder kwargs}``, every value
JSON-friendly; ``build_model`` calls the builder to get a skeleton of the right structure,
which ``eqx.tree_deserialise_leaves`` then fills with the saved weights.

``"latent_sde"`` takes ``latent_dim``, ``diffusion_mode``, ``width_size``, ``depth`` and
``condition_dim`` (the length k of the condition vector c the networks see with u, e.g. 1 for a
temperature; default 0, no condition). Hyperparameters written before ``condition_dim`` existed
lack it and rebuild, through that default, the unconditioned model they were saved from.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import equinox as eqx
import jax.random as jr
from jaxtyping import PRNGKeyArray

from jmacro.models.closure import make_field_autoencoder, make_spin_autoencoder
from jmacro.models.sde import make_latent_sde

MODEL_BUILDERS: dict[str, Callable[..., eqx.Module]] = {
    "latent_sde": make_latent_sde,
    "spin_autoencoder": make_spin_autoencoder,
    "field_autoencoder": make_field_autoencoder,
}


def model_hyperparams(kind: str, **kwargs: Any) -> dict[str, Any]:
    """``{"kind": kind, **kwargs}`` after checking that ``kind`` names a builder."""
    if kind not in MODEL_BUILDERS:
        raise ValueError(f"unknown model kind {kind!r}; use one of {sorted(MODEL_BUILDERS)}.")
    return {"kind": kind, **kwargs}


def build_model(hyperparams: Mapping[str, Any], key: PRNGKeyArray | None = None) -> eqx.Module:
    """Call the builder named by ``hyperparams["kind"]`` with the other entries.

    Lists (JSON has no tuples) are turned back into tuples. ``key`` only matters for a fresh
    model; a skeleton to load weights into can use the default.
    """
    params = dict(hyperparams)
    kind = params.pop("kind", None)
    if kind not in MODEL_BUILDERS:
        raise ValueError(
            f"hyperparameters name model kind {kind!r}; known kinds: {sorted(MODEL_BUILDERS)}."
        )
    params = {k: tuple(v) if isinstance(v, list) else v for k, v in params.items()}
    return MODEL_BUILDERS[kind](jr.key(0) if key is None else key, **params)
