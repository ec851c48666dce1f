"""A new experiment is one file: a system and an experiment defined here, run by the library's
runner and CLI with no change to any library file, checked against a known answer.

The system: n independent Ornstein-Uhlenbeck cells, du_i = -theta u_i dt + sigma dW_i. The
macroscopic observable z = mean_i u_i then obeys exactly dz = -theta z dt + (sigma / sqrt(n)) dW,
and patches are independent, so Theorem 1 holds exactly: partial-evolution pairs of one of K
patches, fitted with lambda = K ("ours"), recover the large system's drift -theta z and
diffusion^2 sigma^2 / n, while lambda = 1 gives K times that diffusion^2.
"""

import dataclasses
import json
import pathlib
from typing import ClassVar

import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

from jmacro import pipelines
from jmacro.cli import main
from jmacro.geometry import Segments1D
from jmacro.metrics import relative_squared_error
from jmacro.models import model_hyperparams
from jmacro.pipelines.base import (
    AbstractExperiment,
    AutoencoderTraining,
    GroundTruth,
    Pairs,
    Scale,
    SDETraining,
    SDEVariant,
    SmallData,
    Upsampling,
    default_variants,
    param,
)
from jmacro.scale import (
    HierarchicalUpsampling,
    Interpolation,
    PartialEvolution,
    evolve_patches,
    upsample_dataset,
)
from jmacro.simulate import random_trajectories, trajectories
from jmacro.systems import AbstractSPDE
from jmacro.training import load_model


class OUCells(AbstractSPDE):
    """n independent cells, du_i = -theta u_i dt + sigma dW_i, one species."""

    theta: float
    sigma: float
    dt: jax.Array
    method: str = "euler_maruyama"
    num_species: ClassVar[int] = 1

    def __init__(self, theta, sigma, dt):
        self.theta, self.sigma, self.dt = theta, sigma, jnp.float32(dt)

    def drift(self, fields, ghosts=None, *, neumann=None, dx=None):
        return -self.theta * fields  # no coupling: ghosts are irrelevant

    def noise_scale(self, num_cells, dx=None):
        return jnp.float32(self.sigma)

    def check_stability(self, num_cells):
        """Euler-Maruyama is stable for theta dt < 2: true for the values used here."""

    def init_state(self, key, shape, level=0.0):
        return jnp.full((shape[0] if isinstance(shape, tuple) else shape, 1), level, jnp.float32)


