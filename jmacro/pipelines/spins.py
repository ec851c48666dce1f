"""End-to-end pipelines for the spin systems (REFERENCE.md 2.1, 2.2): Ising and Curie-Weiss.

For every patch size n_s = l^2 of ``cfg.patch_sizes`` the pipeline runs

1. small-system trajectories (side l) -> hierarchical upsampling to side L -> one partial
   evolution of every large snapshot (``jmacro.scale.builder``);
2. the closure autoencoder on the large snapshots (skipped when ``closure_dim = 0``);
3. the latent SDE twice: "ours" (lambda = K) and "baseline" (lambda = 1), validated on true
   full-system pairs (lambda = 1);
4. rollouts of both SDEs from the encoded initial states of the test ensembles, compared with
   the encoded ground-truth large-system trajectories: the relative squared error of the
   ensemble-mean latent trajectory (REFERENCE.md 3), averaged over the test initial
   magnetisations.

Shared by all n_s: the ground-truth test ensembles (``truth``) and the validation runs
(``validation``) of the large system. Every stage is cached in the run directory keyed by the
config entries it depends on (``jmacro.cache.StageCache``).

Choices (documented, configurable):
- Ground truth, validation, small-system trajectories and partial evolution advance a fixed
  time ``step_time`` (sweeps) with the exact continuous-time algorithms; the reference's "one
  step = n flips" has a random dt, and with per-sample dt a fixed flip count biases the fitted
  diffusion by n/(n-1). ``pair_events=True`` restores the reference's flip counts.
- LocalRelax visits windows for a fixed time ``relax_time`` rather than w^2 flips: a state
  observed after a fixed number of flips follows the jump chain, tilted towards disordered
  states; at T = 2.5 flip-count-relaxed snapshots have a domain-wall density that still falls
  by 0.012 per sweep under the true dynamics (fixed time 2: 0.002), and that bias goes straight
  into the learned drift.
- Errors are computed in min-max normalised latents (the coordinates the SDE sees, as the
  reference does for Ising), the normaliser fitted on the large training snapshots.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import time
from pathlib import Path
from typing import Literal

import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np

from jmacro._checks import check_positive_int
from jmacro.cache import StageCache, StageResult
from jmacro.pipelines._common import claim_run_dir, fit_stage, train_latent_sde
from jmacro.scale.builder import SpinDatasetConfig, build_spin_datasets
from jmacro.scale.upsample import LocalRelax

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class SpinPipelineConfig:
    """Configuration of the Ising / Curie-Weiss pipeline. Presets: ``PRESETS``."""

    experiment: Literal["ising", "curie-weiss"] = "ising"
    """Which system."""
    preset: str = "custom"
    """Name of the preset this config started from (for the report only)."""
    temperature: float = 2.5
    field: float = 0.1
    large_size: int = 64
    """Side L of the large system."""
    patch_sizes: tuple[int, ...] = (8, 16, 32, 64)
    """Patch sides l; n_s = l^2, K = (L/l)^2."""
    boundary: Literal["periodic", "halo", "mean_field"] = "periodic"
    """Partial-evolution boundary mode."""
    step_time: float = 1.0
    """Duration (sweeps) of one step of the ground truth, the validation runs and the pairs."""
    pair_events: bool = False
    """Small-system steps and partial evolution by l^2 flips (reference) instead of
    ``step_time``."""
    # small-system data and upsampling
    num_trajectories: int = 1000
    num_steps: int = 200
    num_large: int = 100_000
    num_random: int = 100_000
    relax_window: int = 16
    relax_stride: int = 8
    relax_schedule: Literal["sequential", "parallel"] = "sequential"
    relax_time: float | None = 2.0
    """Continuous time (sweeps) of each LocalRelax window visit; ``None`` relaxes by w^2 flips
    (reference). Flip-count relaxation leaves snapshots whose domain-wall density still drifts
    (-0.012 per sweep at T = 2.5, 8x8 windows), which biases the learned drift."""
    # models
    closure_dim: int = 2
    ae_channels: int = 32
    ae_epochs: int = 10
    ae_learning_rate: float = 2e-4
    ae_batch_size: int = 512
    ae_max_snapshots: int = 100_000
    """Autoencoder training snapshots (a random subset of the large ones)."""
    diffusion: Literal["full", "diagonal", "constant_diagonal", "constant"] = "full"
    sde_epochs: int = 100
    sde_learning_rate: float = 1e-3
    sde_batch_size: int = 1024
    jitter: float = 1e-4
    # ground truth
    num_val_runs: int = 20
    val_steps: int = 200
    test_magnetisations: tuple[float, ...] = (-0.75, -0.5, -0.25, 0.0, 0.25, 0.5, 0.75)
    num_test_runs: int = 20
    test_steps: int = 500
    seed: int = 0

    def __post_init__(self):
        if self.experiment not in ("ising", "curie-weiss"):
            raise ValueError(f"unknown experiment {self.experiment!r}.")
        check_positive_int(self.large_size, "large_size")
        if not self.patch_sizes:
            raise ValueError("patch_sizes is empty.")
        for side in self.patch_sizes:
            self.dataset(side)  # validates sizes, windows, boundary before any compute
        if not self.step_time > 0:
            raise ValueError(f"step_time must be > 0, got {self.step_time}.")
        for name in ("num_val_runs", "val_steps", "num_test_runs", "test_steps", "sde_epochs"):
            check_positive_int(getattr(self, name), name)
        if self.closure_dim < 0 or (self.closure_dim and self.ae_epochs <= 0):
            raise ValueError("closure_dim must be >= 0 and ae_epochs > 0 when it is > 0.")
        if not all(-1 <= m <= 1 for m in self.test_magnetisations):
            raise ValueError("test magnetisations must lie in [-1, 1].")

    def dataset(self, side: int) -> SpinDatasetConfig:
        """The dataset config of patch side ``side``."""
        relax = None
        if side < self.large_size:
            window = min(self.relax_window, self.large_size)
            # Curie-Weiss windows feel the whole lattice's field; Ising windows their neighbours.
            boundary = "mean_field" if self.experiment == "curie-weiss" else "halo"
            relax = LocalRelax(
                window,
                min(self.relax_stride, window),
                None,
                boundary,
                self.relax_schedule,
                duration=self.relax_time,
            )
        return SpinDatasetConfig(
            system=self.experiment,
            temperature=self.temperature,
            field=self.field,
            small_size=side,
            large_size=self.large_size,
            num_trajectories=self.num_trajectories,
            num_steps=self.num_steps,
            num_large=self.num_large,
            num_random=self.num_random,
            relax=relax,
            boundary=self.boundary,
            seed=self.seed,
            pair_duration=None if self.pair_events else self.step_time,
            small_step_time=None if self.pair_events else self.step_time,
        )

    def make_system(self):
        return self.dataset(self.patch_sizes[0]).make_system()


def _ising(**kw) -> SpinPipelineConfig:
    return SpinPipelineConfig(experiment="ising", **kw)


def _curie_weiss(**kw) -> SpinPipelineConfig:
    defaults = dict(
        experiment="curie-weiss",
        temperature=1.1,
        field=0.1,
        boundary="mean_field",
        closure_dim=0,
        diffusion="constant_diagonal",
        sde_learning_rate=1e-2,
        test_magnetisations=(-0.5, -0.25, 0.0, 0.25, 0.5),
    )
    defaults.update(kw)
    return SpinPipelineConfig(**defaults)


_SMOKE = dict(
    preset="smoke",
    large_size=16,
    patch_sizes=(8,),
    num_trajectories=8,
    num_steps=4,
    num_large=32,
    num_random=8,
    relax_window=8,
    relax_stride=4,
    relax_schedule="parallel",
    ae_channels=4,
    ae_epochs=1,
    ae_batch_size=32,
    sde_epochs=2,
    sde_batch_size=32,
    num_val_runs=2,
    val_steps=4,
    test_magnetisations=(-0.5, 0.5),
    num_test_runs=3,
    test_steps=4,
)
_QUICK = dict(
    preset="quick",
    large_size=32,
    patch_sizes=(8, 16, 32),
    num_trajectories=200,
    num_steps=40,
    num_large=3000,
    num_random=1000,
    relax_window=8,
    relax_stride=4,
    relax_schedule="parallel",
    ae_channels=8,
    ae_epochs=3,
    ae_batch_size=128,
    ae_max_snapshots=3000,
    sde_epochs=40,
    sde_batch_size=256,
    num_val_runs=8,
    val_steps=100,
    num_test_runs=20,
    test_steps=60,
)
# The reference sizes (L = 64, n_s = 8^2 ... 64^2) with data and epochs cut to fit a 2-core
# CPU in about half an hour per system: the table of the README's "Results" section.
_REFERENCE_CPU = dict(
    _QUICK,
    preset="reference-cpu",
    large_size=64,
    patch_sizes=(8, 16, 32, 64),
    num_large=4000,
    num_random=2000,
    relax_window=16,
    relax_stride=8,
    ae_max_snapshots=4000,
    num_test_runs=20,
    test_steps=100,
)
PRESETS: dict[str, dict[str, SpinPipelineConfig]] = {
    "ising": {
        "smoke": _ising(**_SMOKE),
        "quick": _ising(**{**_QUICK, "boundary": "halo"}),  # halo: 5x lower error at K = 16
        "reference-cpu": _ising(**{**_REFERENCE_CPU, "boundary": "halo"}),
        "paper": _ising(preset="paper"),
    },
    "curie-weiss": {
        "smoke": _curie_weiss(**_SMOKE),
        "quick": _curie_weiss(**{**_QUICK, "num_random": 2000}),
        "reference-cpu": _curie_weiss(**_REFERENCE_CPU),
        "paper": _curie_weiss(preset="paper", num_large=100_000, test_steps=500),
    },
}


@dataclasses.dataclass
class RunResult:
    """What ``run`` returns: the run directory, the metrics written to ``metrics.json`` and
    the cache records of every stage (``built`` says whether it was computed this time)."""

    run_dir: Path
    metrics: dict
    stages: list[StageResult]


# ------------------------------------------------------------------------------ stages
def simulate_runs(system, key, initial, num_steps, step_time, *, batch_size=64) -> np.ndarray:
    """Trajectories of ``system`` from the host states ``initial (R, L, L)`` on the time grid
    0, step_time, ..., num_steps * step_time (exact continuous-time dynamics): ``(R, S+1, L, L)
    int8``. Run ``r`` uses ``fold_in(key, r)``; batches of ``batch_size`` are sharded over the
    local devices. The pipeline's ground truth and validation runs."""
    from jmacro.sharding import map_in_batches

    def one(spins, index):
        def step(s, k):
            s = system.advance_time(s, k, step_time)
            return s, s

        keys = jr.split(jr.fold_in(key, index), num_steps)
        _, path = jax.lax.scan(step, spins, keys)
        return jnp.concatenate([spins[None], path])

    return map_in_batches(one, len(initial), initial, batch_size=batch_size, dtype=jnp.int8)


