"""Hierarchical upsampling (Algorithm 1 of the paper): large snapshots from small ones.

Starting from small-system snapshots D_s of size l, repeat N_iter = log_m(L / l) times:

- **Upsample** (``HierarchicalUpsampling.upsample``):

  * ``BlockReplication`` (spins): replicate every site into an m x m block (side l -> m l).
    The magnetisation is preserved exactly; the domain-wall density drops by a factor m
    (blocky configurations). ``upsample_spins``.
  * ``Interpolation`` (fields): interpolate between the cell-centre grids of n_s and n cells,
    linearly (the reference) or with the Catmull-Rom cubic convolution kernel; values beyond
    the outermost centres are the end values (constant extrapolation, consistent with the
    Neumann boundary). ``upsample_field``.

- **LocalRelax**: heal seams and blockiness with short microscopic dynamics in overlapping
  windows of a tiling (``jmacro.geometry``): for spins ``SquareTiling2D(w, stride=s)``, windows
  of side w every s sites with periodic wrap (window (i, j) covers rows i s ... i s + w - 1
  mod L); for fields ``Segments1D(length=w, stride=s)``, windows of w cells every s cells. Each
  window evolves for ``num_events`` elementary events (reference: w*w flips), or for a fixed
  time ``duration`` (no jump-chain bias, see ``LocalRelax``), while it sees a boundary: its
  real neighbours as a frozen halo (``FrozenHalo``, the default for spins; ``Ghosts`` for
  fields), nothing (``Periodic``: an isolated periodic window) or the whole lattice's
  magnetisation (``MeanField``). Two schedules:

  * ``"sequential"`` (the reference): windows one after another in the tiling's order; each
    window starts from the state the previous ones left.
  * ``"parallel"``: windows are split into groups of non-overlapping windows ((w/s)^2 groups in
    2D: same offset modulo w); the windows of a group relax simultaneously (vmapped), groups
    one after another. A window's boundary then holds its neighbours' state from the start of
    the group, not their concurrently relaxed state: the same local dynamics in a different
    order, much faster on parallel hardware. Needs w to divide L and s to divide w.

``factor=None`` upsamples in ONE step straight to the target size (any ratio, e.g. the
reference's linear interpolation 100 -> 200 cells), then relaxes once.

The reference also appends configurations of uniform-random magnetisation m ~ U(-1, 1) in the
last iteration (i.i.d. spins, then relaxed with the others) so that far-from-equilibrium
initial states are covered: ``num_random`` (spins only).

Keys: window j of a sequential LocalRelax uses ``jr.split(key, num_windows)[j]``; group g of a
parallel one ``jr.split(key, num_groups)[g]``, split again over its windows. In
``upsample_dataset`` snapshot i uses ``fold_in(key, i)``: hierarchically, iteration k splits
it into (next key, relax key, random key) and the snapshot relaxes with the first key of
``jr.split(relax key, 1)`` (the batched ``hierarchical_upsample`` on a batch of one); in one
direct step (``factor=None``) it relaxes with ``fold_in(key, i)`` itself.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, ClassVar, Literal

import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
from jaxtyping import Array, Float, Int8, PRNGKeyArray, Shaped

from jmacro._checks import check_positive_int, check_spins
from jmacro.geometry import (
    AbstractBoundary,
    AbstractTiling,
    SquareTiling2D,
    boundary_kind,
    cell_centres,
    check_finite,
)
from jmacro.scale.partial import _check_amount, _tiling_dict, advance_patch
from jmacro.sharding import sharded_vmap
from jmacro.systems import AbstractSystem, SimulationBlowUpError

InterpolationMethod = Literal["linear", "cubic"]


# ---------------------------------------------------------------------------------- upsample
def upsample_spins(x: Shaped[Array, "l l"], factor: int = 2) -> Shaped[Array, "L L"]:
    """Replicate every site into a ``factor x factor`` block: (l, l) -> (factor l, factor l)."""
    check_positive_int(factor, "factor")
    return jnp.repeat(jnp.repeat(x, factor, axis=0), factor, axis=1)


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


def _check_field(fields, name: str = "fields") -> None:
    shape = tuple(np.shape(fields))
    if len(shape) != 2 or 0 in shape:
        raise ValueError(
            f"{name} must have shape (n, species) with n >= 1, got {shape} "
            "(use jax.vmap for batches)."
        )
    check_finite(fields, name)


def upsample_field(
    fields: Float[Array, "ns s"], num_cells: int, method: InterpolationMethod = "linear"
) -> Float[Array, "m s"]:
    """Interpolate ONE field from its n_s cell centres to ``num_cells`` cell centres.

    Source centres (i + 1/2) / n_s, target centres (j + 1/2) / num_cells, both on (0, 1).
    ``"linear"``: piecewise-linear interpolation (the reference, ``jnp.interp``).
    ``"cubic"``: Catmull-Rom cubic convolution, exact for quadratics away from the ends, with
    Neumann (replicated) ghost points at the ends. Both extrapolate constantly beyond the
    outermost source centres. Any ratio num_cells / n_s works (also downsampling).

    Returns:
        float32 ``(num_cells, species)``.
    """
    _check_field(fields)
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
    t = s - base.astype(jnp.float32)
    out = jnp.zeros((num_cells, fields.shape[1]), jnp.float32)
    for offset, weight in zip(range(-1, 3), _catmull_rom_weights(t), strict=True):
        index = jnp.clip(base + offset, 0, source - 1)
        out = out + weight[:, None] * fields[index]
    return out


def random_magnetisation(key: PRNGKeyArray, num: int, side: int) -> Int8[Array, "num L L"]:
    """``num`` configurations of i.i.d. spins whose magnetisation is m ~ U(-1, 1)."""
    key_m, key_s = jr.split(key)
    m = jr.uniform(key_m, (num, 1, 1), minval=-1.0, maxval=1.0)
    return jnp.where(jr.uniform(key_s, (num, side, side)) < (1 + m) / 2, 1, -1).astype(jnp.int8)


@dataclasses.dataclass(frozen=True)
class BlockReplication:
    """Upsample spins: every site becomes a block (``upsample_spins``); int8 states."""

    dtype: ClassVar[Any] = jnp.int8

    def __call__(self, x: Shaped[Array, "l l"], size: int) -> Shaped[Array, "L L"]:
        """``x`` replicated up to side ``size`` (a multiple of its side)."""
        factor, rest = divmod(size, x.shape[0])
        if rest or factor < 1:
            raise ValueError(
                f"block replication needs an integer ratio, got {x.shape[0]} -> {size}."
            )
        return upsample_spins(x, factor)

    def output_shape(self, shape: tuple[int, ...], size: int) -> tuple[int, ...]:
        return (size, size, *shape[2:])

    def check_inputs(self, small, name: str = "snapshots") -> None:
        """Values -1/+1 only (``check_spins``, scanned in slices), before any compute."""
        check_spins(small, name)

    def random_states(self, key: PRNGKeyArray, num: int, size: int) -> Int8[Array, "num L L"]:
        """Random-magnetisation spins (``random_magnetisation``)."""
        return random_magnetisation(key, num, size)


@dataclasses.dataclass(frozen=True)
class Interpolation:
    """Upsample fields ``(n, species)`` by interpolation between cell-centre grids
    (``upsample_field``, ``"linear"`` or ``"cubic"``); float32 states."""

    method: InterpolationMethod = "linear"
    dtype: ClassVar[Any] = jnp.float32

    def __post_init__(self):
        if self.method not in ("linear", "cubic"):
            raise ValueError(f"method must be 'linear' or 'cubic', got {self.method!r}.")

    def __call__(self, x: Float[Array, "ns s"], size: int) -> Float[Array, "n s"]:
        return upsample_field(x, size, self.method)

    def output_shape(self, shape: tuple[int, ...], size: int) -> tuple[int, ...]:
        return (size, *shape[1:])

    def check_inputs(self, small, name: str = "snapshots") -> None:
        """Finite values only."""
        check_finite(small, name)

    def random_states(self, key: PRNGKeyArray, num: int, size: int):
        raise ValueError(
            "random configurations (num_random > 0) are defined for spins only (BlockReplication)."
        )


# ---------------------------------------------------------------------------------- relax
@dataclasses.dataclass(frozen=True)
class LocalRelax:
    """LocalRelax settings (reference: 16x16 windows, stride 8, window-size flips each).

    Attributes:
        windows: the windows, a tiling with overlaps: ``SquareTiling2D(w, stride=s)`` (spins;
            s must divide the lattice side) or ``Segments1D(length=w, stride=s)`` (fields).
        boundary: what a window sees: a boundary class or its config name; None: the tiling's
            frozen-neighbour boundary (``FrozenHalo`` in 2D, ``Ghosts`` in 1D). ``Periodic``
            evolves each window as an isolated periodic system, ``MeanField`` (Curie-Weiss)
            with the field of the whole lattice.
        schedule: ``"sequential"`` (reference) or ``"parallel"`` (groups of disjoint windows).
        num_events: elementary events per window visit (default: one step of the window, w*w
            flips or one SPDE time step). Exclusive with ``duration``.
        duration: if set, every window visit evolves for this continuous time (sweeps) instead
            of a fixed event count. A state observed after a fixed number of flips follows the
            embedded jump chain, whose law is tilted by the total flip rate R(x) towards
            disordered states (stationary law pi(x) R(x) / E[R]); in a small window the tilt
            is strong. Fixed-time relaxation has no such tilt.

    Example::

        spins = LocalRelax(SquareTiling2D(16, stride=8), FrozenHalo, duration=0.5)
        fields = LocalRelax(Segments1D(length=40, stride=20), num_events=3)
    """

    windows: AbstractTiling = SquareTiling2D(16, stride=8)  # noqa: RUF009 (frozen)
    boundary: type[AbstractBoundary] | str | None = None
    schedule: Literal["sequential", "parallel"] = "sequential"
    num_events: int | None = None
    duration: float | None = None

    def __post_init__(self):
        if not isinstance(self.windows, AbstractTiling):
            raise TypeError(
                f"windows must be a tiling (SquareTiling2D, ...), got {self.windows!r}."
            )
        kind = self.windows.frozen_boundary if self.boundary is None else self.boundary
        object.__setattr__(self, "boundary", boundary_kind(kind))
        self.windows.check_boundary(self.boundary)
        _check_amount(self.num_events, self.duration)
        if self.schedule not in ("sequential", "parallel"):
            raise ValueError(f"schedule must be 'sequential' or 'parallel', got {self.schedule!r}.")

    def check(self, shape) -> int:
        """Raise unless the windows fit a state of ``shape`` (``int``: a square side or a
        number of cells); return the number of windows."""
        num = self.windows.check(shape)
        if self.schedule == "parallel":
            self.windows.groups(shape)
        return num

    def to_dict(self) -> dict:
        """JSON-able description (for cache keys and metadata)."""
        return {
            "windows": _tiling_dict(self.windows),
            "boundary": self.boundary.name,
            "schedule": self.schedule,
            "num_events": self.num_events,
            "duration": self.duration,
        }


def local_relax(
    system: AbstractSystem,
    x: Shaped[Array, "..."],
    key: PRNGKeyArray,
    cfg: LocalRelax = LocalRelax(),
) -> Shaped[Array, "..."]:
    """Relax ONE state window by window (see the module docstring); same shape and dtype."""
    system.check_boundary(cfg.boundary)
    system.check_states(x, "state")
    num = cfg.check(x.shape)
    windows = cfg.windows

    def relax(state, index, key):
        patch, boundary = windows.patch_with_boundary(state, index, cfg.boundary)
        return advance_patch(
            system, patch, key, boundary, num_events=cfg.num_events, duration=cfg.duration
        )[0]

    if cfg.schedule == "sequential":

        def visit(x, inputs):
            index, key = inputs
            return windows.insert(x, index, relax(x, index, key)), None

        inputs = (jnp.arange(num, dtype=jnp.int32), jr.split(key, num))
        return jax.lax.scan(visit, x, inputs)[0]

    groups = windows.groups(x.shape)
    for group, group_key in zip(groups, jr.split(key, len(groups)), strict=True):
        # Every window of the group reads the state at the start of the group.
        indices = jnp.asarray(group)
        keys = jr.split(group_key, len(group))
        relaxed = jax.vmap(relax, in_axes=(None, 0, 0))(x, indices, keys)
        x = windows.insert_many(x, indices, relaxed)
    return x


# ---------------------------------------------------------------------------------- driver
@dataclasses.dataclass(frozen=True)
class HierarchicalUpsampling:
    """Algorithm 1 settings.

    Attributes:
        target_size: size of the large system: the side L (2D) or the number of cells n (1D).
        factor: growth per iteration m; L / l must be a power of m. None: one step straight
            to ``target_size`` (any ratio).
        relax: LocalRelax settings, or None to skip relaxation.
        num_random: number of uniform-random-magnetisation configurations appended in the last
            iteration (reference behaviour: as many as there are upsampled snapshots; spins).
        upsample: ``BlockReplication()`` (spins) or ``Interpolation(method)`` (fields).

    Example::

        spins = HierarchicalUpsampling(64, 2, LocalRelax(SquareTiling2D(16, stride=8)), 1000)
        fields = HierarchicalUpsampling(200, None, None, upsample=Interpolation("linear"))
    """

    target_size: int
    factor: int | None = 2
    relax: LocalRelax | None = LocalRelax()
    num_random: int = 0
    upsample: BlockReplication | Interpolation = BlockReplication()

    def __post_init__(self):
        check_positive_int(self.target_size, "target_size")
        if self.factor is not None:
            check_positive_int(self.factor, "factor")
        if self.num_random < 0:
            raise ValueError(f"num_random must be >= 0, got {self.num_random}.")
        if self.num_random and not isinstance(self.upsample, BlockReplication):
            raise ValueError(
                "random configurations (num_random > 0) are defined for spins only "
                "(upsample=BlockReplication())."
            )

    def num_iterations(self, small_size: int) -> int:
        """N_iter = log_m(L / l) (1 for ``factor=None``); raises if L / l is not a power of m."""
        if self.factor is None:
            return 1
        ratio = self.target_size / small_size
        iterations = round(math.log(ratio, self.factor)) if ratio >= 1 else -1
        if ratio < 1 or self.factor**iterations * small_size != self.target_size:
            raise ValueError(
                f"target size {self.target_size} is not the small size {small_size} times a "
                f"power of the upsampling factor {self.factor}."
            )
        return iterations

    def sizes(self, small_size: int) -> list[int]:
        """The size after each Upsample step."""
        if self.factor is None:
            return [self.target_size]
        return [small_size * self.factor**k for k in range(1, self.num_iterations(small_size) + 1)]

    def check(self, small_shape: tuple[int, ...]) -> tuple[int, ...]:
        """Validate against ONE small state's shape, the relaxation at EVERY intermediate
        size included; return the large state's shape."""
        for size in self.sizes(small_shape[0]):
            shape = self.upsample.output_shape(tuple(small_shape), size)
            if self.relax is not None:
                try:
                    self.relax.check(shape)
                except ValueError as error:
                    raise ValueError(
                        f"LocalRelax at the intermediate size {size}: {error}"
                    ) from None
        return self.upsample.output_shape(tuple(small_shape), self.target_size)

    def to_dict(self) -> dict:
        """JSON-able description (for cache keys and metadata)."""
        return {
            "target_size": self.target_size,
            "factor": self.factor,
            "relax": None if self.relax is None else self.relax.to_dict(),
            "num_random": self.num_random,
            "upsample": {"type": type(self.upsample).__name__, **dataclasses.asdict(self.upsample)},
        }