@dataclasses.dataclass(frozen=True, kw_only=True)
class OUField(AbstractExperiment):
    """Independent Ornstein-Uhlenbeck cells on a line."""

    name: ClassVar[str] = "ou-field"
    metric: ClassVar[str] = "test_error"
    latent_names: ClassVar[tuple[str, ...]] = ("<u>",)
    presets: ClassVar[dict] = {"smoke": {}, "quick": {}, "paper": {}}

    theta: float = param(1.0)
    """Relaxation rate."""
    sigma: float = param(0.5)
    """Noise amplitude per cell."""
    dt: float = param(0.05)
    """Time step."""
    small_cells: int = param(8)
    """Cells of the small system and of a patch."""
    large_cells: int = param(32)
    """Cells of the large system."""
    test_levels: tuple[float, ...] = param((-1.0, 1.0), affects="truth")
    """Initial levels of the test ensembles."""
    small: SmallData = SmallData(num_trajectories=200, num_steps=20)
    upsampling: Upsampling = Upsampling(num_large=4000, num_random=0, relax=False)
    pairs: Pairs = Pairs(boundary="ghosts")
    autoencoder: AutoencoderTraining = AutoencoderTraining(closure_dim=0)
    sde: SDETraining = SDETraining(
        diffusion="constant_diagonal",
        epochs=100,
        learning_rate=1e-2,
        batch_size=256,
        jitter=1e-6,
        normalisation="standard",
    )
    truth: GroundTruth = GroundTruth(num_test_runs=16, test_steps=20, num_val_runs=8, val_steps=20)
    num_seeds: int = param(1, affects="none")  # Theorem 1 is checked on one replicate

    def system(self):
        return OUCells(self.theta, self.sigma, self.dt)

    @property
    def step_duration(self):
        return self.dt

    def scales(self):
        k = self.large_cells // self.small_cells
        return (Scale(f"K{k}", self.small_cells, k, float(k), 0),)

    def small_data(self, system, scale, key, progress):
        level = lambda k: {"level": jr.uniform(k, minval=-2.0, maxval=2.0)}  # noqa: E731
        return random_trajectories(
            system,
            key,
            self.small.num_trajectories,
            (self.small_cells, 1),
            self.small.num_steps,
            initial_condition=level,
        )

    def upsample(self, system, scale, picked, key, progress):
        cfg = HierarchicalUpsampling(self.large_cells, None, None, upsample=Interpolation())
        return upsample_dataset(system, picked, key, cfg, progress=progress)

    def partial_pairs(self, system, scale, snapshots, key, progress):
        scheme = PartialEvolution(Segments1D(scale.num_patches), num_events=self.pairs.num_steps)
        return evolve_patches(system, snapshots, key, scheme, progress=progress)

    def ground_truth(self, system, key, progress):
        levels = np.repeat(self.test_levels, self.truth.num_test_runs)
        init = np.stack([system.init_state(None, self.large_cells, x) for x in levels])
        test = trajectories(system, init, jr.fold_in(key, 0), self.truth.test_steps)
        val_init = np.stack([system.init_state(None, self.large_cells, x) for x in (-1.5, 1.5)])
        val_init = np.repeat(val_init, self.truth.num_val_runs // 2, axis=0)
        return {
            "test": test.reshape(len(self.test_levels), self.truth.num_test_runs, *test.shape[1:]),
            "validation": trajectories(system, val_init, jr.fold_in(key, 1), self.truth.val_steps),
        }

    def conditions(self):
        return [f"u0 = {x:g}" for x in self.test_levels]

    def autoencoder_hyperparams(self, scale):
        return model_hyperparams(
            "field_autoencoder",
            num_cells=self.large_cells,
            patch_cells=self.small_cells,
            num_species=1,
            closure_per_species=0,
        )

    def score(self, predicted, truth):
        return relative_squared_error(predicted, truth)

    def sde_variants(self, scale):
        # Theorem 1's K-scaling, directly: the same "ours" pairs fitted with lambda = 1
        lambda_one = SDEVariant("ours_lam1", "ours, lambda = 1", "ours", 1.0)
        return (*default_variants(scale), lambda_one)


@pytest.fixture(scope="module")
def registered_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("ou")
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(pipelines.EXPERIMENTS, OUField.name, OUField)  # the one registry line
        main(["run", "ou-field", "--preset", "smoke", "--out", str(root / "run"), "--quiet"])
        cfg = pipelines.get_experiment("ou-field", "smoke")
    return cfg, json.loads((root / "run" / "metrics.json").read_text())


def test_a_new_experiment_runs_through_the_cli_and_the_generic_report(registered_run):
    _, metrics = registered_run
    assert metrics["experiment"] == "ou-field"
    assert set(metrics["summary"]["K4"]) == {"ours", "baseline", "ours, lambda = 1"}
    # every stage is recorded with the directory it lives in
    assert len(metrics["stages"]) == 9  # truth, small, large, pairs, autoencoder, 3 SDEs, eval
    assert all(name.startswith("seed0/") for name in metrics["stages"])  # one replicate
    assert all(pathlib.Path(path).is_dir() for path in metrics["stages"].values())


def test_theorem_1_holds_exactly_for_independent_patches(registered_run):
    """Known answer: drift -theta z for every fit of the "ours" pairs; diffusion^2 sigma^2 / n
    with lambda = K, K sigma^2 / n with lambda = 1. The baseline (the patch taken for the
    system) also sees the patch-to-system difference as noise: far more than K sigma^2 / n.
    The drift is checked through its least-squares line over z in [-1, 1], which averages out
    the network's pointwise wiggles (up to 0.13 at |z| = 1 in one realisation).
    Tolerances: 4000 pairs give the slope to a few percent and the diffusion^2 to ~2% (one
    standard error sqrt(2 / N)); we allow 10% on the slope and on the diffusion^2 ratios, and
    0.05 on the intercept (0.05 is half a standard deviation of z in the data)."""
    cfg, metrics = registered_run
    stages = metrics["stages"]
    z = jnp.linspace(-1.0, 1.0, 11)[:, None]
    exact_diffusion_sq = cfg.sigma**2 / cfg.large_cells
    ratios = {}
    for variant in ("ours", "ours_lam1", "baseline"):
        sde = load_model(stages[f"seed0/K4_sde_{variant}"])
        drift = np.asarray(jax.vmap(sde.physical_drift)(z)[:, 0], np.float64)
        slope, intercept = np.polyfit(np.asarray(z[:, 0], np.float64), drift, 1)
        assert slope == pytest.approx(-cfg.theta, rel=0.1), (variant, slope)
        assert abs(intercept) < 0.05, (variant, intercept)
        sigma = jax.vmap(sde.physical_diffusion)(z)[:, 0, 0]
        ratios[variant] = float(sigma[0] ** 2 / exact_diffusion_sq)
    assert ratios["ours"] == pytest.approx(1.0, rel=0.1)
    assert ratios["ours_lam1"] == pytest.approx(4.0, rel=0.1)  # K = 4
    assert ratios["baseline"] > 2 * ratios["ours_lam1"]
