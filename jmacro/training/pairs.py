"""Training pairs (z_t, z~_{t+dt}, dt[, c]) from large snapshots and partially evolved patches.

Given a large snapshot x_t, the index I of the one patch that was evolved, the evolved patch
x_{t+dt,I} and the elapsed time dt (Algorithm 2 of the paper), with phi the autoencoder's
``encode``, phi_loc its ``encode_patch`` (a patch encoded as a small periodic system) and
x'_{t+dt} the snapshot with patch I replaced by the evolved one (frozen elsewhere):

- ``"ours"``:     z_t = phi(x_t),  z~ = z_t + K (phi(x'_{t+dt}) - phi(x_t)),  computed locally
  by ``ClosureAutoencoder.replacement_increment``: the patch's closure code phi_loc
  difference plus the change of the known observables of every share that reads the patch
  (for ``known="ising"``: all bonds touching the patch, the ones crossing its boundary read
  against the snapshot's frozen neighbours). For known observables that read no halo this is
  z_t + phi_loc(x_{t+dt,I}) - phi_loc(x_{t,I}), the reference's formula;
- ``"baseline"``: z_t = phi(x_t),  z~ = phi_loc(x_{t+dt,I})   (the patch treated as the system;
  exactly as the reference builds it: the start point is the *large* system's latent);
- ``"patch"``:    z_t = phi_loc(x_{t,I}),  z~ = phi_loc(x_{t+dt,I})  (a documented alternative
  baseline: a small system on its own, both ends from the patch).

The baselines treat the evolved patch as a small system of its own, and that small system is
periodic (it is what a small simulation is), so its latent is phi_loc: the patch's own
periodic observables (for Ising its domain-wall density counts the bonds wrapping around the
patch), not its share of a large lattice.

Note that "ours" has no 1/K factor: moving one patch moves z by (1/K) of that increment,
but choosing the patch uniformly makes the increment an unbiased estimate of the *full*
drift times dt, with K times the full covariance (Theorem 1) - hence lambda = K in the loss.
Theorem 1 is an O(dt) statement: it holds as dt -> 0. At a finite pair duration the patch
evolves while everything it interacts with outside stays frozen, and on the real simulators
(docs/pair_bias.md, experiments/pair_bias.py) "ours" underestimates the drift by 16-20 % at
dt = 1 sweep for Curie-Weiss (K = 4-16; ~0.2 dt) and by 2-3 % for Ising with a frozen halo
(l = 16-8), the diffusion by a similar amount; docs/pair_bias.md gives the table and the
recommended pair durations.

``encode_full_pairs`` encodes true full-system pairs (phi(x_t), phi(x_{t+dt})), the
validation data. Encoding runs in fixed-size jitted chunks from host (possibly memory-mapped)
arrays and returns host NumPy arrays.

Normalisation: ``fit_normaliser`` computes a ``LatentNormaliser`` (latent offset/scale, and the
time scale = mean validation dt, as the reference), and ``normalise_pairs`` maps pairs to the
model's coordinates u = (z - offset)/scale, tau = dt / time_scale.

Conditions: for a model of a family of dynamics dz = mu(z, c) dt + Sigma(z, c) dW (e.g. c a
temperature), each pair carries the condition c it was simulated at, ``condition`` of shape
``(n, k)``; the encoders take it as an optional argument and pass it through. The condition is
NOT normalised by the latent normaliser (``normalise_pairs`` passes it on unchanged): choose its
O(1) units when building the pairs, and use the same at rollout. ``condition = None`` (the
default) means unconditioned pairs, for a model with ``condition_dim = 0``.
"""

from __future__ import annotations

from typing import NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float, Int, Shaped

from jmacro import lattice
from jmacro._checks import check_positive_int
from jmacro.models.alloy import SROEncoder
from jmacro.models.closure import ClosureAutoencoder
from jmacro.models.sde import LatentNormaliser