def hierarchical_upsample(
    system: AbstractSystem | None,
    small: Shaped[Array, "N ..."],
    key: PRNGKeyArray | None,
    cfg: HierarchicalUpsampling,
) -> Shaped[Array, "M ..."]:
    """Upsample + LocalRelax ``N_iter`` times (vmapped over snapshots), then append
    ``num_random`` relaxed random-magnetisation configurations; returns ``(N + num_random, ...)``.

    Each iteration splits ``key`` into (next key, relax key, random key); the snapshots relax
    with ``jr.split(relax key, num)``. ``system`` and ``key`` may be None without relaxation
    and random configurations. Call under ``jax.jit`` (with ``cfg`` static) or through
    ``upsample_dataset`` for batching, progress and sharding.
    """
    sizes = cfg.sizes(small.shape[1])
    x = small.astype(cfg.upsample.dtype)
    for it, size in enumerate(sizes):
        if key is not None:
            key, key_relax, key_random = jr.split(key, 3)
        x = jax.vmap(lambda s, size=size: cfg.upsample(s, size))(x)
        if it == len(sizes) - 1 and cfg.num_random:
            x = jnp.concatenate([x, cfg.upsample.random_states(key_random, cfg.num_random, size)])
        if cfg.relax is not None:
            keys = jr.split(key_relax, len(x))
            x = jax.vmap(lambda s, k: local_relax(system, s, k, cfg.relax))(x, keys)
    return x


