"""Hierarchical upsampling (Algorithm 1 of the paper): large snapshots from small ones.

Starting from small-system snapshots D_s of side l, repeat N_iter = log_m(L / l) times:

- **Upsample**: replicate every site into an m x m block (side l -> m l). The magnetisation is
  preserved exactly; the domain-wall density drops by a factor m (blocky configurations).
- **LocalRelax**: heal seams and blockiness with short microscopic dynamics in overlapping
  windows of side w and stride s with periodic wrap (window (i, j) covers rows i s ... i s + w
  - 1 mod L). Each window evolves for ``num_events`` flips (reference), or for a fixed time
  ``duration`` (no jump-chain bias, see ``LocalRelax``), while it sees its real neighbours
  as a frozen halo (``boundary="halo"``, default; ``"periodic"`` evolves each window as an
  isolated periodic system instead). Two schedules:

  * ``"sequential"`` (the reference): windows one after another in row-major order; each
    window starts from the state the previous ones left.
  * ``"parallel"``: windows are split into (w/s)^2 groups of non-overlapping windows (same
    offset modulo w); the windows of a group relax simultaneously (vmapped), groups one after
    another. A window's halo then holds its neighbours' state from the start of the group,
    not their concurrently relaxed state: the same local dynamics in a different order, much
    faster on parallel hardware. Needs w to divide L and s to divide w.

The reference also appends configurations of uniform-random magnetisation m ~ U(-1, 1) in the
last iteration (i.i.d. spins, then relaxed with the others) so that far-from-equilibrium
initial states are covered: ``num_random``.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Literal

import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
from jaxtyping import Array, Int8, PRNGKeyArray, Shaped

from jmacro import lattice
from jmacro._checks import check_positive_int


def upsample_spins(x: Shaped[Array, "l l"], factor: int = 2) -> Shaped[Array, "L L"]:
    """Replicate every site into a ``factor x factor`` block: (l, l) -> (factor l, factor l)."""
    check_positive_int(factor, "factor")
    return jnp.repeat(jnp.repeat(x, factor, axis=0), factor, axis=1)


@dataclasses.dataclass(frozen=True)
class LocalRelax:
    """LocalRelax settings (reference: 16x16 windows, stride 8, window-size events each).

    Attributes:
        window: window side w.
        stride: distance s between window origins; must divide the lattice side.
        num_events: flips per window visit (default w*w). Ignored if ``duration`` is set.
        duration: if set, every window visit evolves for this continuous time (sweeps) with
            ``advance_time`` instead of a fixed flip count. A state observed after a fixed
            number of flips follows the embedded jump chain, whose law is tilted by the total
            flip rate R(x) towards disordered states (stationary law pi(x) R(x) / E[R]); in a
            small window the tilt is strong. Fixed-time relaxation has no such tilt.
        boundary: ``"halo"`` (window sees frozen real neighbours), ``"periodic"`` (isolated
            window) or ``"mean_field"`` (Curie-Weiss: the field of the whole lattice).
        schedule: ``"sequential"`` (reference) or ``"parallel"`` (groups of disjoint windows).
    """

    window: int = 16
    stride: int = 8
    num_events: int | None = None
    boundary: Literal["halo", "periodic", "mean_field"] = "halo"
    schedule: Literal["sequential", "parallel"] = "sequential"
    duration: float | None = None

    def __post_init__(self):
        check_positive_int(self.window, "window")
        check_positive_int(self.stride, "stride")
        if self.num_events is not None:
            check_positive_int(self.num_events, "num_events")
        if self.duration is not None and not (np.isfinite(self.duration) and self.duration > 0):
            raise ValueError(f"duration must be finite and > 0, got {self.duration!r}.")
        if self.boundary not in ("halo", "periodic", "mean_field"):
            raise ValueError(
                f"boundary must be 'halo', 'periodic' or 'mean_field', got {self.boundary!r}."
            )
        if self.schedule not in ("sequential", "parallel"):
            raise ValueError(f"schedule must be 'sequential' or 'parallel', got {self.schedule!r}.")

    def check(self, side: int) -> None:
        """Raise unless the windows fit a lattice of side ``side``."""
        if self.window > side:
            raise ValueError(f"LocalRelax window {self.window} exceeds the lattice side {side}.")
        if side % self.stride:
            raise ValueError(
                f"LocalRelax stride {self.stride} must divide the lattice side {side}."
            )
        if self.schedule == "parallel" and (side % self.window or self.window % self.stride):
            raise ValueError(
                f"the parallel schedule needs window | side and stride | window, got window "
                f"{self.window}, stride {self.stride}, side {side}."
            )


def _evolve_window(system, window_cut, key, cfg: LocalRelax, total_sum, num_total):
    """Evolve one (w+2, w+2) cut (window plus its halo ring); return the (w, w) window.

    ``total_sum`` / ``num_total``: the lattice's spin sum and size, for ``"mean_field"``."""
    window = window_cut[1:-1, 1:-1]
    if cfg.duration is None:

        def advance(spins, **kwargs):
            return system.advance_events(spins, key, cfg.num_events, **kwargs)[0]
    else:

        def advance(spins, **kwargs):
            return system.advance_time(spins, key, cfg.duration, **kwargs)

    if cfg.boundary == "halo":
        return advance(window, halo=window_cut)
    if cfg.boundary == "mean_field":
        background = total_sum - window.astype(jnp.int32).sum()
        return advance(window, background_sum=background, num_total=num_total)
    return advance(window)