def initial_states(system, key, magnetisations, num_runs, side) -> np.ndarray:
    """``num_runs`` i.i.d. spin lattices ``(side, side)`` per mean magnetisation, in order:
    ``(len(magnetisations) * num_runs, side, side) int8``."""
    m0 = np.repeat(np.asarray(magnetisations, np.float32), num_runs)
    keys = jr.split(key, len(m0))
    return np.asarray(jax.vmap(lambda k, m: system.init_state(k, (side, side), m))(keys, m0))


def _truth_stage(cache, cfg, system, force):
    key_config = {
        "experiment": cfg.experiment,
        "temperature": cfg.temperature,
        "field": cfg.field,
        "large_size": cfg.large_size,
        "step_time": cfg.step_time,
        "m0": list(cfg.test_magnetisations),
        "num_test_runs": cfg.num_test_runs,
        "test_steps": cfg.test_steps,
        "num_val_runs": cfg.num_val_runs,
        "val_steps": cfg.val_steps,
        "seed": cfg.seed,
    }
    root = jr.fold_in(jr.key(cfg.seed), 1000)

    def build(writer):
        init = initial_states(
            system, jr.fold_in(root, 0), cfg.test_magnetisations, cfg.num_test_runs, cfg.large_size
        )
        test = simulate_runs(system, jr.fold_in(root, 1), init, cfg.test_steps, cfg.step_time)
        writer.add(
            "test", test.reshape(len(cfg.test_magnetisations), cfg.num_test_runs, *test.shape[1:])
        )
        val_init = initial_states(
            system, jr.fold_in(root, 2), np.linspace(-0.9, 0.9, cfg.num_val_runs), 1, cfg.large_size
        )
        writer.add(
            "validation",
            simulate_runs(system, jr.fold_in(root, 3), val_init, cfg.val_steps, cfg.step_time),
        )

    return cache.get_or_build("truth", key_config, build, force=force)


