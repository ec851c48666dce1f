"""The one experiment runner: the stage graph, written once for every experiment.

Shared stage: ``truth`` (test ensembles and validation runs of the large system). Per scale
``s`` of ``experiment.scales()``:

    s_small -> s_large -> s_pairs ---------------+
                  |                              |
                  +--> s_autoencoder --> s_sde_<variant> (one per ``sde_variants``)
                                                 |
    truth ---------------------------------------+--> s_evaluation

Cache keys are derived, never written by hand: a stage's key holds the sub-configs it reads
(``jmacro.pipelines.base``), the experiment's physics fields that affect it, the fingerprints
of its upstream stages, the master seed and the behaviour versions of the code it runs
(``jmacro._versions``). Stages live in a content-addressed store (``<store>/<stage>-<fp12>``,
by default ``stages/`` beside the run directory), shared by every run there: a run with one
changed parameter reuses every stage that does not depend on it and never overwrites another
run's stages. The run directory holds ``run.json`` (the whole config: a run directory belongs to
one config), ``metrics.json``, ``report.md`` and plots.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import shutil
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np

from jmacro._versions import VERSIONS
from jmacro.io.atomic import atomic_write_json
from jmacro.io.cache import (
    StageCache,
    canonical_config,
    config_fingerprint,
    describe_difference,
)
from jmacro.metrics import resample_trajectories
from jmacro.models import build_model, model_hyperparams
from jmacro.pipelines.base import AbstractExperiment, RunResult, Scale, SDEVariant
from jmacro.pipelines.report import write_report
from jmacro.pipelines.scoring import summarise
from jmacro.rollout import rollout
from jmacro.training import (
    TrainConfig,
    absolute_jitter,
    encode_configurations,
    encode_full_pairs,
    encode_partial_evolution_pairs,
    fit,
    fit_normaliser,
    increment_loss_fn,
    load_model,
    micro_batch_on_cpu,
    normalise_pairs,
    reconstruction_loss,
    save_model,
)

logger = logging.getLogger(__name__)

# The code whose behaviour each kind of stage depends on (keys of ``jmacro._versions``).
STAGE_CODE = {
    "small": ("systems", "simulate"),
    "large": ("systems", "scale"),
    "pairs": ("systems", "scale"),
    "truth": ("systems", "simulate"),
    "autoencoder": ("models", "training", "runner"),
    "sde": ("models", "training", "runner"),
    "evaluation": ("rollout", "metrics", "training", "runner"),
}
# Offsets folded into the master key (the spin pipelines' since the start); the models of a
# scale use fold_in(key(seed), scale.key_id): autoencoder 1, 2; SDEs under 3 (variant_key).
_SMALL, _LARGE, _PAIRS, _TRUTH = 0, 1, 2, 1000
# Wall time spent on a run directory so far, so ``wall_time_s`` adds up across resumes.
WALL_TIME_FILE = "wall_time.json"


@dataclasses.dataclass(frozen=True)
class StageRecord:
    """One stage of a run: its name in the graph, where it lives, and whether it was built."""

    name: str
    path: Path
    fingerprint: str
    built: bool
    dataset: Any = None
    seed: int = 0


class _Graph:
    """Builds or loads stages with keys derived from configs, upstream stages and code."""

    def __init__(self, experiment: AbstractExperiment, store: Path, force: bool):
        self.exp, self.cache, self.force = experiment, StageCache(store), force
        self.records: list[StageRecord] = []

    def _key(self, kind: str, config: dict, upstream: list[StageRecord]) -> dict:
        key = {
            "kind": kind,
            "code": {name: VERSIONS[name] for name in STAGE_CODE[kind]},
            "config": config,
            "upstream": {r.name: r.fingerprint for r in upstream},
            "seed": self.exp.seed,
        }
        if jax.config.jax_enable_x64:  # float64 models and data are other stages
            key["x64"] = True
        return key

    def stage(self, name, kind, config, upstream, build, *, directory=False) -> StageRecord:
        """Build or load stage ``name``. A directory stage's ``build(tmp_dir, checkpoints)``
        also gets a persistent folder for training checkpoints (``<folder>_partial``): an
        interrupted fit resumes from its last epoch; the folder goes once the stage is stored.
        """
        key = self._key(kind, config, upstream)
        folder = f"{name}-{config_fingerprint(key)[:12]}"
        if directory:
            partial = self.cache.path(f"{folder}_partial")
            if self.force:
                shutil.rmtree(partial, ignore_errors=True)

            def build_dir(tmp_dir, build=build):
                build(tmp_dir, partial)
                shutil.rmtree(partial, ignore_errors=True)

            result = self.cache.get_or_build_dir(folder, key, build_dir, force=self.force)
        else:
            result = self.cache.get_or_build(folder, key, build, force=self.force)
        record = StageRecord(
            name, result.path, result.fingerprint, result.built, result.dataset, self.exp.seed
        )
        self.records.append(record)
        return record


def default_run_dir(experiment: AbstractExperiment, root: str | Path = "runs") -> Path:
    """``runs/<name>-<preset>`` for a preset as it is, ``runs/<name>-<preset>-<hash8>`` for a
    preset with overrides, so that different configs never share a run directory."""
    base = f"{experiment.name}-{experiment.preset}"
    if (
        experiment.preset in experiment.presets
        and type(experiment).from_preset(experiment.preset) == experiment
    ):
        return Path(root) / base
    return Path(root) / f"{base}-{config_fingerprint(experiment)[:8]}"


def claim_run_dir(run_dir: Path, experiment: AbstractExperiment) -> None:
    """Create ``run_dir`` for ``experiment`` or check that it already belongs to this exact
    config. Raises ``ValueError`` (leaving the directory untouched) otherwise."""
    identity = {"experiment": experiment.name, "config": canonical_config(experiment)}
    marker = run_dir / "run.json"
    if run_dir.exists() and not run_dir.is_dir():
        raise ValueError(f"--out {run_dir} is a file, not a directory; choose another --out.")
    if marker.is_file():
        stored = json.loads(marker.read_text())
        if stored != identity:
            raise ValueError(
                f"{run_dir} holds a run of another config "
                f"({describe_difference(stored, identity)}); choose another --out directory "
                "(or omit --out: each config gets its own). The existing run is left untouched."
            )
        return
    if run_dir.exists() and any(run_dir.iterdir()):
        raise ValueError(
            f"{run_dir} exists, is not empty and is not a jmacro run directory; "
            "choose another --out directory."
        )
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_json(marker, identity)
    except OSError as error:
        raise ValueError(f"cannot write the run directory {run_dir}: {error}") from error


def run(
    experiment: AbstractExperiment,
    run_dir: str | Path | None = None,
    *,
    store: str | Path | None = None,
    force: bool = False,
    progress: bool = True,
) -> RunResult:
    """Run (or resume) ``experiment`` once per replicate seed (``num_seeds``: master seeds
    seed, seed + 1, ...); write ``metrics.json``, ``report.md`` and plots from all of them.

    Args:
        experiment: a registered experiment's config.
        run_dir: output directory (default ``default_run_dir``); refused if it holds a run of
            another config.
        store: the stage store (default ``<run_dir>/../stages``).
        force: rebuild every stage of this run.
        progress: progress bars.

    ``metrics["wall_time_s"]`` is the wall time of every call on this run directory since it
    was made (or since the last ``force``), interrupted ones included; ``wall_time_this_call_s``
    this call's alone.
    """
    start = time.perf_counter()
    run_dir = Path(run_dir) if run_dir is not None else default_run_dir(experiment)
    claim_run_dir(run_dir, experiment)
    store = Path(store) if store else run_dir.parent / "stages"
    earlier = 0.0 if force else _earlier_wall_time(run_dir)
    replicates, records = {}, []
    try:
        for seed in replicate_seeds(experiment):
            graph = _Graph(dataclasses.replace(experiment, seed=seed), store, force)
            if experiment.num_seeds > 1:
                logger.info("replicate with master seed %d", seed)
            system = graph.exp.system()
            truth = _truth(graph, system, progress)
            replicates[seed] = {
                scale.name: _run_scale(graph, system, scale, truth, progress).dataset
                for scale in experiment.scales()
            }
            records += graph.records
        metrics = summarise(experiment, replicates)
    finally:  # interrupted or not, this call's time counts towards the run's
        elapsed = time.perf_counter() - start
        atomic_write_json(run_dir / WALL_TIME_FILE, {"seconds": earlier + elapsed})
    metrics.update(
        wall_time_s=earlier + elapsed,
        wall_time_this_call_s=elapsed,
        stages_built=[f"seed{r.seed}/{r.name}" for r in records if r.built],
        stages={f"seed{r.seed}/{r.name}": str(r.path) for r in records},
        config=canonical_config(experiment),
    )
    atomic_write_json(run_dir / "metrics.json", metrics)
    write_report(run_dir, experiment, metrics, replicates)
    return RunResult(run_dir, metrics, records)


def _earlier_wall_time(run_dir: Path) -> float:
    """Seconds that earlier calls (interrupted or complete) spent on ``run_dir``'s run."""
    try:
        return float(json.loads((run_dir / WALL_TIME_FILE).read_text())["seconds"])
    except (OSError, ValueError, KeyError, TypeError):
        return 0.0