Encoder = ClosureAutoencoder | SROEncoder
"""What the pair encoders take: a closure autoencoder, or the alloy's closed SRO encoder."""

PAIR_METHODS = ("ours", "baseline", "patch")


class IncrementPairs(NamedTuple):
    """A batch of one-step increments z0 -> z1 over a time dt, at a condition c.

    A pytree whose array leaves share the leading (sample) axis, so ``fit`` batches all of
    them, ``condition`` included; ``None`` is an empty subtree, skipped by ``jax.tree.map``.
    Read the fields by name (a tuple unpacking ``z0, z1, dt = pairs`` would see 4 fields).

    Attributes:
        z0: ``(n, d)`` start latents.
        z1: ``(n, d)`` end latents (or their partial-evolution estimate).
        dt: ``(n,)`` elapsed times, > 0.
        condition: ``(n, k)`` the condition vector of each pair (e.g. its temperature, in the
            units the model sees: it is never normalised), or ``None`` (default) for
            unconditioned pairs.
    """

    z0: Float[ArrayLike, "n d"]
    z1: Float[ArrayLike, "n d"]
    dt: Float[ArrayLike, " n"]
    condition: Float[ArrayLike, "n k"] | None = None


def partial_evolution_pair(
    autoencoder: Encoder,
    snapshot: Shaped[Array, " *config"],
    patch_index: int | Int[Array, ""],
    evolved_patch: Shaped[Array, " *patch"],
    method: str = "ours",
) -> tuple[Float[Array, " d"], Float[Array, " d"]]:
    """(z_t, z~_{t+dt}), each ``(latent_dim,)``, for ONE ``snapshot`` whose patch
    ``patch_index`` became ``evolved_patch`` (see the module doc for the methods).

    An encoder with its own ``partial_pair(snapshot, index, evolved, method)`` builds the pair
    itself (the alloy's ``SROEncoder``, whose patch is a vacancy-centred window)."""
    own = getattr(autoencoder, "partial_pair", None)
    if own is not None:
        return own(snapshot, patch_index, evolved_patch, method)
    if method == "patch":
        old = lattice.extract_patch(snapshot, patch_index, autoencoder.patch_shape)
        return autoencoder.encode_patch(old), autoencoder.encode_patch(evolved_patch)
    codes = autoencoder.encode_patches(snapshot)  # (K, d): z_t is their mean
    z_t = jnp.mean(codes, axis=0)
    if method == "ours":
        increment = autoencoder.replacement_increment(snapshot, patch_index, evolved_patch, codes)
        return z_t, z_t + increment
    if method == "baseline":
        return z_t, autoencoder.encode_patch(evolved_patch)
    raise ValueError(f"unknown pair method {method!r}; use one of {PAIR_METHODS}.")


