"""Rebuild a model from the JSON hyperparameters stored next to its weights.

A model's hyperparameters are ``{"kind": <builder name>, **builder kwargs}``, every value
JSON-friendly; ``build_model`` calls the builder to get a skeleton of the right structure,
which ``eqx.tree_deserialise_leaves`` then fills with the saved weights.

``"latent_sde"`` takes ``latent_dim``, ``diffusion_mode``, ``width_size``, ``depth``,
``condition_dim`` (the length k of the condition vector c the networks see with u, e.g. 1 for a
temperature; default 0, no condition), ``drift_mode`` (``"mlp"``, default, or ``"onsager"``)
and ``drift_options`` (the Onsager drift's ``embedding_dim``, ``alpha``, ``beta``).
``"sro_encoder"`` (the alloy's closed SRO latent, nothing to train) takes ``num_cells``,
``tile_cells`` and ``coordinates``.
Hyperparameters written before ``condition_dim`` existed lack it and rebuild, through that
default, the unconditioned model they were saved from.

Formats: when a builder's hyperparameters change meaning, its entry in ``FORMATS`` is bumped;
``model_hyperparams`` stamps the current format as ``"format"`` (kinds at format 1 are not
stamped), and ``build_model`` upgrades older hyperparameters (no ``"format"`` means 1) to the
current meaning before calling the builder. ``"spin_autoencoder"`` format 2: ``known="ising"``
became the lattice's domain-wall density, each patch owning its right and lower bonds read
through the lattice; format-1 hyperparameters with ``known="ising"`` (the patch-periodic
bonds) rebuild with ``known="ising_periodic"``, the model they were saved from.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import equinox as eqx
import jax.random as jr
from jaxtyping import PRNGKeyArray

from jmacro.models.alloy import make_sro_encoder
from jmacro.models.closure import make_field_autoencoder, make_spin_autoencoder
from jmacro.models.sde import make_latent_sde

MODEL_BUILDERS: dict[str, Callable[..., eqx.Module]] = {
    "latent_sde": make_latent_sde,
    "spin_autoencoder": make_spin_autoencoder,
    "field_autoencoder": make_field_autoencoder,
    "sro_encoder": make_sro_encoder,
}


# The current hyperparameter format of each builder whose format is not 1 (see module doc).
FORMATS: dict[str, int] = {"spin_autoencoder": 2}


def _spin_autoencoder_from_format_1(params: dict[str, Any]) -> dict[str, Any]:
    # Format 1: "ising" (also the builder's default then) meant the patch-periodic bonds.
    if params.get("known", "ising") == "ising":
        params["known"] = "ising_periodic"
    return params


# kind -> {format f: upgrade of format-f hyperparameters (without kind/format) to f + 1}
_UPGRADES: dict[str, dict[int, Callable[[dict[str, Any]], dict[str, Any]]]] = {
    "spin_autoencoder": {1: _spin_autoencoder_from_format_1},
}


def model_hyperparams(kind: str, **kwargs: Any) -> dict[str, Any]:
    """``{"kind": kind, **kwargs}`` after checking that ``kind`` names a builder, plus
    ``"format"`` (the current one) for kinds whose format is not 1."""
    if kind not in MODEL_BUILDERS:
        raise ValueError(f"unknown model kind {kind!r}; use one of {sorted(MODEL_BUILDERS)}.")
    if "format" in kwargs:
        raise ValueError('"format" is stamped by model_hyperparams, not a builder argument.')
    stamp = {"format": FORMATS[kind]} if kind in FORMATS else {}
    return {"kind": kind, **stamp, **kwargs}


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
    params = _upgrade(kind, params)
    return MODEL_BUILDERS[kind](jr.key(0) if key is None else key, **params)


def _upgrade(kind: str, params: dict[str, Any]) -> dict[str, Any]:
    """Hyperparameters of any format (popped from ``params``) in the current format."""
    current = FORMATS.get(kind, 1)
    version = params.pop("format", 1)
    if isinstance(version, bool) or not isinstance(version, int) or not 1 <= version <= current:
        raise ValueError(
            f"hyperparameters of {kind!r} have format {version!r}; this jmacro reads formats "
            f"1 to {current} (a newer jmacro wrote them?)."
        )
    for step in range(version, current):
        params = _UPGRADES[kind][step](params)
    return params