def replicate_seeds(experiment: AbstractExperiment) -> list[int]:
    """Master seeds of the independent replicates: ``seed, seed + 1, ..., seed + n - 1``."""
    return [experiment.seed + i for i in range(experiment.num_seeds)]


# ------------------------------------------------------------------------------ stages
def _truth(graph: _Graph, system, progress: bool) -> StageRecord:
    exp = graph.exp

    def build(writer):
        key = jr.fold_in(jr.key(exp.seed), _TRUTH)
        for name, array in exp.ground_truth(system, key, progress).items():
            writer.add(name, array)

    config = {"physics": exp.physics("all", "truth"), "truth": exp.truth}
    return graph.stage("truth", "truth", config, [], build)


def pick_snapshots(pool: np.ndarray, upsampling, seed: int) -> np.ndarray:
    """Small snapshots to upsample from ``pool (T, S+1, *state)``: every ``snapshot_every``-th
    of each trajectory, all in order or ``num_large`` drawn with replacement."""
    pool = pool[:, :: upsampling.snapshot_every]
    if upsampling.num_large is None:
        return np.asarray(pool).reshape(-1, *pool.shape[2:])
    rng = np.random.default_rng([seed, 1])
    rows = rng.integers(0, pool.shape[0], upsampling.num_large)
    cols = rng.integers(0, pool.shape[1], upsampling.num_large)
    order = np.lexsort((cols, rows))  # read a memory map in order
    picked = np.empty((upsampling.num_large, *pool.shape[2:]), pool.dtype)
    picked[order] = pool[rows[order], cols[order]]
    return picked


