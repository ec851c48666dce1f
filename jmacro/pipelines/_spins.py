"""What the spin experiments (Ising, Curie-Weiss) share: lattices of int8 spins, patch sizes as
scales, exact continuous-time Glauber dynamics stepped by a fixed time.

Choices (documented, configurable):
- Ground truth, validation, small-system trajectories and partial evolution advance a fixed
  time ``step_time`` (sweeps) with the exact continuous-time algorithms; the reference's "one
  step = n flips" has a random dt, and with per-sample dt a fixed flip count biases the fitted
  diffusion by n/(n-1). ``pair_events=True`` restores the reference's semantics end to end:
  n-flip steps for the small data, the pairs and the validation runs.
- Partial evolution lasts ``pairs.duration`` when set (Theorem 1 is O(dt)).
- LocalRelax visits windows for a fixed time (``upsampling.relax_time``), see ``Upsampling``;
  ``upsampling.num_unrelaxed`` i.i.d. configurations join the large snapshots unrelaxed, so
  the training data cover the i.i.d. initial states of the test ensembles.
- Two test protocols (``jmacro.pipelines.scoring``): jmacro's, the relative squared error of
  the ensemble-mean trajectory of the physical observables (magnetisation, domain-wall
  density; not the closure variables, whose scale is arbitrary) on the fixed time grid; and the
  reference's (REFERENCE.md 3.1), on ``truth.reference_steps`` event steps of n flips, every
  latent min-max scaled except the magnetisation.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import jax
import jax.random as jr
import numpy as np

from jmacro.geometry import SquareTiling2D
from jmacro.metrics import relative_squared_error
from jmacro.models import model_hyperparams
from jmacro.pipelines.base import AbstractExperiment, Scale, param
from jmacro.scale import (
    HierarchicalUpsampling,
    LocalRelax,
    PartialEvolution,
    evolve_patches,
    upsample_dataset,
)
from jmacro.simulate import event_trajectories, random_trajectories, trajectories

# REFERENCE.md section 3, at L = 64: the reference implementation's test error per n_s.
REFERENCE_TEST_ERROR = {
    "curie-weiss": {
        "ours": {4096: 4.05e-4, 1024: 7.85e-4, 256: 1.06e-3, 64: 4.38e-3},
        "baseline": {4096: 4.08e-4, 1024: 1.01e-3, 256: 2.53e-3, 64: 1.26e-2},
    },
    "ising": {
        "ours": {4096: 1.95e-3, 1024: 4.50e-4, 256: 7.98e-4, 64: 2.84e-2},
        "baseline": {4096: 2.09e-3, 1024: 1.29e-3, 256: 3.20e-2, 64: 1.31e-1},
    },
}


@dataclasses.dataclass(frozen=True, kw_only=True)
class AbstractSpinExperiment(AbstractExperiment):
    """Spins on an L x L lattice, learned from patches of side l (n_s = l^2, K = (L/l)^2)."""

    metric: ClassVar[str] = "test_error"
    time_unit: ClassVar[str] = "time (sweeps)"
    scale_axis: ClassVar[str] = "patch size n_s (sites)"
    system_class: ClassVar[type]
    relax_boundary: ClassVar[str]
    known_observables: ClassVar[str]
    physical_dims: ClassVar[int]
    """The leading latents that are physical observables (jmacro's test protocol)."""
    score_space: ClassVar[str] = "physical"

    temperature: float = param(2.5)
    """Temperature T (units of J / k_B)."""
    field: float = param(0.1)
    """External field h."""
    large_size: int = param(64)
    """Side L of the large system."""
    patch_sizes: tuple[int, ...] = param((8, 16, 32, 64), affects="none")
    """Patch sides l, one scale each; n_s = l^2, K = (L / l)^2."""
    step_time: float = param(1.0)
    """Duration (sweeps) of one step of the small data, the pairs and the ground truth."""
    pair_events: bool = param(False)
    """Small-system steps and partial evolution by l^2 flips (reference) instead of a fixed
    step_time."""
    test_magnetisations: tuple[float, ...] = param(
        (-0.75, -0.5, -0.25, 0.0, 0.25, 0.5, 0.75), affects="truth"
    )
    """Mean magnetisations of the i.i.d. initial states of the test ensembles."""

    def __post_init__(self):
        super().__post_init__()
        if not self.step_time > 0:
            raise ValueError(f"step_time must be > 0, got {self.step_time}.")
        if not self.patch_sizes:
            raise ValueError("patch_sizes is empty.")
        if not all(-1 <= m <= 1 for m in self.test_magnetisations):
            raise ValueError("test magnetisations must lie in [-1, 1].")
        if self.autoencoder.closure_dim and self.autoencoder.epochs <= 0:
            raise ValueError("autoencoder.epochs must be > 0 when closure_dim > 0.")
        system = self.system()  # checks T > 0
        for side in self.patch_sizes:  # sizes, windows and boundaries, before any compute
            partial, upsampling = self._partial(side), self._upsampling(side)
            partial.check((self.large_size, self.large_size))
            upsampling.check((side, side))
            try:
                system.check_boundary(partial.boundary)
                if upsampling.relax is not None:
                    system.check_boundary(upsampling.relax.boundary)
            except TypeError as error:
                raise ValueError(f"pairs.boundary = {self.pairs.boundary!r}: {error}") from None

    # ---- pieces
    def _pair_time(self) -> float:
        """Duration of one partial evolution (fixed-time pairs)."""
        return self.pairs.duration or self.step_time * self.pairs.num_steps

    def _partial(self, side: int) -> PartialEvolution:
        duration = None if self.pair_events else self._pair_time()
        return PartialEvolution(SquareTiling2D(side), self.pairs.boundary, duration=duration)

    def _upsampling(self, side: int) -> HierarchicalUpsampling:
        up, relax = self.upsampling, None
        if up.relax and side < self.large_size:
            window = min(up.window, self.large_size)
            relax = LocalRelax(
                SquareTiling2D(window, stride=min(up.stride, window)),
                self.relax_boundary,
                up.schedule,
                duration=up.relax_time,
            )
        return HierarchicalUpsampling(self.large_size, 2, relax, up.num_random)

    # ---- hooks
    def system(self):
        return self.system_class(self.temperature, self.field)

    @property
    def step_duration(self) -> float:
        return self.step_time

    def scales(self) -> tuple[Scale, ...]:
        return tuple(
            Scale(f"ns{side**2}", side, (self.large_size // side) ** 2, float(side**2), side)
            for side in self.patch_sizes
        )

    def small_data(self, system, scale, key, progress):
        # m0 ~ U(-1, 1); a step is step_time sweeps, or l^2 flips with pair_events
        return random_trajectories(
            system,
            key,
            self.small.num_trajectories,
            (scale.small_size,) * 2,
            self.small.num_steps,
            initial_condition=lambda k: {"magnetisation": jr.uniform(k, minval=-1.0, maxval=1.0)},
            step_duration=None if self.pair_events else self.step_time,
            progress=progress,
        )

    def upsample(self, system, scale, picked, key, progress):
        upsampling = self._upsampling(scale.small_size)
        large = upsample_dataset(system, picked, key, upsampling, progress=progress)
        count = self.upsampling.num_unrelaxed
        if not count:
            return large
        m0 = jr.uniform(jr.fold_in(key, -2 % 2**31), (count,), minval=-1.0, maxval=1.0)
        iid = initial_states(system, jr.fold_in(key, -3 % 2**31), m0, 1, self.large_size)
        return np.concatenate([large, iid])

    def partial_pairs(self, system, scale, snapshots, key, progress):
        return evolve_patches(
            system, snapshots, key, self._partial(scale.small_size), progress=progress
        )

    def ground_truth(self, system, key, progress):
        truth, side = self.truth, self.large_size
        init = initial_states(
            system, jr.fold_in(key, 0), self.test_magnetisations, truth.num_test_runs, side
        )
        test = trajectories(
            system,
            init,
            jr.fold_in(key, 1),
            truth.test_steps,
            self.step_time,
            save_every=truth.save_every,
            progress=progress,
        )
        test = test.reshape(len(self.test_magnetisations), truth.num_test_runs, *test.shape[1:])
        out = {"test": test}
        m0 = np.linspace(-0.9, 0.9, truth.num_val_runs)
        val_init = initial_states(system, jr.fold_in(key, 2), m0, 1, side)
        if self.pair_events:  # the reference's validation: n-flip steps, random durations
            runs = event_trajectories(system, val_init, jr.fold_in(key, 3), truth.val_steps)
            out["validation"], out["validation_times"] = runs["snapshots"], runs["times"]
        else:  # steps of the pairs' duration: the validation loss and the dynamics checks
            # compare like with like (over 1 sweep the drift's contraction alone lowers the
            # Curie-Weiss increment variance by ~15 %)
            step = self._pair_time()
            count = max(1, round(truth.val_steps * self.step_time / step))
            key_val = jr.fold_in(key, 3)
            out["validation"] = trajectories(system, val_init, key_val, count, step)
            times = np.arange(count + 1, dtype=np.float32) * np.float32(step)
            out["validation_times"] = np.tile(times, (len(val_init), 1))
        if truth.reference_steps:
            runs = event_trajectories(
                system, init, jr.fold_in(key, 4), truth.reference_steps, progress=progress
            )
            shape = (len(self.test_magnetisations), truth.num_test_runs)
            out["reference_test"] = runs["snapshots"].reshape(*shape, *runs["snapshots"].shape[1:])
            out["reference_times"] = runs["times"].reshape(*shape, -1)
        return out

    def conditions(self):
        return [f"m0 = {m:g}" for m in self.test_magnetisations]

    def autoencoder_hyperparams(self, scale):
        return model_hyperparams(
            "spin_autoencoder",
            lattice_shape=[self.large_size] * 2,
            patch_shape=[scale.small_size] * 2,
            closure_dim=self.autoencoder.closure_dim,
            known=self.known_observables,
            base_channels=self.autoencoder.width,
        )

    def score(self, predicted, truth):
        """Relative squared error of the ensemble-mean trajectory of the physical latents."""
        dims = self.physical_dims
        return relative_squared_error(predicted[..., :dims], truth[..., :dims])

    def reference_coordinates(self, offset, scale):
        """The reference's: the SDE's min-max coordinates, the magnetisation unscaled."""
        offset, scale = np.array(offset), np.array(scale)
        offset[0], scale[0] = 0.0, 1.0
        return offset, scale

    def reference(self, scale, group):
        if self.large_size != 64:
            return None
        return REFERENCE_TEST_ERROR[self.name].get(group, {}).get(int(scale.label))

    def describe(self):
        return (
            f"Large system {self.large_size}x{self.large_size}, T = {self.temperature}, "
            f"h = {self.field}, partial-evolution boundary `{self.pairs.boundary}`."
        )


# ------------------------------------------------------------------------------ drivers
def initial_states(system, key, magnetisations, num_runs, side) -> np.ndarray:
    """``num_runs`` i.i.d. spin lattices ``(side, side)`` per mean magnetisation, in order:
    ``(len(magnetisations) * num_runs, side, side) int8``."""
    m0 = np.repeat(np.asarray(magnetisations, np.float32), num_runs)
    keys = jr.split(key, len(m0))
    return np.asarray(jax.vmap(lambda k, m: system.init_state(k, (side, side), m))(keys, m0))