def local_relax(
    system, x: Int8[Array, "L L"], key: PRNGKeyArray, cfg: LocalRelax = LocalRelax()
) -> Int8[Array, "L L"]:
    """Relax one ``(L, L)`` snapshot window by window (see the module docstring)."""
    side = x.shape[0]
    if x.shape != (side, side):
        raise ValueError(f"local_relax needs a square lattice, got {x.shape}.")
    cfg.check(side)
    w, s = cfg.window, cfg.stride
    per_side = side // s
    if cfg.schedule == "sequential":

        def visit(x, inputs):
            index, key = inputs
            row, col = (index // per_side) * s, (index % per_side) * s
            # Roll so the window sits at (1, 1): wrap-around windows need no special case.
            rolled = jnp.roll(x, (1 - row, 1 - col), axis=(0, 1))
            total = x.astype(jnp.int32).sum()
            window = _evolve_window(system, rolled[: w + 2, : w + 2], key, cfg, total, x.size)
            rolled = rolled.at[1 : w + 1, 1 : w + 1].set(window)
            return jnp.roll(rolled, (row - 1, col - 1), axis=(0, 1)), None

        num = per_side * per_side
        x, _ = jax.lax.scan(visit, x, (jnp.arange(num), jr.split(key, num)))
        return x

    groups = w // s
    for group, group_key in enumerate(jr.split(key, groups * groups)):
        shift = ((group // groups) * s, (group % groups) * s)
        # Shift the group's windows onto the tiling grid, relax all tiles at once, shift back.
        rolled = jnp.roll(x, (-shift[0], -shift[1]), axis=(0, 1))
        cuts = lattice.tile_with_halo(rolled, w, halo=1)
        keys = jr.split(group_key, len(cuts))
        total = x.astype(jnp.int32).sum()
        windows = jax.vmap(_evolve_window, in_axes=(None, 0, 0, None, None, None))(
            system, cuts, keys, cfg, total, x.size
        )
        x = jnp.roll(lattice.untile(windows, rolled.shape), shift, axis=(0, 1))
    return x


@dataclasses.dataclass(frozen=True)
class HierarchicalUpsampling:
    """Algorithm 1 settings.

    Attributes:
        target_size: side L of the large system.
        factor: block side m of Upsample; L / l must be a power of m.
        relax: LocalRelax settings, or None to skip relaxation.
        num_random: number of uniform-random-magnetisation configurations appended in the last
            iteration (reference behaviour: as many as there are upsampled snapshots).
    """

    target_size: int
    factor: int = 2
    relax: LocalRelax | None = LocalRelax()
    num_random: int = 0

    def num_iterations(self, small_side: int) -> int:
        """N_iter = log_m(L / l); raises if L / l is not a power of m."""
        check_positive_int(self.target_size, "target_size")
        check_positive_int(self.factor, "factor")
        ratio = self.target_size / small_side
        iterations = round(math.log(ratio, self.factor)) if ratio >= 1 else -1
        if ratio < 1 or self.factor**iterations * small_side != self.target_size:
            raise ValueError(
                f"target size {self.target_size} is not the small size {small_side} times a "
                f"power of the upsampling factor {self.factor}."
            )
        return iterations


def hierarchical_upsample(
    system,
    small: Int8[Array, "N l l"],
    key: PRNGKeyArray,
    cfg: HierarchicalUpsampling,
) -> Int8[Array, "M L L"]:
    """Upsample + LocalRelax ``N_iter`` times (vmapped over snapshots), then append
    ``num_random`` relaxed random-magnetisation configurations; returns ``(N + num_random, L, L)``.

    Call under ``jax.jit`` (with ``cfg`` static) or through ``upsample_dataset`` for batching,
    progress and sharding.
    """
    iterations = cfg.num_iterations(small.shape[-1])
    x = small.astype(jnp.int8)
    for it in range(iterations):
        key, key_relax, key_random = jr.split(key, 3)
        x = jax.vmap(lambda s: upsample_spins(s, cfg.factor))(x)
        if it == iterations - 1 and cfg.num_random:
            x = jnp.concatenate(
                [x, random_magnetisation(key_random, cfg.num_random, cfg.target_size)]
            )
        if cfg.relax is not None:
            keys = jr.split(key_relax, len(x))
            x = jax.vmap(lambda s, k: local_relax(system, s, k, cfg.relax))(x, keys)
    return x


def random_magnetisation(key: PRNGKeyArray, num: int, side: int) -> Int8[Array, "num L L"]:
    """``num`` configurations of i.i.d. spins whose magnetisation is m ~ U(-1, 1)."""
    key_m, key_s = jr.split(key)
    m = jr.uniform(key_m, (num, 1, 1), minval=-1.0, maxval=1.0)
    return jnp.where(jr.uniform(key_s, (num, side, side)) < (1 + m) / 2, 1, -1).astype(jnp.int8)


def upsample_dataset(
    system,
    small: np.ndarray,
    key: PRNGKeyArray,
    cfg: HierarchicalUpsampling,
    *,
    batch_size: int = 1024,
    progress: bool = True,
) -> np.ndarray:
    """``hierarchical_upsample`` over a host array of small snapshots in batches, sharded over
    local devices, with a progress bar. Random configurations (``cfg.num_random``) are
    generated in proportion within each batch. Snapshot ``i`` uses ``fold_in(key, i)``."""
    from tqdm.auto import tqdm

    from jmacro.sharding import sharded_vmap

    num = len(small)
    if num == 0:
        raise ValueError("no small snapshots to upsample.")
    check_positive_int(batch_size, "batch_size")
    no_random = dataclasses.replace(cfg, num_random=0)
    cfg.num_iterations(small.shape[-1])

    def one(snapshot, index):
        return hierarchical_upsample(system, snapshot[None], jr.fold_in(key, index), no_random)[0]

    run = sharded_vmap(one)
    out = np.empty((num + cfg.num_random, cfg.target_size, cfg.target_size), np.int8)
    with tqdm(
        total=num + cfg.num_random, desc="upsampling", unit="snapshot", disable=not progress
    ) as bar:
        for start in range(0, num, batch_size):
            stop = min(start + batch_size, num)
            out[start:stop] = np.asarray(
                run(jnp.asarray(small[start:stop]), jnp.arange(start, stop))
            )
            bar.update(stop - start)
        if cfg.num_random:
            random_key = jr.fold_in(key, -1 % 2**31)
            fresh = np.asarray(random_magnetisation(random_key, cfg.num_random, cfg.target_size))
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
    return out