def _data(graph: _Graph, system, scale: Scale, progress: bool):
    exp, root = graph.exp, jr.key(graph.exp.seed)
    physics = exp.physics("all")

    def small_build(writer):
        for name, array in exp.small_data(
            system, scale, jr.fold_in(root, _SMALL), progress
        ).items():
            writer.add(name, array)

    small = graph.stage(
        f"{scale.name}_small",
        "small",
        {"physics": physics, "small": exp.small, "scale": scale},
        [],
        small_build,
    )

    def large_build(writer):
        picked = pick_snapshots(small.dataset["snapshots"], exp.upsampling, exp.seed)
        key = jr.fold_in(root, _LARGE)
        writer.add("snapshots", exp.upsample(system, scale, picked, key, progress))

    config = {"physics": physics, "upsampling": exp.upsampling, "scale": scale}
    large = graph.stage(f"{scale.name}_large", "large", config, [small], large_build)

    def pairs_build(writer):
        # block r of the pairs evolves an independent patch of every snapshot, in order
        snapshots, key = large.dataset["snapshots"], jr.fold_in(root, _PAIRS)
        keys = [key] + [jr.fold_in(key, 1_000_000 + r) for r in range(1, exp.pairs.per_snapshot)]
        blocks = [exp.partial_pairs(system, scale, snapshots, k, progress) for k in keys]
        for name in blocks[0]:
            writer.add(name, np.concatenate([block[name] for block in blocks]))

    config = {"physics": physics, "pairs": exp.pairs, "scale": scale}
    pairs = graph.stage(f"{scale.name}_pairs", "pairs", config, [large], pairs_build)
    return large, pairs