def upsample_dataset(
    system: AbstractSystem | None,
    small: np.ndarray,
    key: PRNGKeyArray | None,
    cfg: HierarchicalUpsampling,
    *,
    batch_size: int = 1024,
    progress: bool = True,
) -> np.ndarray:
    """Upsampling of a host array of small snapshots in batches, sharded over local devices,
    with a progress bar: spins and fields alike.

    Snapshot ``i`` uses ``fold_in(key, i)`` (see the module docstring); random configurations
    (``cfg.num_random``) are drawn at once from ``fold_in(key, 2^31 - 1)`` and relaxed with
    ``fold_in`` of that key and their index. ``system`` and ``key`` may be None when nothing
    is relaxed or drawn.

    Returns:
        ``(N + num_random, *large_shape)`` in the upsampler's dtype (int8 spins, float32
        fields).

    Raises:
        ValueError: sizes that do not fit, spins other than -1/+1 or non-finite fields, a
            missing system or key.
        SimulationBlowUpError: a relaxed field became non-finite.
    """
    from tqdm.auto import tqdm

    num = len(small)
    if num == 0:
        raise ValueError("no small snapshots to upsample.")
    check_positive_int(batch_size, "batch_size")
    cfg.upsample.check_inputs(small, "snapshots")  # spins -1/+1, finite fields
    large_shape = cfg.check(tuple(small.shape[1:]))
    if cfg.relax is not None or cfg.num_random:
        if system is None or key is None:
            raise ValueError("LocalRelax needs the `system` to relax with and a PRNG `key`.")
    if cfg.relax is not None:
        system.check_boundary(cfg.relax.boundary)
        system.check_shape(large_shape)

    if cfg.factor is None:

        def one(snapshot, index):
            x = cfg.upsample(snapshot, cfg.target_size)
            if cfg.relax is not None:
                x = local_relax(system, x, jr.fold_in(key, index), cfg.relax)
            return x

    else:
        no_random = dataclasses.replace(cfg, num_random=0)

        def one(snapshot, index):
            k = None if key is None else jr.fold_in(key, index)
            return hierarchical_upsample(system, snapshot[None], k, no_random)[0]

    dtype = cfg.upsample.dtype
    run = sharded_vmap(one)
    out = np.empty((num + cfg.num_random, *large_shape), dtype)
    with tqdm(
        total=num + cfg.num_random, desc="upsampling", unit="snapshot", disable=not progress
    ) as bar:
        for start in range(0, num, batch_size):
            stop = min(start + batch_size, num)
            batch = jnp.asarray(np.asarray(small[start:stop]), dtype)
            out[start:stop] = np.asarray(run(batch, jnp.arange(start, stop)))
            bar.update(stop - start)
        if cfg.num_random:
            random_key = jr.fold_in(key, -1 % 2**31)
            fresh = np.asarray(
                cfg.upsample.random_states(random_key, cfg.num_random, cfg.target_size)
            )
            relax_one = sharded_vmap(
                lambda s, i: local_relax(system, s, jr.fold_in(random_key, i), cfg.relax)
            )
            for start in range(0, cfg.num_random, batch_size):
                stop = min(start + batch_size, cfg.num_random)
                batch = jnp.asarray(fresh[start:stop])
                if cfg.relax is not None:
                    batch = relax_one(batch, jnp.arange(start, stop))
                out[num + start : num + stop] = np.asarray(batch)
                bar.update(stop - start)
    if np.issubdtype(out.dtype, np.floating):
        finite = np.isfinite(out).reshape(len(out), -1).all(axis=1)
        if not finite.all():
            raise SimulationBlowUpError(
                f"LocalRelax blew up for {int((~finite).sum())} of {len(out)} snapshots (first: "
                f"snapshot {int(np.argmin(finite))}). Reduce dt or the relaxation's events."
            )
    return out
