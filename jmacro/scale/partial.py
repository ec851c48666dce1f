"""Partial evolution (Algorithm 2 of the paper): evolve ONE patch of a large snapshot.

For a large snapshot x_t of shape ``(L, L)`` tiled into K = (L/l)^2 patches of side l, choose a
patch index I uniformly in [0, K), evolve only the sites of that patch with the small-system
simulator, and return the evolved patch x_{t+dt, I}, the elapsed time dt and I. No other site is
touched: the function returns only the patch, and ``apply_patch`` writes it back.

Boundary modes (what the evolving patch sees outside itself):

- ``"periodic"``: the patch is cut out and evolves as an isolated periodic small system (the
  reference's choice for the Ising model);
- ``"halo"``: the patch sees its real neighbours in the snapshot, which stay frozen;
- ``"mean_field"``: the field is the whole large system's magnetisation, updated as the patch's
  spins flip and normalised by the large N (Curie-Weiss).

Duration: ``num_events`` flips (default l*l, the reference's "one step"; dt is random) or a
fixed ``duration`` in sweeps (dt = duration).
"""

from __future__ import annotations

import dataclasses
from typing import Literal

import jax.numpy as jnp
import jax.random as jr
import numpy as np
from jaxtyping import Array, Float, Int, Int8, PRNGKeyArray, Shaped

from jmacro import lattice
from jmacro._checks import check_positive_int

Boundary = Literal["periodic", "halo", "mean_field"]
BOUNDARIES = ("periodic", "halo", "mean_field")


@dataclasses.dataclass(frozen=True)
class PartialEvolution:
    """How to evolve one patch. Frozen and hashable: safe as a static argument.

    Attributes:
        patch_size: side l of the square patch; must divide the lattice side.
        boundary: ``"periodic"``, ``"halo"`` or ``"mean_field"`` (see module docstring).
        num_events: flips per evolution (default l*l). Ignored if ``duration`` is set.
        duration: if set, evolve for this fixed time instead (in sweeps).
    """

    patch_size: int
    boundary: Boundary = "periodic"
    num_events: int | None = None
    duration: float | None = None

    def __post_init__(self):
        check_positive_int(self.patch_size, "patch_size")
        if self.boundary not in BOUNDARIES:
            raise ValueError(f"boundary must be one of {BOUNDARIES}, got {self.boundary!r}.")
        if self.num_events is not None:
            check_positive_int(self.num_events, "num_events")
        if self.duration is not None and not (np.isfinite(self.duration) and self.duration > 0):
            raise ValueError(f"duration must be finite and > 0, got {self.duration!r}.")

    def check(self, shape: tuple[int, int]) -> int:
        """Validate against a lattice shape; return K."""
        return lattice.num_patches(shape, self.patch_size)


def evolve_patch(
    system,
    snapshot: Shaped[Array, "L L"],
    key: PRNGKeyArray,
    scheme: PartialEvolution,
) -> tuple[Int8[Array, "l l"], Float[Array, ""], Int[Array, ""]]:
    """Choose a patch uniformly and evolve only it; one snapshot (vmap for batches).

    Args:
        system: a ``GlauberIsing`` (boundary ``periodic`` or ``halo``) or ``CurieWeiss``
            (``mean_field`` or ``periodic``).
        snapshot: ``(L, L)`` spins of the large system.
        key: PRNG key.
        scheme: patch size, boundary mode and duration.

    Returns:
        ``(patch_after, dt, index)``: the ``(l, l)`` evolved patch, the elapsed time and the
        patch index in ``lattice.tile`` order.
    """
    num_patches = scheme.check(snapshot.shape)
    key_index, key_run = jr.split(key)
    index = jr.randint(key_index, (), 0, num_patches)
    halo = 1 if scheme.boundary == "halo" else 0
    cut = lattice.extract_patch(snapshot, index, scheme.patch_size, halo=halo)
    kwargs = {}
    if scheme.boundary == "halo":
        kwargs["halo"] = cut
        patch = cut[1:-1, 1:-1]
    else:
        patch = cut
    if scheme.boundary == "mean_field":
        total = snapshot.astype(jnp.int32).sum()
        kwargs["background_sum"] = total - patch.astype(jnp.int32).sum()
        kwargs["num_total"] = snapshot.size
    if scheme.duration is None:
        return (*system.advance_events(patch, key_run, scheme.num_events, **kwargs), index)
    after = system.advance_time(patch, key_run, scheme.duration, **kwargs)
    return after, jnp.float32(scheme.duration), index


def apply_patch(
    snapshot: Shaped[Array, "L L"], index: Int[Array, ""], patch: Shaped[Array, "l l"]
) -> Shaped[Array, "L L"]:
    """The large state after partial evolution: ``snapshot`` with patch ``index`` replaced."""
    return lattice.insert_patch(snapshot, index, patch)


def evolve_patches(
    system,
    snapshots: Shaped[Array, "N L L"] | np.ndarray,
    key: PRNGKeyArray,
    scheme: PartialEvolution,
    *,
    batch_size: int = 4096,
    progress: bool = True,
) -> dict[str, np.ndarray]:
    """Partial evolution of every snapshot of a (host, possibly memory-mapped) array.

    Runs ``evolve_patch`` vmapped and jitted over batches of ``batch_size`` snapshots, with the
    batch axis sharded over all local devices, and a progress bar. Snapshot ``i`` uses the key
    ``fold_in(key, i)``, so the result does not depend on ``batch_size`` or the device count.

    Returns:
        ``{"patch_after": (N, l, l) int8, "dt": (N,) float32, "patch_index": (N,) int32}``.
    """
    from jmacro.sharding import map_in_batches

    num = len(snapshots)
    if num == 0:
        raise ValueError("no snapshots to evolve.")
    scheme.check(tuple(snapshots.shape[1:]))
    check_positive_int(batch_size, "batch_size")

    def one(snapshot, index):
        return evolve_patch(system, snapshot, jr.fold_in(key, index), scheme)

    patch, dt, index = map_in_batches(
        one,
        num,
        snapshots,
        batch_size=batch_size,
        dtype=jnp.int8,
        desc="partial evolution",
        unit="pair",
        progress=progress,
    )
    out = {"patch_after": patch, "dt": dt, "patch_index": index}
    if not np.all(np.isfinite(out["dt"])):
        bad = int(np.sum(~np.isfinite(out["dt"])))
        raise RuntimeError(
            f"{bad} partial evolutions did not reach their flip count (rates too "
            "small at this temperature): use a fixed `duration` instead."
        )
    return out