def _autoencoder(graph: _Graph, scale: Scale, large: StageRecord, progress: bool):
    exp, settings = graph.exp, graph.exp.autoencoder
    hyper = exp.autoencoder_hyperparams(scale)
    root = jr.fold_in(jr.key(exp.seed), scale.key_id)

    def build(directory, checkpoints):
        model = build_model(hyper, jr.fold_in(root, 1))
        if settings.closure_dim:
            snapshots = large.dataset["snapshots"]
            train, val = autoencoder_split(len(snapshots), settings.max_snapshots, exp.seed, scale)
            model = fit(
                model,
                reconstruction_loss,
                np.asarray(snapshots[train]),
                np.asarray(snapshots[val]),
                jr.fold_in(root, 2),
                TrainConfig(
                    learning_rate=settings.learning_rate,
                    batch_size=settings.batch_size,
                    num_epochs=settings.epochs,
                    show_progress=progress,
                    # same updates up to rounding, several times faster on CPU (issue 12)
                    micro_batch=micro_batch_on_cpu(8),
                ),
                hyperparams=hyper,
                checkpoint_dir=checkpoints,
            ).model
        save_model(directory, model, hyper)

    config = {"autoencoder": settings, "model": hyper}
    name = f"{scale.name}_autoencoder"
    return graph.stage(name, "autoencoder", config, [large], build, directory=True)