def encode_partial_evolution_pairs(
    autoencoder: Encoder,
    snapshots: Shaped[ArrayLike, " n *config"],
    patch_index: Int[ArrayLike, " n"],
    evolved_patches: Shaped[ArrayLike, " n *patch"],
    dt: Float[ArrayLike, " n"],
    *,
    method: str = "ours",
    chunk_size: int = 1024,
    condition: Float[ArrayLike, "n k"] | None = None,
) -> IncrementPairs:
    """Encode partial-evolution data into ``IncrementPairs`` of host float32 arrays.

    Args:
        autoencoder: the (trained) closure autoencoder.
        snapshots: ``(n, *config_shape)`` large snapshots x_t (host arrays are fine).
        patch_index: ``(n,)`` index in [0, K) of the evolved patch (row-major, as
            ``lattice.tile``/``lattice.extract_patch``).
        evolved_patches: ``(n, *patch_shape)`` the patch after partial evolution.
        dt: ``(n,)`` elapsed times, finite and > 0.
        method: ``"ours"``, ``"baseline"`` or ``"patch"`` (see the module doc).
        chunk_size: snapshots encoded per jitted call.
        condition: ``(n, k)`` condition of each pair (e.g. the temperature its snapshot and
            patch were simulated at), passed through as float32, not normalised; or ``None``.
    """
    if method not in PAIR_METHODS:
        raise ValueError(f"unknown pair method {method!r}; use one of {PAIR_METHODS}.")
    n = _check_leading(snapshots, autoencoder.config_shape, "snapshots")
    _check_leading(evolved_patches, autoencoder.patch_shape, "evolved_patches", n)
    index = np.asarray(patch_index)
    num_patches = autoencoder.num_patches
    if index.shape != (n,) or not np.issubdtype(index.dtype, np.integer):
        raise ValueError(
            f"patch_index must be {n} integers, got shape {index.shape}, {index.dtype}."
        )
    if np.any((index < 0) | (index >= num_patches)):
        raise ValueError(f"patch_index must lie in [0, K = {num_patches}).")
    dt = _check_dt(dt, n)
    condition = check_condition_rows(condition, n)
    z0, z1 = _map_chunks(
        lambda x, i, p: _partial_pairs_chunk(autoencoder, x, i, p, method),
        (snapshots, index.astype(np.int32), evolved_patches),
        n,
        chunk_size,
    )
    return IncrementPairs(z0, z1, dt, condition)


def encode_full_pairs(
    autoencoder: Encoder,
    snapshots: Shaped[ArrayLike, " n *config"],
    next_snapshots: Shaped[ArrayLike, " n *config"],
    dt: Float[ArrayLike, " n"],
    *,
    chunk_size: int = 1024,
    condition: Float[ArrayLike, "n k"] | None = None,
) -> IncrementPairs:
    """True full-system pairs (phi(x_t), phi(x_{t+dt}), dt) as host float32 arrays, with the
    optional ``(n, k)`` ``condition`` of each pair passed through (not normalised)."""
    n = _check_leading(snapshots, autoencoder.config_shape, "snapshots")
    _check_leading(next_snapshots, autoencoder.config_shape, "next_snapshots", n)
    dt = _check_dt(dt, n)
    condition = check_condition_rows(condition, n)
    z0, z1 = _map_chunks(
        lambda a, b: (_encode_chunk(autoencoder, a), _encode_chunk(autoencoder, b)),
        (snapshots, next_snapshots),
        n,
        chunk_size,
    )
    return IncrementPairs(z0, z1, dt, condition)


def encode_configurations(
    autoencoder: Encoder,
    configurations: Shaped[ArrayLike, " n *config"],
    *,
    chunk_size: int = 1024,
) -> Float[np.ndarray, "n d"]:
    """phi(x) of each configuration, ``(n, latent_dim)`` host float32 (e.g. test ensembles)."""
    n = _check_leading(configurations, autoencoder.config_shape, "configurations")
    (z,) = _map_chunks(lambda x: (_encode_chunk(autoencoder, x),), (configurations,), n, chunk_size)
    return z


def fit_normaliser(
    latents: Float[ArrayLike, "n d"],
    validation_dt: Float[ArrayLike, " m"],
    method: str = "standard",
) -> LatentNormaliser:
    """Latent statistics of ``latents`` and time scale = mean of ``validation_dt``.

    The reference divides all times by the mean dt of the validation (full-system) pairs,
    so one unit of model time is one typical simulator step.
    """
    validation_dt = _check_dt(validation_dt, -1)
    return LatentNormaliser.from_data(latents, float(np.mean(validation_dt)), method)


