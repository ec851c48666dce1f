"""End-to-end pipeline for the stochastic predator-prey SPDE (REFERENCE.md 2.4).

1. ``small``: trajectories of the small system (n_s cells) from the training family
   u = m + k cos(10 pi x), v = (1 - m) - k cos(10 pi x), k ~ U(k_range), m ~ U(m_range);
2. ``large``: every ``snapshot_every``-th small snapshot interpolated to the large grid (linear,
   no LocalRelax: the reference);
3. ``pairs``: one partial evolution (``num_pair_steps`` SPDE steps of one of K patches, frozen
   ghost cells) of every large snapshot;
4. ``truth``: ground-truth large-system ensembles on the 3 x 3 test grid of (k, m), and
   validation runs (full-system one-step pairs, lambda = 1);
5. ``autoencoder``: the patch-additive MLP closure (<u>, <v>, phi_u, phi_v), MSE;
6. ``sde_lam<lambda>_seed<s>``: the latent SDE trained on "ours" pairs with the covariance
   scale lambda, for every lambda of the sweep and every seed;
7. ``evaluation``: rollouts of every SDE from the encoded initial test states; MMD between the
   predicted and true latent ensembles at every output time (standardised latents, RBF
   bandwidths {0.25, ..., 8}, biased V-statistic: the reference's metric), averaged over time
   and the 9 test conditions.

Theorem 1 predicts lambda = K to be the right scale; the sweep shows how much it matters.
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
from jmacro.cache import StageCache
from jmacro.pipelines._common import claim_run_dir, fit_stage, train_latent_sde
from jmacro.pipelines.spins import RunResult

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class PredatorPreyPipelineConfig:
    """Configuration of the predator-prey pipeline. Presets: ``PRESETS``."""

    experiment: Literal["predator-prey"] = "predator-prey"
    preset: str = "custom"
    """Name of the preset this config started from (for the report only)."""
    # physics (REFERENCE.md 2.4)
    a: float = 3.0
    b: float = 0.4
    diffusion: float = 0.0
    """D, the prey's diffusion coefficient (the predator's is 1)."""
    sigma: float = 0.02
    dt: float = 0.01
    scaling: Literal["lattice", "physical"] = "lattice"
    small_cells: int = 100
    large_cells: int = 200
    num_patches: int = 5
    """K: the large grid is cut into K patches of large_cells / K cells."""
    # data
    k_range: tuple[float, float] = (0.05, 0.15)
    m_range: tuple[float, float] = (0.45, 0.55)
    num_small_trajectories: int = 50
    num_steps: int = 3000
    snapshot_every: int = 1
    """Keep every this-many-th small snapshot for upsampling."""
    upsample_method: Literal["linear", "cubic"] = "linear"
    num_pair_steps: int = 1
    # models
    ae_width: int = 32
    ae_epochs: int = 10
    ae_learning_rate: float = 1e-3
    ae_batch_size: int = 512
    sde_diffusion: Literal["full", "diagonal", "constant_diagonal", "constant"] = "full"
    sde_epochs: int = 100
    sde_learning_rate: float = 1e-3
    sde_batch_size: int = 1024
    jitter: float = 1e-5
    lambdas: tuple[float, ...] = (1.0, 2.5, 5.0, 10.0, 15.0, 20.0)
    """Covariance scales of the sweep (lambda = K is Theorem 1's choice)."""
    seeds: tuple[int, ...] = (0, 1, 2)
    """SDE training seeds per lambda."""
    # ground truth
    num_val_runs: int = 10
    val_steps: int = 300
    test_k: tuple[float, ...] = (0.05, 0.1, 0.15)
    test_m: tuple[float, ...] = (0.45, 0.5, 0.55)
    num_test_runs: int = 50
    test_steps: int = 3000
    save_every: int = 10
    """Output interval (in SPDE steps) of the test ensembles and rollouts."""
    rollout_substeps: int = 10
    """Euler-Maruyama steps of the learned SDE per output interval."""
    seed: int = 0

    def __post_init__(self):
        if self.experiment != "predator-prey":
            raise ValueError(f"unknown experiment {self.experiment!r}.")
        for name in (
            "small_cells",
            "large_cells",
            "num_patches",
            "num_small_trajectories",
            "num_steps",
            "snapshot_every",
            "num_pair_steps",
            "ae_epochs",
            "sde_epochs",
            "num_val_runs",
            "val_steps",
            "num_test_runs",
            "test_steps",
            "save_every",
            "rollout_substeps",
        ):
            check_positive_int(getattr(self, name), name)
        if self.large_cells % self.num_patches:
            raise ValueError(
                f"num_patches K = {self.num_patches} does not divide large_cells = "
                f"{self.large_cells}."
            )
        if self.test_steps % self.save_every:
            raise ValueError("save_every must divide test_steps.")
        if not self.lambdas or any(not lam > 0 for lam in self.lambdas):
            raise ValueError(
                f"lambdas must be a non-empty tuple of positive numbers: {self.lambdas}"
            )
        if not self.seeds:
            raise ValueError("seeds is empty.")
        for name in ("k_range", "m_range"):
            low, high = getattr(self, name)
            if not low <= high:
                raise ValueError(f"{name} must be (low, high) with low <= high.")
        self.make_system().check_stability(self.large_cells)  # fails before any compute

    @property
    def patch_cells(self) -> int:
        return self.large_cells // self.num_patches

    def make_system(self):
        from jmacro.systems import PredatorPrey

        return PredatorPrey(
            self.a, self.b, self.diffusion, self.sigma, self.dt, scaling=self.scaling
        )


_SMOKE = dict(
    preset="smoke",
    num_small_trajectories=4,
    num_steps=40,
    snapshot_every=1,
    ae_width=8,
    ae_epochs=2,
    ae_batch_size=64,
    sde_epochs=2,
    sde_batch_size=64,
    lambdas=(1.0, 5.0),
    seeds=(0,),
    num_val_runs=2,
    val_steps=10,
    test_k=(0.05, 0.15),
    test_m=(0.5,),
    num_test_runs=4,
    test_steps=20,
    save_every=10,
)
# The reference's system, data family and test grid; a fifth of its snapshots, two seeds.
_QUICK = dict(
    preset="quick",
    snapshot_every=5,
    sde_epochs=80,
    sde_batch_size=256,  # 40 epochs at 1024 left the validation loss falling steeply
    seeds=(0, 1),
)
PRESETS: dict[str, PredatorPreyPipelineConfig] = {
    "smoke": PredatorPreyPipelineConfig(**_SMOKE),
    "quick": PredatorPreyPipelineConfig(**_QUICK),
    "paper": PredatorPreyPipelineConfig(preset="paper"),
}


# ------------------------------------------------------------------------------ stages
def _family(num, key, k_range, m_range, num_cells):
    """``num`` initial fields of the reference family with k, m uniform in their ranges."""
    from jmacro.systems import predator_prey_initial_condition

    key_k, key_m = jr.split(key)
    k = jr.uniform(key_k, (num,), minval=k_range[0], maxval=k_range[1])
    m = jr.uniform(key_m, (num,), minval=m_range[0], maxval=m_range[1])
    return np.asarray(jax.vmap(lambda k, m: predator_prey_initial_condition(num_cells, k, m))(k, m))


def _data_stages(cfg, cache, system, root, force, progress):
    from jmacro.scale import field_partial_pairs, upsample_fields
    from jmacro.systems import simulate_ensemble

    small_key = {
        "physics": [cfg.a, cfg.b, cfg.diffusion, cfg.sigma, cfg.dt, cfg.scaling],
        "cells": cfg.small_cells,
        "ranges": [list(cfg.k_range), list(cfg.m_range)],
        "num_trajectories": cfg.num_small_trajectories,
        "num_steps": cfg.num_steps,
        "seed": cfg.seed,
    }

    def build_small(writer):
        init = _family(
            cfg.num_small_trajectories,
            jr.fold_in(root, 0),
            cfg.k_range,
            cfg.m_range,
            cfg.small_cells,
        )
        writer.add(
            "trajectories",
            simulate_ensemble(
                system, init, jr.fold_in(root, 1), cfg.num_steps, progress=progress
            ).astype(np.float32),
        )

    small = cache.get_or_build("small", small_key, build_small, force=force)
    large_key = {
        "small": small.fingerprint,
        "every": cfg.snapshot_every,
        "cells": cfg.large_cells,
        "method": cfg.upsample_method,
    }

    def build_large(writer):
        trajectories = small.dataset["trajectories"]
        picked = np.asarray(trajectories[:, :: cfg.snapshot_every]).reshape(-1, cfg.small_cells, 2)
        writer.add(
            "snapshots",
            upsample_fields(picked, cfg.large_cells, cfg.upsample_method, progress=progress),
        )

    large = cache.get_or_build("large", large_key, build_large, force=force)
    pairs_key = {
        "large": large.fingerprint,
        "num_patches": cfg.num_patches,
        "steps": cfg.num_pair_steps,
        "seed": cfg.seed,
    }

    def build_pairs(writer):
        data = field_partial_pairs(
            system,
            large.dataset["snapshots"],
            jr.fold_in(root, 2),
            cfg.num_patches,
            cfg.num_pair_steps,
            progress=progress,
        )
        for name, array in data.items():
            writer.add(name, array)

    pairs = cache.get_or_build("pairs", pairs_key, build_pairs, force=force)
    return small, large, pairs


def _test_grid(cfg) -> list[tuple[float, float]]:
    return [(k, m) for k in cfg.test_k for m in cfg.test_m]


def _truth_stage(cfg, cache, system, root, force, progress):
    from jmacro.systems import predator_prey_initial_condition, simulate_ensemble

    key_config = {
        "physics": [cfg.a, cfg.b, cfg.diffusion, cfg.sigma, cfg.dt, cfg.scaling],
        "cells": cfg.large_cells,
        "grid": _test_grid(cfg),
        "num_test_runs": cfg.num_test_runs,
        "test_steps": cfg.test_steps,
        "save_every": cfg.save_every,
        "ranges": [list(cfg.k_range), list(cfg.m_range)],
        "num_val_runs": cfg.num_val_runs,
        "val_steps": cfg.val_steps,
        "seed": cfg.seed,
    }

    def build(writer):
        grid = np.repeat(np.asarray(_test_grid(cfg), np.float32), cfg.num_test_runs, axis=0)
        init = np.asarray(
            jax.vmap(lambda k, m: predator_prey_initial_condition(cfg.large_cells, k, m))(
                grid[:, 0], grid[:, 1]
            )
        )
        test = simulate_ensemble(
            system, init, jr.fold_in(root, 3), cfg.test_steps, cfg.save_every, progress=progress
        )
        writer.add("test", test.reshape(-1, cfg.num_test_runs, *test.shape[1:]))
        val_init = _family(
            cfg.num_val_runs, jr.fold_in(root, 4), cfg.k_range, cfg.m_range, cfg.large_cells
        )
        writer.add(
            "validation",
            simulate_ensemble(system, val_init, jr.fold_in(root, 5), cfg.val_steps),
        )

    return cache.get_or_build("truth", key_config, build, force=force)


def _lambda_tag(lam: float) -> str:
    """The key of ``lam`` in ``metrics.json``: "2.5"."""
    return f"{lam:g}"


def _model_tag(lam: float, seed: int) -> str:
    """Stage and array name of one SDE: "lam2p5_seed0" (no dots in directory names)."""
    return f"lam{_lambda_tag(lam).replace('.', 'p')}_seed{seed}"


# ------------------------------------------------------------------------------ driver
def run(
    cfg: PredatorPreyPipelineConfig,
    run_dir: str | Path,
    *,
    force: bool = False,
    progress: bool = True,
) -> RunResult:
    """Run (or resume) the predator-prey pipeline of ``cfg`` in ``run_dir``; write
    ``metrics.json`` (``mmd_mean`` per lambda), ``report.md`` and PNG plots."""
    from jmacro.metrics import mmd_per_time
    from jmacro.models import build_model, model_hyperparams
    from jmacro.report import write_predator_prey_report
    from jmacro.rollout import rollout
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
        save_model,
    )

    start = time.perf_counter()
    run_dir = Path(run_dir)
    claim_run_dir(run_dir, {"experiment": cfg.experiment, "large_cells": cfg.large_cells})
    cache = StageCache(run_dir)
    system = cfg.make_system()
    root = jr.key(cfg.seed)
    small, large, pairs = _data_stages(cfg, cache, system, root, force, progress)
    truth = _truth_stage(cfg, cache, system, root, force, progress)
    snapshots = large.dataset["snapshots"]

    ae_hyper = model_hyperparams(
        "field_autoencoder",
        num_cells=cfg.large_cells,
        patch_cells=cfg.patch_cells,
        num_species=2,
        closure_per_species=1,
        width_size=cfg.ae_width,
    )

    def train_ae(directory):
        rng = np.random.default_rng([cfg.seed, 7])
        data = np.asarray(snapshots)[rng.permutation(len(snapshots))]
        split = max(1, len(data) // 10)
        result = fit(
            build_model(ae_hyper, jr.fold_in(root, 6)),
            reconstruction_loss,
            data[split:],
            data[:split],
            jr.fold_in(root, 7),
            TrainConfig(
                learning_rate=cfg.ae_learning_rate,
                batch_size=cfg.ae_batch_size,
                num_epochs=cfg.ae_epochs,
                show_progress=progress,
            ),
            hyperparams=ae_hyper,
        )
        save_model(directory, result.model, ae_hyper)

    ae_stage = fit_stage(
        cache,
        "autoencoder",
        {
            "large": large.fingerprint,
            "model": ae_hyper,
            "epochs": cfg.ae_epochs,
            "lr": cfg.ae_learning_rate,
            "batch": cfg.ae_batch_size,
            "seed": cfg.seed,
        },
        train_ae,
        force,
    )
    ae = load_model(ae_stage.path)

    @functools.cache
    def encoded():
        validation = truth.dataset["validation"]  # (R, S+1, n, 2)
        shape = (-1, cfg.large_cells, 2)
        val_pairs = encode_full_pairs(
            ae,
            validation[:, :-1].reshape(shape),
            validation[:, 1:].reshape(shape),
            np.full(validation.shape[0] * (validation.shape[1] - 1), cfg.dt, np.float32),
        )
        normaliser = fit_normaliser(encode_configurations(ae, snapshots), val_pairs.dt)
        train_pairs = encode_partial_evolution_pairs(
            ae,
            snapshots,
            pairs.dataset["patch_index"],
            pairs.dataset["patch_after"],
            pairs.dataset["dt"],
            method="ours",
        )
        return (
            normalise_pairs(train_pairs, normaliser),
            normalise_pairs(val_pairs, normaliser),
            normaliser,
        )

    sde_hyper = model_hyperparams(
        "latent_sde", latent_dim=ae.latent_dim, diffusion_mode=cfg.sde_diffusion
    )
    sde_stages = {}
    for lam in cfg.lambdas:
        for seed in cfg.seeds:

            def train_sde(directory, lam=lam, seed=seed):
                train, val, normaliser = encoded()
                key = jr.fold_in(jr.key(seed), 100)
                train_latent_sde(
                    directory,
                    sde_hyper,
                    normaliser,
                    train,
                    val,
                    jr.fold_in(key, 0),
                    jr.fold_in(key, 1),
                    lam,
                    cfg.jitter,
                    cfg.sde_learning_rate,
                    cfg.sde_batch_size,
                    cfg.sde_epochs,
                    progress,
                )

            sde_stages[lam, seed] = fit_stage(
                cache,
                f"sde_{_model_tag(lam, seed)}",
                {
                    "autoencoder": ae_stage.fingerprint,
                    "pairs": pairs.fingerprint,
                    "truth": truth.fingerprint,
                    "model": sde_hyper,
                    "lambda": lam,
                    "epochs": cfg.sde_epochs,
                    "lr": cfg.sde_learning_rate,
                    "batch": cfg.sde_batch_size,
                    "jitter": cfg.jitter,
                    "seed": seed,
                },
                train_sde,
                force,
            )

    def evaluate(writer):
        normaliser = encoded()[2]
        test = truth.dataset["test"]  # (C, R, T+1, n, 2)
        num_cond, num_runs, num_times = test.shape[:3]
        z_true = encode_configurations(ae, test.reshape(-1, cfg.large_cells, 2)).reshape(
            num_cond, num_runs, num_times, -1
        )
        times = np.arange(num_times, dtype=np.float32) * cfg.save_every * cfg.dt
        writer.add("times", times)
        writer.add("truth", z_true)
        for (lam, seed), stage in sde_stages.items():
            sde = load_model(stage.path)
            pred, mmd = [], []
            for c in range(num_cond):
                p = rollout(
                    sde,
                    z_true[c, :, 0],
                    times,
                    jr.fold_in(jr.key(seed), 1000 + c),
                    num_substeps=cfg.rollout_substeps,
                )
                pred.append(np.asarray(p, np.float32))
                mmd.append(
                    np.asarray(
                        mmd_per_time(
                            normaliser.normalise(p), normaliser.normalise(jnp.asarray(z_true[c]))
                        )
                    )
                )
            tag = _model_tag(lam, seed)
            writer.add(f"pred_{tag}", np.stack(pred))
            writer.add(f"mmd_{tag}", np.stack(mmd).astype(np.float32))  # (C, T+1)

    evaluation = cache.get_or_build(
        "evaluation",
        {
            "sdes": {k.name: k.fingerprint for k in sde_stages.values()},
            "autoencoder": ae_stage.fingerprint,
            "truth": truth.fingerprint,
            "substeps": cfg.rollout_substeps,
        },
        evaluate,
        force=force,
    )
    ev = evaluation.dataset
    per_seed = {
        _lambda_tag(lam): {
            str(seed): float(np.mean(ev[f"mmd_{_model_tag(lam, seed)}"])) for seed in cfg.seeds
        }
        for lam in cfg.lambdas
    }
    mmd_mean = {lam: float(np.mean(list(v.values()))) for lam, v in per_seed.items()}
    # A rollout "diverges" if it leaves the box of +-10 truth ranges around the truth's centre.
    truth_z = np.asarray(ev["truth"])
    low, high = truth_z.min(axis=(0, 1, 2)), truth_z.max(axis=(0, 1, 2))
    centre, half = (low + high) / 2, np.maximum(high - low, 1e-12) * 10

    def diverged(pred):
        far = np.abs(np.nan_to_num(pred, nan=np.inf) - centre) > half
        return float(np.mean(far.any(axis=(2, 3))))

    diverged_fraction = {
        _lambda_tag(lam): {
            str(seed): diverged(np.asarray(ev[f"pred_{_model_tag(lam, seed)}"]))
            for seed in cfg.seeds
        }
        for lam in cfg.lambdas
    }
    stages = [small, large, pairs, truth, ae_stage, *sde_stages.values(), evaluation]
    metrics = {
        "experiment": cfg.experiment,
        "preset": cfg.preset,
        "wall_time_s": time.perf_counter() - start,
        "mmd_mean": mmd_mean,
        "mmd_std_over_seeds": {lam: float(np.std(list(v.values()))) for lam, v in per_seed.items()},
        "mmd_per_seed": per_seed,
        "diverged_fraction": diverged_fraction,
        "best_lambda": min(mmd_mean, key=mmd_mean.get),
        "num_patches": cfg.num_patches,
        "stages_built": [s.name for s in stages if s.built],
        "config": dataclasses.asdict(cfg),
    }
    (run_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
    write_predator_prey_report(run_dir, cfg, metrics, ev)
    return RunResult(run_dir, metrics, stages)