def autoencoder_split(num: int, max_snapshots: int | None, seed: int, scale: Scale):
    """Rows of the autoencoder's training and validation snapshots: a random subset of at most
    ``max_snapshots`` of the ``num`` large snapshots, a random tenth of it held out; each part
    sorted (contiguous reads from a memory map)."""
    count = min(max_snapshots or num, num)
    rows = np.random.default_rng([seed, scale.key_id]).choice(num, count, replace=False)
    split = max(1, count // 10)
    return np.sort(rows[split:]), np.sort(rows[:split])


def variant_key(exp: AbstractExperiment, scale: Scale, variant: SDEVariant):
    """The SDE's key: ``fold_in(fold_in(scale_root, 3), variant.seed)``, so variant seeds never
    share a stream with another master seed (``key(seed + variant.seed)`` once did: master
    seed 1 / variant 0 was master seed 0 / variant 1). Initialisation, training and the
    rollout of condition c fold in 0, 1 and 10 + c."""
    return jr.fold_in(jr.fold_in(jr.fold_in(jr.key(exp.seed), scale.key_id), 3), variant.seed)


def _train_sde(directory, checkpoints, *, exp, scale, variant, hyper, encoded, progress) -> None:
    train, val, normaliser = encoded(variant.method)
    key = variant_key(exp, scale, variant)
    sde = build_model(hyper, jr.fold_in(key, 0)).with_normaliser(normaliser)
    jitter = absolute_jitter(exp.sde.jitter, train.z1 - train.z0)
    result = fit(
        sde,
        increment_loss_fn(variant.covariance_scale, jitter),
        train,
        val,
        jr.fold_in(key, 1),
        TrainConfig(
            learning_rate=exp.sde.learning_rate,
            batch_size=exp.sde.batch_size,
            num_epochs=exp.sde.epochs,
            show_progress=progress,
            device_epochs=True,
        ),
        val_loss_fn=increment_loss_fn(1.0, jitter),
        hyperparams=hyper,
        checkpoint_dir=checkpoints,
    )
    save_model(directory, result.model, hyper)
    history = [r._asdict() for r in result.history]
    (directory / "history.json").write_text(json.dumps(history))


def _run_scale(graph: _Graph, system, scale: Scale, truth: StageRecord, progress: bool):
    exp = graph.exp
    logger.info("%s: n_s = %d, K = %d", scale.name, scale.small_size, scale.num_patches)
    large, pairs = _data(graph, system, scale, progress)
    ae_stage = _autoencoder(graph, scale, large, progress)
    ae = load_model(ae_stage.path)

    @functools.cache
    def normalised_validation():
        validation = truth.dataset["validation"]  # (R, S+1, *state)
        state, steps = validation.shape[2:], validation.shape[1] - 1
        condition = _optional(truth.dataset, "validation_condition")  # (R, k)
        val = encode_full_pairs(
            ae,
            validation[:, :-1].reshape(-1, *state),
            validation[:, 1:].reshape(-1, *state),
            _validation_dt(truth.dataset, exp.step_duration),
            condition=None if condition is None else np.repeat(condition, steps, axis=0),
        )
        latents = np.asarray(encode_configurations(ae, large.dataset["snapshots"]))
        time_scale = exp.model_time_scale(np.asarray(val.dt), val.condition)
        normaliser = fit_normaliser(latents, np.full(1, time_scale), exp.sde.normalisation)
        return normalise_pairs(val, normaliser), normaliser, val, latents

    @functools.cache
    def encoded(method):
        val, normaliser = normalised_validation()[:2]
        p, snapshots = pairs.dataset, large.dataset["snapshots"]
        condition, n = _optional(p, "condition"), len(snapshots)
        blocks = [
            encode_partial_evolution_pairs(
                ae,
                snapshots,
                p["patch_index"][r * n : (r + 1) * n],
                p["patch_after"][r * n : (r + 1) * n],
                p["dt"][r * n : (r + 1) * n],
                method=method,
                condition=None if condition is None else condition[r * n : (r + 1) * n],
            )
            for r in range(exp.pairs.per_snapshot)
        ]
        train = jax.tree.map(lambda *parts: np.concatenate(parts), *blocks)
        return normalise_pairs(train, normaliser), val, normaliser

    condition = _optional(pairs.dataset, "condition")
    hyper = model_hyperparams(
        "latent_sde",
        latent_dim=ae.latent_dim,
        diffusion_mode=exp.sde.diffusion,
        **({} if condition is None else {"condition_dim": condition.shape[1]}),
        **exp.sde_hyperparams(scale),
    )
    sdes = {}
    for variant in exp.sde_variants(scale):
        build = functools.partial(
            _train_sde,
            exp=exp,
            scale=scale,
            variant=variant,
            hyper=hyper,
            encoded=encoded,
            progress=progress,
        )
        config = {"sde": exp.sde, "variant": variant, "model": hyper}
        name = f"{scale.name}_sde_{variant.name}"
        sdes[variant] = graph.stage(
            name, "sde", config, [ae_stage, pairs, truth], build, directory=True
        )
    pair_dt = float(np.median(np.asarray(pairs.dataset["dt"])))
    return _evaluate(graph, scale, ae_stage, ae, truth, sdes, normalised_validation, pair_dt)


def _evaluate(graph, scale, ae_stage, ae, truth, sdes, validation_fn, pair_dt) -> StageRecord:
    """Rollouts of every SDE from the encoded initial test states, stored with the encoded
    truth (scoring is ``jmacro.pipelines.scoring``'s, from these arrays alone):

    - ``times``, ``truth (C, R, T+1, d)``, ``pred_<variant>``: jmacro's protocol, the fixed
      time grid of the test runs, ``evaluation.rollout_substeps`` Euler steps per interval;
      ``times`` is ``(T+1,)``, or ``(C, T+1)`` when the truth has one grid per condition
      (``test_times``, e.g. one per temperature of a thermally activated process);
    - if the truth has event-stepped ``reference_test`` runs: ``ref_times`` (the grid
      k * mean step, k < S), ``ref_truth`` (each run's latents interpolated onto it) and
      ``ref_pred_<variant>`` (``reference_substeps`` Euler steps per interval): the
      reference's protocol;
    - ``norm_offset``, ``norm_scale``: the normaliser the SDEs see;
    - ``val_z0``, ``val_dz``, ``val_dt`` (the full-system validation pairs, physical units),
      ``val_drift_<variant>`` and ``val_cov_<variant>`` (the learned drift and diagonal
      covariance rate at ``val_z0``): the learned dynamics against the true increments;
    - for an experiment with ``exact_dynamics``: ``oracle_grid`` (latents over the data's
      range) and ``oracle_drift_<variant>``, ``oracle_cov_<variant>`` there.
    """
    exp = graph.exp

    def build(writer):
        _, normaliser, val, latents = validation_fn()
        writer.add("norm_offset", np.asarray(normaliser.offset))
        writer.add("norm_scale", np.asarray(normaliser.scale))
        test = truth.dataset["test"]  # (C, R, T+1, *state)
        z_true = _encode_runs(ae, test)
        if "test_times" in truth.dataset:  # one grid per condition (C, T+1)
            times = np.asarray(truth.dataset["test_times"], np.float32)
        else:
            times = np.arange(test.shape[2], dtype=np.float32) * exp.truth.save_every
            times *= exp.step_duration
        writer.add("times", times)
        writer.add("truth", z_true)
        reference = _reference_truth(ae, truth.dataset)
        if reference is not None:
            writer.add("ref_times", reference[0])
            writer.add("ref_truth", reference[1])
        conditions = _optional(truth.dataset, "test_condition")  # (C, k)
        z0 = np.asarray(val.z0, np.float32)
        writer.add("val_z0", z0)
        writer.add("val_dz", np.asarray(val.z1, np.float32) - z0)
        writer.add("val_dt", np.asarray(val.dt, np.float32))
        grid = _oracle_grid(exp, latents)
        if grid is not None:
            writer.add("oracle_grid", grid)
        for variant, stage in sdes.items():
            sde, key = load_model(stage.path), variant_key(exp, scale, variant)
            for name, points, c in (("val", z0, val.condition), ("oracle", grid, None)):
                if points is not None:
                    drift, cov = _learned_dynamics(sde, points, c)
                    writer.add(f"{name}_drift_{variant.name}", drift)
                    writer.add(f"{name}_cov_{variant.name}", cov)

            def predict(z0, grid, offset, substeps, sde=sde, key=key):
                return np.stack([
                    np.asarray(
                        rollout(
                            sde,
                            z0[c],
                            grid[c] if grid.ndim == 2 else grid,
                            jr.fold_in(key, offset + c),
                            num_substeps=substeps,
                            condition=None if conditions is None else conditions[c],
                        ),
                        np.float32,
                    )
                    for c in range(len(z0))
                ])  # fmt: skip

            substeps = exp.evaluation.rollout_substeps
            writer.add(f"pred_{variant.name}", predict(z_true[:, :, 0], times, 10, substeps))
            if reference is not None:
                ref_times, ref_truth = reference
                substeps = reference_substeps(exp.evaluation, ref_times, pair_dt)
                ref_pred = predict(ref_truth[:, :, 0], ref_times, 10_000, substeps)
                writer.add(f"ref_pred_{variant.name}", ref_pred)

    config = {"evaluation": exp.evaluation, "variants": list(sdes)}
    upstream = [ae_stage, truth, *sdes.values()]
    return graph.stage(f"{scale.name}_evaluation", "evaluation", config, upstream, build)


def _learned_dynamics(sde, z, condition=None) -> tuple[np.ndarray, np.ndarray]:
    """The learned drift ``(n, d)`` and diagonal covariance rate ``(n, d)`` at latents
    ``z (n, d)`` (physical units, per unit time), at conditions ``(n, k)`` or None."""
    z = jnp.asarray(z, jnp.float32)
    if condition is None:
        drift = jax.vmap(sde.physical_drift)(z)
        cov = jax.vmap(sde.physical_covariance_rate)(z)
    else:
        c = jnp.asarray(condition, jnp.float32)
        drift = jax.vmap(sde.physical_drift)(z, c)
        cov = jax.vmap(sde.physical_covariance_rate)(z, c)
    return np.asarray(drift, np.float32), np.asarray(jnp.diagonal(cov, axis1=1, axis2=2))


def _oracle_grid(exp, latents: np.ndarray) -> np.ndarray | None:
    """33 one-dimensional latents over the data's range (1st to 99th percentile of the large
    snapshots') within |z| <= 0.8, for an experiment with ``exact_dynamics``; else None."""
    if latents.shape[1] != 1 or exp.exact_dynamics(latents[:1]) is None:
        return None
    low, high = np.percentile(latents[:, 0], [1, 99])
    low, high = max(low, -0.8), min(high, 0.8)
    return np.linspace(low, high, 33, dtype=np.float32)[:, None]


def _validation_dt(truth, step_duration: float) -> np.ndarray:
    """Per-pair durations ``(R * S,)`` of the validation runs: from their ``validation_times
    (R, S+1)`` when given (random n-flip steps, or the pairs' duration), else
    ``step_duration``."""
    if "validation_times" in truth:
        return np.diff(np.asarray(truth["validation_times"], np.float32), axis=1).reshape(-1)
    runs, steps = truth["validation"].shape[:2]
    return np.full(runs * (steps - 1), step_duration, np.float32)


def reference_substeps(evaluation, grid: np.ndarray, pair_dt: float) -> int:
    """Euler steps per interval of the reference protocol's grid: ``reference_substeps`` or,
    if None, enough that no step is longer than the training pairs' (median) duration. The
    reference takes one step per interval because its pairs last one such interval; a model
    trained on 0.5-sweep pairs and stepped by Euler over 6 sweeps blows up."""
    if evaluation.reference_substeps is not None:
        return evaluation.reference_substeps
    return max(1, int(np.ceil(float(grid[1] - grid[0]) / pair_dt - 1e-6)))


def _encode_runs(ae, runs) -> np.ndarray:
    """Latents ``(C, R, T, d)`` of the configurations ``runs (C, R, T, *state)``."""
    z = encode_configurations(ae, runs.reshape(-1, *runs.shape[3:]))
    return np.asarray(z, np.float32).reshape(*runs.shape[:3], -1)


def _reference_truth(ae, truth) -> tuple[np.ndarray, np.ndarray] | None:
    """The reference's test protocol (REFERENCE.md 3.1): event-stepped runs
    ``reference_test (C, R, S+1, *state)`` with their own random ``reference_times``,
    interpolated linearly onto the common grid t_k = k * mean_dt, k = 0 .. S - 1, where
    mean_dt is the mean step of these runs (the reference takes its validation runs' mean
    n-flip step: the same dynamics from other initial states). None without such runs."""
    if "reference_test" not in truth:
        return None
    times = np.asarray(truth["reference_times"], np.float64)  # (C, R, S+1)
    steps = times.shape[-1] - 1
    mean_dt = float((times[..., -1] - times[..., 0]).mean() / steps)
    grid = (np.arange(steps) * mean_dt).astype(np.float32)
    z = _encode_runs(ae, truth["reference_test"])
    flat_t = times.reshape(-1, steps + 1).astype(np.float32)
    flat_z = z.reshape(-1, steps + 1, z.shape[-1])
    resampled = np.asarray(resample_trajectories(flat_t, flat_z, grid), np.float32)
    return grid, resampled.reshape(*z.shape[:2], steps, z.shape[-1])


def _optional(dataset, name: str) -> np.ndarray | None:
    """``dataset[name]`` as a host array, or None: a condition (e.g. temperature) is optional;
    an experiment that has one returns it from its hooks as ``condition`` (pairs),
    ``validation_condition`` and ``test_condition`` (truth), each ``(rows, k)``."""
    return np.asarray(dataset[name], np.float32) if name in dataset else None