def normalise_pairs(pairs: IncrementPairs, normaliser: LatentNormaliser) -> IncrementPairs:
    """Map physical pairs to model coordinates: u = (z - offset)/scale, tau = dt/time_scale.

    The condition, if any, is passed on unchanged (as float32): the latent normaliser does
    not apply to it, and the model sees it in the units the pairs carry.
    """
    offset = np.asarray(normaliser.offset)
    scale = np.asarray(normaliser.scale)
    time_scale = float(normaliser.time_scale)
    z0, z1 = np.asarray(pairs.z0), np.asarray(pairs.z1)
    if z0.ndim != 2 or z0.shape != z1.shape or z0.shape[1] != offset.shape[0]:
        raise ValueError(
            f"pairs must have z0, z1 of shape (n, {offset.shape[0]}), got {z0.shape} and "
            f"{z1.shape}."
        )
    return IncrementPairs(
        ((z0 - offset) / scale).astype(np.float32),
        ((z1 - offset) / scale).astype(np.float32),
        (np.asarray(pairs.dt) / time_scale).astype(np.float32),
        check_condition_rows(pairs.condition, z0.shape[0]),
    )


def check_condition_rows(condition: ArrayLike | None, n: int) -> Float[np.ndarray, "n k"] | None:
    """``condition`` as a finite host float32 ``(n, k)`` array (k >= 1), or ``None``."""
    if condition is None:
        return None
    condition = np.asarray(condition, np.float32)
    if condition.ndim != 2 or condition.shape[0] != n or condition.shape[1] == 0:
        raise ValueError(
            f"condition must have shape ({n}, k >= 1), one condition vector per pair, got "
            f"{condition.shape}; use None for unconditioned pairs and condition[:, None] for "
            "a scalar condition."
        )
    if not np.all(np.isfinite(condition)):
        raise ValueError("condition must be finite.")
    return condition


# ---------------------------------------------------------------------------------- helpers
@eqx.filter_jit
def _partial_pairs_chunk(model, snapshots, index, evolved, method):
    pair = lambda x, i, p: partial_evolution_pair(model, x, i, p, method)  # noqa: E731
    return jax.vmap(pair)(snapshots, index, evolved)


@eqx.filter_jit
def _encode_chunk(model, configurations):
    return jax.vmap(model.encode)(configurations)


def _check_leading(array, item_shape, name, n=None) -> int:
    shape = tuple(np.shape(array))
    if shape[1:] != tuple(item_shape) or (n is not None and shape[0] != n):
        expected = ("n" if n is None else str(n), *item_shape)
        raise ValueError(f"{name} must have shape {expected}, got {shape}.")
    if shape[0] == 0:
        raise ValueError(f"{name} is empty.")
    return shape[0]


def _check_dt(dt, n) -> np.ndarray:
    dt = np.asarray(dt, np.float32)
    if dt.ndim != 1 or (n >= 0 and dt.shape[0] != n):
        raise ValueError(f"dt must be a vector of {n} elapsed times, got shape {dt.shape}.")
    bad = ~np.isfinite(dt) | (dt <= 0)
    if np.any(bad):
        raise ValueError(
            f"dt must be finite and > 0; {int(bad.sum())} entries are not (first: index "
            f"{int(np.argmax(bad))}, value {dt[np.argmax(bad)]}). An infinite dt marks a "
            "simulator that could not make its events; drop those samples."
        )
    return dt


def _map_chunks(fn, arrays, n, chunk_size):
    """Apply a jitted ``fn`` to fixed-size chunks (the last one padded) and concatenate."""
    chunk_size = min(check_positive_int(chunk_size, "chunk_size"), n)
    outputs = []
    for start in range(0, n, chunk_size):
        stop = min(start + chunk_size, n)
        chunk = [np.asarray(a[start:stop]) for a in arrays]
        if stop - start < chunk_size:  # pad so that every call has the same shape: one compile
            pad = chunk_size - (stop - start)
            chunk = [np.concatenate([c, np.repeat(c[:1], pad, axis=0)]) for c in chunk]
        result = fn(*chunk)
        outputs.append([np.asarray(r)[: stop - start] for r in result])
    return tuple(np.concatenate(parts).astype(np.float32) for parts in zip(*outputs, strict=True))
