"""Dataset builder for the spin systems: small trajectories -> large snapshots -> pairs.

Three cached stages in a run directory (``jmacro.cache.StageCache``), each a dataset
directory (``.npy`` + ``meta.json``, written atomically, loaded memory-mapped):

- ``small``: ``snapshots (T, S+1, l, l) int8`` and ``times (T, S+1) float32`` of T small-system
  trajectories of S steps (a step is l*l flips, or a fixed time ``small_step_time``) from
  uniform-random initial magnetisation;
- ``large``: ``snapshots (M, L, L) int8``, hierarchical upsampling of snapshots drawn from the
  small pool (+ random-magnetisation configurations);
- ``pairs``: ``patch_after (M, l, l) int8``, ``dt (M,)``, ``patch_index (M,)``: one partial
  evolution of every large snapshot.

Each stage is keyed by the part of the config it depends on, so changing e.g. the boundary
mode recomputes only ``pairs``. The same config and seed give bit-identical arrays.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Literal

import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np

from jmacro._checks import check_positive_int
from jmacro.geometry import SquareTiling2D
from jmacro.io.cache import StageCache, StageResult
from jmacro.scale.partial import PartialEvolution, evolve_patches
from jmacro.scale.upsample import HierarchicalUpsampling, LocalRelax, upsample_dataset


@dataclasses.dataclass(frozen=True)
class SpinDatasetConfig:
    """Everything the three spin datasets depend on.

    Attributes:
        system: ``"ising"`` or ``"curie-weiss"``.
        temperature, field: physical parameters.
        small_size: patch / small-system side l.
        large_size: large-system side L.
        num_trajectories, num_steps: small-system data (reference: 1000 x 200).
        num_large: upsampled snapshots drawn (with replacement) from the small pool.
        num_random: random-magnetisation configurations appended (reference: = num_large).
        relax: LocalRelax settings (None: no relaxation).
        boundary: partial-evolution boundary mode.
        pair_duration: partial evolution for this fixed time (sweeps) instead of l*l flips.
        small_step_time: small-system steps of this fixed time (sweeps) instead of l*l flips.
            Snapshots taken after a fixed number of flips follow the jump chain, whose law is
            tilted by the total flip rate towards disordered states; fixed-time snapshots are
            samples of the continuous-time process.
        seed: master seed; every stage derives its key from it.
    """

    system: Literal["ising", "curie-weiss"] = "ising"
    temperature: float = 2.5
    field: float = 0.1
    small_size: int = 16
    large_size: int = 64
    num_trajectories: int = 1000
    num_steps: int = 200
    num_large: int = 100_000
    num_random: int = 100_000
    relax: LocalRelax | None = LocalRelax()  # noqa: RUF009 (frozen, immutable)
    boundary: Literal["periodic", "halo", "mean_field"] = "periodic"
    pair_duration: float | None = None
    small_step_time: float | None = None
    seed: int = 0

    def __post_init__(self):
        for name in ("small_size", "large_size", "num_trajectories", "num_steps", "num_large"):
            check_positive_int(getattr(self, name), name)
        if self.num_random < 0:
            raise ValueError(f"num_random must be >= 0, got {self.num_random}.")
        if self.small_step_time is not None and not (
            np.isfinite(self.small_step_time) and self.small_step_time > 0
        ):
            raise ValueError(f"small_step_time must be finite and > 0, got {self.small_step_time}.")
        if self.system not in ("ising", "curie-weiss"):
            raise ValueError(f"system must be 'ising' or 'curie-weiss', got {self.system!r}.")
        # Fail before any compute on sizes that cannot work.
        self.upsampling.num_iterations(self.small_size)
        self.partial.check((self.large_size, self.large_size))
        if self.relax is not None:
            self.relax.check(self.large_size)

    @property
    def upsampling(self) -> HierarchicalUpsampling:
        return HierarchicalUpsampling(self.large_size, 2, self.relax, self.num_random)

    @property
    def partial(self) -> PartialEvolution:
        return PartialEvolution(
            SquareTiling2D(self.small_size), self.boundary, duration=self.pair_duration
        )

    def make_system(self):
        """The microscopic simulator this config describes."""
        from jmacro.systems import CurieWeiss, GlauberIsing

        cls = GlauberIsing if self.system == "ising" else CurieWeiss
        return cls(self.temperature, self.field)


def small_trajectories(
    system,
    key,
    num_trajectories: int,
    num_steps: int,
    size: int,
    *,
    step_time: float | None = None,
    batch_size: int = 256,
    progress: bool = True,
) -> dict[str, np.ndarray]:
    """Trajectories of the small system from m0 ~ U(-1, 1); a step is size^2 flip events, or
    the fixed time ``step_time`` (sweeps) if given.

    Trajectory ``i`` uses ``fold_in(key, i)``. Returns ``snapshots (T, S+1, l, l) int8`` and
    ``times (T, S+1) float32`` (cumulative continuous time, starting at 0).
    """
    from jmacro.sharding import map_in_batches

    def one(index):
        key_m, key_init, key_run = jr.split(jr.fold_in(key, index), 3)
        m0 = jr.uniform(key_m, minval=-1.0, maxval=1.0)
        spins = system.init_state(key_init, (size, size), m0)

        def step(spins, k):
            if step_time is None:
                spins, dt = system.advance_events(spins, k)
            else:
                spins, dt = system.advance_time(spins, k, step_time), jnp.float32(step_time)
            return spins, (spins, dt)

        _, (path, dts) = jax.lax.scan(step, spins, jr.split(key_run, num_steps))
        snapshots = jnp.concatenate([spins[None], path])
        return snapshots, jnp.concatenate([jnp.zeros(1), jnp.cumsum(dts)])

    snapshots, times = map_in_batches(
        one,
        num_trajectories,
        batch_size=batch_size,
        desc="small trajectories",
        unit="traj",
        progress=progress,
    )
    return {"snapshots": snapshots, "times": times}


def build_spin_datasets(
    cfg: SpinDatasetConfig,
    run_dir: str | Path,
    *,
    force: bool = False,
    progress: bool = True,
) -> dict[str, StageResult]:
    """Build (or load from the cache) the ``small``, ``large`` and ``pairs`` stages."""
    cache = StageCache(run_dir)
    system = cfg.make_system()
    root = jr.key(cfg.seed)
    physics = {"system": cfg.system, "temperature": cfg.temperature, "field": cfg.field}

    small_key = {
        **physics,
        "size": cfg.small_size,
        "num_trajectories": cfg.num_trajectories,
        "num_steps": cfg.num_steps,
        "step_time": cfg.small_step_time,
        "seed": cfg.seed,
    }

    def build_small(writer):
        data = small_trajectories(
            system,
            jr.fold_in(root, 0),
            cfg.num_trajectories,
            cfg.num_steps,
            cfg.small_size,
            step_time=cfg.small_step_time,
            progress=progress,
        )
        for name, array in data.items():
            writer.add(name, array)

    small = cache.get_or_build("small", small_key, build_small, force=force)

    large_key = {
        "small": small.fingerprint,
        "num_large": cfg.num_large,
        "upsampling": cfg.upsampling.to_dict(),
        "seed": cfg.seed,
    }

    def build_large(writer):
        pool = small.dataset["snapshots"]
        rng = np.random.default_rng([cfg.seed, 1])
        rows = rng.integers(0, pool.shape[0], cfg.num_large)
        cols = rng.integers(0, pool.shape[1], cfg.num_large)
        order = np.lexsort((cols, rows))  # read the memory map in order
        picked = np.empty((cfg.num_large, cfg.small_size, cfg.small_size), np.int8)
        picked[order] = pool[rows[order], cols[order]]
        large = upsample_dataset(
            system, picked, jr.fold_in(root, 1), cfg.upsampling, progress=progress
        )
        writer.add("snapshots", large)

    large = cache.get_or_build("large", large_key, build_large, force=force)

    pairs_key = {
        "large": large.fingerprint,
        "partial": cfg.partial.to_dict(),
        "seed": cfg.seed,
    }

    def build_pairs(writer):
        data = evolve_patches(
            system, large.dataset["snapshots"], jr.fold_in(root, 2), cfg.partial, progress=progress
        )
        for name, array in data.items():
            writer.add(name, array)

    pairs = cache.get_or_build("pairs", pairs_key, build_pairs, force=force)
    return {"small": small, "large": large, "pairs": pairs}
