"""Partial evolution and upsampling for 1D fields ``(n, 2)`` (the predator-prey SPDE).

A field has n cells (centres x_i = (i + 1/2) / n of (0, 1)) and 2 species. Tiled into K
patches of l = n / K consecutive cells, patch I covers cells I l ... I l + l - 1.

**Partial evolution** (Algorithm 2, REFERENCE.md 2.4): choose I uniformly in [0, K), and evolve
only the l cells of patch I for ``num_steps`` SPDE steps. The patch sees one ghost cell per
side: the real neighbouring cell of the snapshot, frozen at its value at the start, or, at a
physical end of the line (I = 0 on the left, I = K - 1 on the right), the Neumann ghost that
replicates the patch's own current edge cell (exactly the full system's boundary rule). With
K = 1 this is full evolution, bit for bit. In ``"physical"`` scaling the patch uses the large
field's dx = 1/n.

**Upsampling** (Algorithm 1 for fields): interpolate between the cell-centre grids of n_s and
n cells, linearly (the reference) or with the Catmull-Rom cubic convolution kernel; values
beyond the outermost centres are the end values (constant extrapolation, consistent with the
Neumann boundary). Optional ``FieldLocalRelax`` then runs a few SPDE steps in overlapping
windows with ghost cells, one window after another (the reference does not relax fields).

Key usage (documented because tests rely on it): ``evolve_field_patch`` splits its key into
``(key_index, key_run)``; the patch then evolves with ``system.advance(patch, key_run, ...)``,
whose step t uses ``jr.split(key_run, num_steps)[t]``, the same keys as ``system.simulate``.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
from jaxtyping import Array, ArrayLike, Float, Int, PRNGKeyArray

from jmacro._checks import check_positive_int
from jmacro.systems.predator_prey import (
    NUM_SPECIES,
    PredatorPrey,
    SimulationBlowUpError,
    cell_centres,
    check_fields,
    pad_fields,
)

InterpolationMethod = Literal["linear", "cubic"]


# ---------------------------------------------------------------------------------- patches
def patch_length(num_cells: int, num_patches: int) -> int:
    """l = n / K; raises ``ValueError`` if K does not divide n."""
    num_patches = check_positive_int(num_patches, "num_patches")
    num_cells = check_positive_int(num_cells, "num_cells")
    if num_cells % num_patches:
        divisors = [d for d in range(1, num_cells + 1) if num_cells % d == 0]
        raise ValueError(
            f"num_patches = {num_patches} does not divide the {num_cells} cells of the field; "
            f"choose K among the divisors {divisors}."
        )
    return num_cells // num_patches


def _segment_with_ghosts(fields, start, length):
    """Cells ``start ... start + length - 1`` (``start`` may be traced), their two ghosts
    (Neumann-padded field) and which sides are physical ends."""
    num_cells = fields.shape[0]
    cut = jax.lax.dynamic_slice(pad_fields(fields), (start, 0), (length + 2, NUM_SPECIES))
    ghosts = jnp.stack([cut[0], cut[-1]])
    neumann = jnp.stack([start == 0, start + length == num_cells])
    return cut[1:-1], ghosts, neumann


def field_patch_with_ghosts(
    fields: Float[Array, "n 2"], patch_index: int | Int[ArrayLike, ""], num_patches: int
) -> tuple[Float[Array, "l 2"], Float[Array, "2 2"]]:
    """Patch ``patch_index`` of ``fields`` and its frozen neighbours.

    Args:
        fields: ``(n, 2)``.
        patch_index: I in [0, K) (may be traced).
        num_patches: K, must divide n.

    Returns:
        ``(patch, ghosts)``: the ``(l, 2)`` cells of patch I, and ``(2, 2)`` ghosts: row 0 the
        cell just left of the patch, row 1 the cell just right of it; at a physical end the
        ghost is the patch's own edge cell (Neumann).
    """
    length = patch_length(fields.shape[0], num_patches)
    patch, ghosts, _ = _segment_with_ghosts(fields, patch_index * length, length)
    return patch, ghosts


def _evolve_segment(system: PredatorPrey, fields, start, length, key, num_steps):
    segment, ghosts, neumann = _segment_with_ghosts(fields, start, length)
    dx = 1.0 / fields.shape[0]
    return system.advance(segment, key, num_steps, ghosts, neumann=neumann, dx=dx)


def evolve_field_patch(
    system: PredatorPrey,
    fields: Float[Array, "n 2"],
    key: PRNGKeyArray,
    num_patches: int,
    num_steps: int = 1,
) -> tuple[Float[Array, "l 2"], Float[Array, ""], Int[Array, ""]]:
    """Partial evolution of ONE field: choose a patch uniformly and evolve only it.

    The patch evolves for ``num_steps`` steps of ``system`` with its frozen neighbouring cells
    as ghosts (Neumann at physical ends, see the module docstring). vmap for batches.

    Returns:
        ``(patch_after, dt, patch_index)``: the ``(l, 2)`` evolved patch, the elapsed time
        ``num_steps * system.dt`` (float32) and I (int32).
    """
    check_fields(fields)
    length = patch_length(fields.shape[0], num_patches)
    num_steps = check_positive_int(num_steps, "num_steps")
    key_index, key_run = jr.split(key)
    index = jr.randint(key_index, (), 0, num_patches, dtype=jnp.int32)
    after = _evolve_segment(system, fields, index * length, length, key_run, num_steps)
    dt = jnp.float32(num_steps) * system.dt
    return after, dt, index


def apply_field_patch(
    fields: Float[Array, "n 2"], patch_index: int | Int[ArrayLike, ""], patch: Float[Array, "l 2"]
) -> Float[Array, "n 2"]:
    """``fields`` with patch ``patch_index`` (of length l = ``len(patch)``) replaced."""
    length = patch.shape[0]
    if length == 0 or fields.shape[0] % length:
        raise ValueError(
            f"a patch of {length} cells does not tile a field of {fields.shape[0]} cells."
        )
    return jax.lax.dynamic_update_slice(
        fields, patch.astype(fields.dtype), (patch_index * length, 0)
    )


def field_partial_pairs(
    system: PredatorPrey,
    snapshots: Float[ArrayLike, "B n 2"],
    key: PRNGKeyArray,
    num_patches: int,
    num_steps: int = 1,
    *,
    batch_size: int = 4096,
    progress: bool = False,
) -> dict[str, np.ndarray]:
    """``evolve_field_patch`` over a host array of snapshots, jitted and vmapped in batches.

    Snapshot i uses ``fold_in(key, i)``, so the result does not depend on ``batch_size`` or on
    the device count (the batch axis is sharded over all local devices).

    Returns:
        ``{"patch_index": (B,) int32, "patch_after": (B, l, 2) float32, "dt": (B,) float32}``.

    Raises:
        ValueError: K does not divide n, bad shapes, non-finite snapshots, unstable dt.
        SimulationBlowUpError: an evolved patch is non-finite.
    """
    from jmacro.sharding import map_in_batches

    check_fields(snapshots, "snapshots", batched=True)
    num, num_cells = snapshots.shape[0], snapshots.shape[1]
    patch_length(num_cells, num_patches)  # raises unless K divides n
    num_steps = check_positive_int(num_steps, "num_steps")
    batch_size = check_positive_int(batch_size, "batch_size")
    system.check_stability(num_cells)

    def one(snapshot, index):
        return evolve_field_patch(system, snapshot, jr.fold_in(key, index), num_patches, num_steps)

    patch, dt, index = map_in_batches(
        one,
        num,
        snapshots,
        batch_size=batch_size,
        dtype=jnp.float32,
        desc="partial evolution",
        unit="pair",
        progress=progress,
    )
    out = {"patch_index": index, "patch_after": patch, "dt": dt}
    finite = np.isfinite(out["patch_after"]).all(axis=(1, 2))
    if not finite.all():
        first = int(np.argmin(finite))
        raise SimulationBlowUpError(
            f"partial evolution blew up for {int((~finite).sum())} of {num} snapshots (first: "
            f"snapshot {first}, patch {int(out['patch_index'][first])}, after {num_steps} "
            f"steps of dt = {float(np.max(np.asarray(system.dt))):g}). Reduce dt."
        )
    return out


# ---------------------------------------------------------------------------------- upsampling
def _catmull_rom_weights(t):
    """Cubic convolution (Keys, a = -1/2) weights of the points at offsets -1, 0, 1, 2 for a
    position t in [0, 1) between points 0 and 1. They sum to 1 and reproduce quadratics."""
    t2, t3 = t * t, t * t * t
    return (
        0.5 * (-t3 + 2.0 * t2 - t),
        0.5 * (3.0 * t3 - 5.0 * t2 + 2.0),
        0.5 * (-3.0 * t3 + 4.0 * t2 + t),
        0.5 * (t3 - t2),
    )


def upsample_field(
    fields: Float[Array, "ns 2"], num_cells: int, method: InterpolationMethod = "linear"
) -> Float[Array, "m 2"]:
    """Interpolate ONE field from its n_s cell centres to ``num_cells`` cell centres.

    Source centres (i + 1/2) / n_s, target centres (j + 1/2) / num_cells, both on (0, 1).
    ``"linear"``: piecewise-linear interpolation (the reference, ``jnp.interp``).
    ``"cubic"``: Catmull-Rom cubic convolution, exact for quadratics away from the ends, with
    Neumann (replicated) ghost points at the ends. Both extrapolate constantly beyond the
    outermost source centres. Any ratio num_cells / n_s works (also downsampling).

    Returns:
        float32 ``(num_cells, 2)``.
    """
    check_fields(fields)
    num_cells = check_positive_int(num_cells, "num_cells")
    source = fields.shape[0]
    fields = jnp.asarray(fields, jnp.float32)
    target = cell_centres(num_cells)
    if method == "linear":
        centres = cell_centres(source)
        return jax.vmap(lambda f: jnp.interp(target, centres, f), in_axes=1, out_axes=1)(fields)
    if method != "cubic":
        raise ValueError(f"method must be 'linear' or 'cubic', got {method!r}.")
    # Position in source index units, clamped: constant beyond the outermost centres.
    s = jnp.clip(target * source - 0.5, 0.0, source - 1.0)
    base = jnp.clip(jnp.floor(s), 0, max(source - 2, 0)).astype(jnp.int32)
    t = s - base
    out = jnp.zeros((num_cells, NUM_SPECIES), jnp.float32)
    for offset, weight in zip(range(-1, 3), _catmull_rom_weights(t), strict=True):
        index = jnp.clip(base + offset, 0, source - 1)
        out = out + weight[:, None] * fields[index]
    return out


@dataclasses.dataclass(frozen=True)
class FieldLocalRelax:
    """LocalRelax for 1D fields: SPDE steps in overlapping windows, one after another.

    Windows of ``window`` cells start at cells 0, s, 2 s, ..., n - w (they cover the line;
    cells in the overlaps are visited up to w / s times). Each window evolves ``num_steps``
    steps of the system with its real neighbouring cells, frozen, as ghosts (Neumann at the
    physical ends), starting from the state the previous windows left; window j uses the key
    ``jr.split(key, num_windows)[j]``. With ``window = n`` it is ``num_steps`` full steps.

    Attributes:
        num_steps: SPDE steps per window visit.
        window: window length w in cells (<= n).
        stride: s; must divide n - w.
    """

    num_steps: int = 1
    window: int = 40
    stride: int = 20

    def __post_init__(self):
        check_positive_int(self.num_steps, "num_steps")
        check_positive_int(self.window, "window")
        check_positive_int(self.stride, "stride")

    def num_windows(self, num_cells: int) -> int:
        """Number of windows on ``num_cells`` cells; raises if they do not fit."""
        if self.window > num_cells:
            raise ValueError(
                f"FieldLocalRelax window {self.window} exceeds the {num_cells} cells of the field."
            )
        if (num_cells - self.window) % self.stride:
            raise ValueError(
                f"FieldLocalRelax stride {self.stride} must divide num_cells - window = "
                f"{num_cells - self.window} so that the windows end at the last cell."
            )
        return (num_cells - self.window) // self.stride + 1


def field_local_relax(
    system: PredatorPrey,
    fields: Float[Array, "n 2"],
    key: PRNGKeyArray,
    cfg: FieldLocalRelax = FieldLocalRelax(),
) -> Float[Array, "n 2"]:
    """Relax ONE ``(n, 2)`` field window by window (see ``FieldLocalRelax``)."""
    check_fields(fields)
    num = cfg.num_windows(fields.shape[0])
    fields = jnp.asarray(fields, jnp.float32)

    def visit(x, inputs):
        index, k = inputs
        start = index * cfg.stride
        window = _evolve_segment(system, x, start, cfg.window, k, cfg.num_steps)
        return jax.lax.dynamic_update_slice(x, window, (start, 0)), None

    inputs = (jnp.arange(num, dtype=jnp.int32), jr.split(key, num))
    return jax.lax.scan(visit, fields, inputs)[0]


def upsample_fields(
    snapshots: Float[ArrayLike, "B ns 2"],
    num_cells: int,
    method: InterpolationMethod = "linear",
    *,
    relax: FieldLocalRelax | None = None,
    system: PredatorPrey | None = None,
    key: PRNGKeyArray | None = None,
    batch_size: int = 4096,
    progress: bool = False,
) -> np.ndarray:
    """``upsample_field`` (then optionally ``field_local_relax``) over a host array.

    Args:
        snapshots: ``(B, n_s, 2)`` finite small-system fields.
        num_cells: n of the large system.
        method: ``"linear"`` (reference) or ``"cubic"``.
        relax: optional LocalRelax settings (default None: no relaxation, as the reference).
            Needs ``system`` and ``key``; snapshot i relaxes with ``fold_in(key, i)``.
        batch_size, progress: batching of the jitted, vmapped, sharded call; tqdm bar.

    Returns:
        float32 NumPy ``(B, num_cells, 2)``.
    """
    from jmacro.sharding import map_in_batches

    check_fields(snapshots, "snapshots", batched=True)
    num_cells = check_positive_int(num_cells, "num_cells")
    batch_size = check_positive_int(batch_size, "batch_size")
    if method not in ("linear", "cubic"):
        raise ValueError(f"method must be 'linear' or 'cubic', got {method!r}.")
    if relax is not None:
        if system is None or key is None:
            raise ValueError("relax needs the `system` to relax with and a PRNG `key`.")
        relax.num_windows(num_cells)
        system.check_stability(num_cells)
        base_key = key

        def one(snapshot, index):
            x = upsample_field(snapshot, num_cells, method)
            return field_local_relax(system, x, jr.fold_in(base_key, index), relax)

    else:

        def one(snapshot, index):
            return upsample_field(snapshot, num_cells, method)

    num = snapshots.shape[0]
    out = map_in_batches(
        one,
        num,
        snapshots,
        batch_size=batch_size,
        dtype=jnp.float32,
        desc="upsampling",
        unit="snapshot",
        progress=progress,
    )
    finite = np.isfinite(out).all(axis=(1, 2))
    if not finite.all():
        raise SimulationBlowUpError(
            f"LocalRelax blew up for {int((~finite).sum())} of {num} snapshots (first: "
            f"snapshot {int(np.argmin(finite))}). Reduce dt or relax.num_steps."
        )
    return out
