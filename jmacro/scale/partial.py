"""Partial evolution (Algorithm 2 of the paper): evolve ONE patch of a large snapshot.

For a large snapshot x_t tiled into K patches (``jmacro.geometry``: squares of side l of a
2D lattice, segments of n / K cells of a 1D field, ...), choose a patch index I uniformly in
[0, K), evolve only the sites of that patch with the small-system simulator while it sees the
boundary the tiling builds from x_t, and return the evolved patch x_{t+dt, I}, the elapsed time
dt and I. No other site is touched: the function returns only the patch, and
``apply_patch`` / ``tiling.insert`` writes it back. One implementation serves every system.

Boundaries (what the evolving patch sees outside itself; the system must support it):

- ``Periodic``: the patch is cut out and evolves as an isolated periodic small system (the
  reference's choice for the Ising model);
- ``FrozenHalo``: the patch sees its real neighbours in the snapshot, which stay frozen;
- ``MeanField``: the field is the whole large system's magnetisation, updated as the patch's
  spins flip and normalised by the large N (Curie-Weiss);
- ``Ghosts``: a 1D segment sees one frozen neighbouring cell per side, or the Neumann replica
  of its own edge cell at a physical end (the predator-prey SPDE). With K = 1 the patch is the
  whole field and partial evolution is full evolution, bit for bit.

Duration: ``num_events`` elementary events (spin flips, default l*l, the reference's "one
step", dt random; SPDE time steps, default 1, dt = steps * system.dt) or a fixed ``duration``
(dt = duration; for an SPDE a whole number of time steps).

Theorem 1 of the method (K times the patch's increment of a large-system observable is an
unbiased estimate of the full system's drift times dt, with K times its covariance) is an
O(dt) statement: while the patch evolves, everything outside it that it interacts with (the
frozen halo, the frozen background of the mean field) does not, so the second-order terms
differ. docs/pair_bias.md measures the ratios on the real simulators (experiments/
pair_bias.py): at dt = 1 sweep partial evolution underestimates the drift by ~16-20 % for
Curie-Weiss (K = 4, 16) and by a few % for Ising with a frozen halo; both vanish linearly in dt.

Keys: ``evolve_patch`` splits its key into ``(key_index, key_run)``; I = ``randint(key_index)``
and the patch evolves with ``key_run`` (for the SPDE step t uses ``jr.split(key_run,
num_steps)[t]``, the same keys as ``system.simulate``). ``evolve_patches`` gives snapshot i
the key ``fold_in(key, i)``.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax.numpy as jnp
import jax.random as jr
import numpy as np
from jaxtyping import Array, ArrayLike, Float, Int, PRNGKeyArray, Shaped

from jmacro._checks import check_positive_int
from jmacro.geometry import (
    AbstractBoundary,
    AbstractTiling,
    SquareTiling2D,
    boundary_kind,
)
from jmacro.sharding import map_in_batches
from jmacro.systems import AbstractSystem, SimulationBlowUpError


def _check_amount(num_events, duration) -> None:
    if num_events is not None and duration is not None:
        raise ValueError(
            f"give num_events or duration, not both (got num_events={num_events}, "
            f"duration={duration})."
        )
    if num_events is not None:
        check_positive_int(num_events, "num_events")
    if duration is not None and not (np.isfinite(duration) and duration > 0):
        raise ValueError(f"duration must be finite and > 0, got {duration!r}.")


def _tiling_dict(tiling: AbstractTiling) -> dict:
    return {"type": type(tiling).__name__, **dataclasses.asdict(tiling)}


@dataclasses.dataclass(frozen=True)
class PartialEvolution:
    """How to evolve one patch. Frozen and hashable: safe as a static argument.

    Attributes:
        tiling: the patches, e.g. ``SquareTiling2D(l)`` or ``Segments1D(K)``.
        boundary: a boundary class (``Periodic``, ``FrozenHalo``, ``MeanField``, ``Ghosts``)
            or its config name (``"periodic"``, ``"halo"``, ``"mean_field"``, ``"ghosts"``);
            None: the tiling's default (``Periodic`` in 2D, ``Ghosts`` in 1D). Stored as the
            class.
        num_events: elementary events per evolution (default: one step of the patch, l*l
            flips or one SPDE time step). Exclusive with ``duration``.
        duration: if set, evolve for this fixed time instead.

    Example::

        spins = PartialEvolution(SquareTiling2D(16), FrozenHalo)          # l*l flips
        fixed = PartialEvolution(SquareTiling2D(16), "periodic", duration=1.0)
        fields = PartialEvolution(Segments1D(5), num_events=1)             # one SPDE step
    """

    tiling: AbstractTiling
    boundary: type[AbstractBoundary] | str | None = None
    num_events: int | None = None
    duration: float | None = None

    def __post_init__(self):
        if not isinstance(self.tiling, AbstractTiling):
            raise TypeError(
                f"tiling must be a tiling (SquareTiling2D, Segments1D, ...), got {self.tiling!r}."
            )
        kind = self.tiling.boundaries[0] if self.boundary is None else self.boundary
        object.__setattr__(self, "boundary", boundary_kind(kind))
        self.tiling.check_boundary(self.boundary)
        _check_amount(self.num_events, self.duration)

    def check(self, shape) -> int:
        """Validate against a state shape (an ``int`` is a square side or a cell count);
        return K."""
        return self.tiling.check(shape)

    def to_dict(self) -> dict:
        """JSON-able description (for cache keys and metadata)."""
        return {
            "tiling": _tiling_dict(self.tiling),
            "boundary": self.boundary.name,
            "num_events": self.num_events,
            "duration": self.duration,
        }


class PatchEvolution(NamedTuple):
    """Result of ``evolve_patch`` (a pytree: vmap it)."""

    patch_after: Shaped[Array, "..."]
    dt: Float[Array, ""]
    patch_index: Int[Array, ""]


def advance_patch(
    system: AbstractSystem,
    patch: Shaped[Array, "..."],
    key: PRNGKeyArray,
    boundary: AbstractBoundary,
    *,
    num_events: int | None = None,
    duration: float | None = None,
) -> tuple[Shaped[Array, "..."], Float[Array, ""]]:
    """The one patch update of partial evolution and LocalRelax: ``system.patch_step`` for a
    fixed ``duration``, else ``system.patch_events`` for ``num_events``; ``(patch, dt)``."""
    if duration is None:
        return system.patch_events(patch, key, num_events, boundary)
    return system.patch_step(patch, key, duration, boundary)


def evolve_patch(
    system: AbstractSystem,
    snapshot: Shaped[Array, "..."],
    key: PRNGKeyArray,
    scheme: PartialEvolution,
) -> PatchEvolution:
    """Choose a patch uniformly and evolve only it; one snapshot (vmap for batches).

    Args:
        system: any system supporting ``scheme.boundary`` (e.g. ``GlauberIsing`` with
            ``Periodic``/``FrozenHalo``, ``CurieWeiss`` with ``MeanField``/``Periodic``,
            ``PredatorPrey`` with ``Ghosts``).
        snapshot: one large state, e.g. ``(L, L)`` spins or an ``(n, 2)`` field.
        key: PRNG key.
        scheme: tiling, boundary and duration.

    Returns:
        ``(patch_after, dt, patch_index)``: the evolved patch (e.g. ``(l, l)``), the elapsed
        time (float32) and the patch index I (int32, in the tiling's order).
    """
    system.check_boundary(scheme.boundary)
    system.check_states(snapshot, "snapshot")
    num_patches = scheme.check(snapshot.shape)
    key_index, key_run = jr.split(key)
    index = jr.randint(key_index, (), 0, num_patches, dtype=jnp.int32)
    patch, boundary = scheme.tiling.patch_with_boundary(snapshot, index, scheme.boundary)
    after, dt = advance_patch(
        system, patch, key_run, boundary, num_events=scheme.num_events, duration=scheme.duration
    )
    return PatchEvolution(after, dt, index)


def apply_patch(
    snapshot: Shaped[Array, "..."],
    index: Int[ArrayLike, ""] | int,
    patch: Shaped[Array, "..."],
    tiling: AbstractTiling | None = None,
) -> Shaped[Array, "..."]:
    """The large state after partial evolution: ``snapshot`` with patch ``index`` replaced.

    ``tiling``: the scheme's tiling; default the square tiling of the patch's side (spins).
    """
    tiling = SquareTiling2D(patch.shape[0]) if tiling is None else tiling
    tiling.check(snapshot.shape)
    return tiling.insert(snapshot, index, patch)


def evolve_patches(
    system: AbstractSystem,
    snapshots: Shaped[Array, "N ..."] | np.ndarray,
    key: PRNGKeyArray,
    scheme: PartialEvolution,
    *,
    batch_size: int = 4096,
    progress: bool = True,
) -> dict[str, np.ndarray]:
    """Partial evolution of every snapshot of a (host, possibly memory-mapped) array.

    Runs ``evolve_patch`` vmapped and jitted over batches of ``batch_size`` snapshots (cast to
    ``system.state_dtype``), with the batch axis sharded over all local devices, and a progress
    bar. Snapshot ``i`` uses the key ``fold_in(key, i)``, so the result does not depend on
    ``batch_size`` or the device count. Sizes, boundary and states are checked first.

    Returns:
        ``{"patch_after": (N, *patch_shape), "dt": (N,) float32, "patch_index": (N,) int32}``.

    Raises:
        ValueError: sizes that do not tile, bad or non-finite states, an unstable dt.
        TypeError: a boundary the system does not support.
        RuntimeError: event counts not reached (rates too small: use a fixed duration).
        SimulationBlowUpError: an evolved patch is non-finite.
    """
    num = len(snapshots)
    if num == 0:
        raise ValueError("no snapshots to evolve.")
    system.check_boundary(scheme.boundary)
    scheme.check(tuple(snapshots.shape[1:]))
    system.check_states(snapshots, "snapshots", batched=True)
    check_positive_int(batch_size, "batch_size")

    def one(snapshot, index):
        return tuple(evolve_patch(system, snapshot, jr.fold_in(key, index), scheme))

    patch, dt, index = map_in_batches(
        one,
        num,
        snapshots,
        batch_size=batch_size,
        dtype=system.state_dtype,
        desc="partial evolution",
        unit="pair",
        progress=progress,
    )
    out = {"patch_after": patch, "dt": dt, "patch_index": index}
    if not np.all(np.isfinite(dt)):
        bad = int(np.sum(~np.isfinite(dt)))
        raise RuntimeError(
            f"{bad} partial evolutions did not reach their event count (rates too "
            "small at this temperature): use a fixed `duration` instead."
        )
    if np.issubdtype(patch.dtype, np.floating):
        finite = np.isfinite(patch).reshape(num, -1).all(axis=1)
        if not finite.all():
            first = int(np.argmin(finite))
            raise SimulationBlowUpError(
                f"partial evolution blew up for {int((~finite).sum())} of {num} snapshots "
                f"(first: snapshot {first}, patch {int(index[first])}). The time step is too "
                "large for these states: reduce it."
            )
    return out