def _run_patch_size(cfg, side, cache, run_dir, truth, force, progress):
    from jmacro.models import build_model, model_hyperparams
    from jmacro.training import (
        TrainConfig,
        encode_configurations,
        encode_full_pairs,
        encode_partial_evolution_pairs,
        fit,
        fit_normaliser,
        load_model,
        normalise_pairs,
        reconstruction_loss,
    )
    from jmacro.training.losses import default_covariance_scale

    tag = f"ns{side * side}"
    data_cfg = cfg.dataset(side)
    stages = build_spin_datasets(data_cfg, run_dir / tag, force=force, progress=progress)
    large, pairs = stages["large"].dataset, stages["pairs"].dataset
    num_patches = (cfg.large_size // side) ** 2
    root = jr.fold_in(jr.key(cfg.seed), side)
    known = "ising" if cfg.experiment == "ising" else "magnetisation"
    ae_hyper = model_hyperparams(
        "spin_autoencoder",
        lattice_shape=[cfg.large_size] * 2,
        patch_shape=[side, side],
        closure_dim=cfg.closure_dim,
        known=known,
        base_channels=cfg.ae_channels,
    )
    snapshots = large["snapshots"]

    def train_ae(directory):
        from jmacro.training.checkpoint import save_model

        model = build_model(ae_hyper, jr.fold_in(root, 1))
        if cfg.closure_dim:
            rng = np.random.default_rng([cfg.seed, side])
            count = min(cfg.ae_max_snapshots, len(snapshots))
            rows = np.sort(rng.choice(len(snapshots), count, replace=False))
            train = np.asarray(snapshots[rows])
            split = max(1, count // 10)
            result = fit(
                model,
                reconstruction_loss,
                train[split:],
                train[:split],
                jr.fold_in(root, 2),
                TrainConfig(
                    learning_rate=cfg.ae_learning_rate,
                    batch_size=cfg.ae_batch_size,
                    num_epochs=cfg.ae_epochs,
                    show_progress=progress,
                ),
                hyperparams=ae_hyper,
            )
            model = result.model
        save_model(directory, model, ae_hyper)

    ae_stage = fit_stage(
        cache,
        f"{tag}_autoencoder",
        {
            "large": stages["large"].fingerprint,
            "model": ae_hyper,
            "epochs": cfg.ae_epochs,
            "lr": cfg.ae_learning_rate,
            "batch": cfg.ae_batch_size,
            "max": cfg.ae_max_snapshots,
            "seed": cfg.seed,
        },
        train_ae,
        force,
    )
    ae = load_model(ae_stage.path)

    @functools.cache
    def validation_and_normaliser():
        # Only needed when an SDE or the evaluation is (re)built: a resumed run skips it.
        validation = truth.dataset["validation"]
        shape = (-1, cfg.large_size, cfg.large_size)
        val_pairs = encode_full_pairs(
            ae,
            validation[:, :-1].reshape(shape),
            validation[:, 1:].reshape(shape),
            np.full(validation.shape[0] * (validation.shape[1] - 1), cfg.step_time, np.float32),
        )
        normaliser = fit_normaliser(encode_configurations(ae, snapshots), val_pairs.dt, "minmax")
        return val_pairs, normaliser

    sde_hyper = model_hyperparams(
        "latent_sde", latent_dim=ae.latent_dim, diffusion_mode=cfg.diffusion
    )
    results = {}
    for method in ("ours", "baseline"):

        def train_sde(directory, method=method):
            val_pairs, normaliser = validation_and_normaliser()
            train_pairs = encode_partial_evolution_pairs(
                ae,
                snapshots,
                pairs["patch_index"],
                pairs["patch_after"],
                pairs["dt"],
                method=method,
            )
            train_latent_sde(
                directory,
                sde_hyper,
                normaliser,
                normalise_pairs(train_pairs, normaliser),
                normalise_pairs(val_pairs, normaliser),
                jr.fold_in(root, 3),
                jr.fold_in(root, 4),
                default_covariance_scale(method, num_patches),
                cfg.jitter,
                cfg.sde_learning_rate,
                cfg.sde_batch_size,
                cfg.sde_epochs,
                progress,
            )

        results[method] = fit_stage(
            cache,
            f"{tag}_sde_{method}",
            {
                "autoencoder": ae_stage.fingerprint,
                "pairs": stages["pairs"].fingerprint,
                "truth": truth.fingerprint,
                "model": sde_hyper,
                "epochs": cfg.sde_epochs,
                "lr": cfg.sde_learning_rate,
                "batch": cfg.sde_batch_size,
                "jitter": cfg.jitter,
                "seed": cfg.seed,
            },
            train_sde,
            force,
        )

    def evaluate(writer):
        from jmacro.metrics import relative_squared_error
        from jmacro.rollout import rollout

        _, normaliser = validation_and_normaliser()
        test = truth.dataset["test"]  # (M0, R, T+1, L, L)
        num_m0, num_runs, num_times = test.shape[:3]
        z_true = encode_configurations(ae, test.reshape(-1, cfg.large_size, cfg.large_size))
        z_true = z_true.reshape(num_m0, num_runs, num_times, -1)
        times = np.arange(num_times, dtype=np.float32) * cfg.step_time
        writer.add("times", times)
        writer.add("truth", z_true)
        for method, stage in results.items():
            sde = load_model(stage.path)
            pred = np.stack(
                [
                    np.asarray(rollout(sde, z_true[i, :, 0], times, jr.fold_in(root, 10 + i)))
                    for i in range(num_m0)
                ]
            )
            errors = [
                float(
                    relative_squared_error(
                        normaliser.normalise(jnp.asarray(pred[i])),
                        normaliser.normalise(jnp.asarray(z_true[i])),
                    )
                )
                for i in range(num_m0)
            ]
            writer.add(f"pred_{method}", pred.astype(np.float32))
            writer.add(f"error_{method}", np.asarray(errors, np.float32))

    evaluation = cache.get_or_build(
        f"{tag}_evaluation",
        {
            "ours": results["ours"].fingerprint,
            "baseline": results["baseline"].fingerprint,
            "autoencoder": ae_stage.fingerprint,
            "truth": truth.fingerprint,
        },
        evaluate,
        force=force,
    )
    return [*stages.values(), ae_stage, *results.values(), evaluation], evaluation.dataset


# ------------------------------------------------------------------------------ driver
def run(
    cfg: SpinPipelineConfig, run_dir: str | Path, *, force: bool = False, progress: bool = True
) -> RunResult:
    """Run (or resume) the whole pipeline of ``cfg`` in ``run_dir``; write ``metrics.json``,
    ``report.md`` and PNG plots there. Raises ``ValueError`` if ``run_dir`` holds a run of
    another experiment or system size (it is never modified then)."""
    from jmacro.report import write_spin_report

    start = time.perf_counter()
    run_dir = Path(run_dir)
    claim_run_dir(run_dir, {"experiment": cfg.experiment, "large_size": cfg.large_size})
    cache = StageCache(run_dir)
    system = cfg.make_system()
    truth = _truth_stage(cache, cfg, system, force)
    all_stages, evaluations = [truth], {}
    for side in cfg.patch_sizes:
        logger.info(
            "patch size %dx%d (n_s = %d, K = %d)",
            side,
            side,
            side * side,
            (cfg.large_size // side) ** 2,
        )
        stages, evaluations[side * side] = _run_patch_size(
            cfg, side, cache, run_dir, truth, force, progress
        )
        all_stages += stages
    metrics = {
        "experiment": cfg.experiment,
        "preset": cfg.preset,
        "wall_time_s": time.perf_counter() - start,
        "test_error": {
            method: {
                str(ns): float(np.mean(ev[f"error_{method}"])) for ns, ev in evaluations.items()
            }
            for method in ("ours", "baseline")
        },
        "test_error_per_m0": {
            method: {
                str(ns): dict(
                    zip(
                        map(str, cfg.test_magnetisations),
                        map(float, ev[f"error_{method}"]),
                        strict=True,
                    )
                )
                for ns, ev in evaluations.items()
            }
            for method in ("ours", "baseline")
        },
        "stages_built": [s.name for s in all_stages if s.built],
        "config": dataclasses.asdict(cfg),
    }
    (run_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
    write_spin_report(run_dir, cfg, metrics, evaluations)
    return RunResult(run_dir, metrics, all_stages)
