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
import time
from pathlib import Path
from typing import Any

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
from jmacro.metrics import diverged_fraction
from jmacro.models import build_model, model_hyperparams
from jmacro.pipelines.base import AbstractExperiment, RunResult, Scale, SDEVariant
from jmacro.pipelines.report import write_report
from jmacro.rollout import rollout
from jmacro.training import (
    TrainConfig,
    encode_configurations,
    encode_full_pairs,
    encode_partial_evolution_pairs,
    fit,
    fit_normaliser,
    increment_loss_fn,
    load_model,
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


@dataclasses.dataclass(frozen=True)
class StageRecord:
    """One stage of a run: its name in the graph, where it lives, and whether it was built."""

    name: str
    path: Path
    fingerprint: str
    built: bool
    dataset: Any = None


class _Graph:
    """Builds or loads stages with keys derived from configs, upstream stages and code."""

    def __init__(self, experiment: AbstractExperiment, store: Path, force: bool):
        self.exp, self.cache, self.force = experiment, StageCache(store), force
        self.records: list[StageRecord] = []

    def _key(self, kind: str, config: dict, upstream: list[StageRecord]) -> dict:
        return {
            "kind": kind,
            "code": {name: VERSIONS[name] for name in STAGE_CODE[kind]},
            "config": config,
            "upstream": {r.name: r.fingerprint for r in upstream},
            "seed": self.exp.seed,
        }

    def stage(self, name, kind, config, upstream, build, *, directory=False) -> StageRecord:
        key = self._key(kind, config, upstream)
        folder = f"{name}-{config_fingerprint(key)[:12]}"
        get = self.cache.get_or_build_dir if directory else self.cache.get_or_build
        result = get(folder, key, build, force=self.force)
        record = StageRecord(name, result.path, result.fingerprint, result.built, result.dataset)
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
    """Run (or resume) ``experiment``; write ``metrics.json``, ``report.md`` and plots.

    Args:
        experiment: a registered experiment's config.
        run_dir: output directory (default ``default_run_dir``); refused if it holds a run of
            another config.
        store: the stage store (default ``<run_dir>/../stages``).
        force: rebuild every stage of this run.
        progress: progress bars.
    """
    start = time.perf_counter()
    run_dir = Path(run_dir) if run_dir is not None else default_run_dir(experiment)
    claim_run_dir(run_dir, experiment)
    graph = _Graph(experiment, Path(store) if store else run_dir.parent / "stages", force)
    system = experiment.system()
    truth = _truth(graph, system, progress)
    evaluations = {
        scale.name: _run_scale(graph, system, scale, truth, progress)
        for scale in experiment.scales()
    }
    metrics = _metrics(experiment, evaluations, graph.records, time.perf_counter() - start)
    atomic_write_json(run_dir / "metrics.json", metrics)
    write_report(run_dir, experiment, metrics, evaluations)
    return RunResult(run_dir, metrics, graph.records)


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
        snapshots, key = large.dataset["snapshots"], jr.fold_in(root, _PAIRS)
        for name, array in exp.partial_pairs(system, scale, snapshots, key, progress).items():
            writer.add(name, array)

    config = {"physics": physics, "pairs": exp.pairs, "scale": scale}
    pairs = graph.stage(f"{scale.name}_pairs", "pairs", config, [large], pairs_build)
    return large, pairs


def _autoencoder(graph: _Graph, scale: Scale, large: StageRecord, progress: bool):
    exp, settings = graph.exp, graph.exp.autoencoder
    hyper = exp.autoencoder_hyperparams(scale)
    root = jr.fold_in(jr.key(exp.seed), scale.key_id)

    def build(directory):
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
                ),
                hyperparams=hyper,
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


def _train_sde(directory: Path, exp, scale, variant, hyper, ae, encoded, progress) -> None:
    train, val, normaliser = encoded(variant.method)
    key = variant_key(exp, scale, variant)
    sde = build_model(hyper, jr.fold_in(key, 0)).with_normaliser(normaliser)
    result = fit(
        sde,
        increment_loss_fn(variant.covariance_scale, exp.sde.jitter),
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
        val_loss_fn=increment_loss_fn(1.0, exp.sde.jitter),
        hyperparams=hyper,
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
            np.full(validation.shape[0] * steps, exp.step_duration, np.float32),
            condition=None if condition is None else np.repeat(condition, steps, axis=0),
        )
        latents = encode_configurations(ae, large.dataset["snapshots"])
        normaliser = fit_normaliser(latents, val.dt, exp.sde.normalisation)
        return normalise_pairs(val, normaliser), normaliser

    @functools.cache
    def encoded(method):
        val, normaliser = normalised_validation()
        p = pairs.dataset
        train = encode_partial_evolution_pairs(
            ae,
            large.dataset["snapshots"],
            p["patch_index"],
            p["patch_after"],
            p["dt"],
            method=method,
            condition=_optional(p, "condition"),
        )
        return normalise_pairs(train, normaliser), val, normaliser

    condition = _optional(pairs.dataset, "condition")
    hyper = model_hyperparams(
        "latent_sde",
        latent_dim=ae.latent_dim,
        diffusion_mode=exp.sde.diffusion,
        **({} if condition is None else {"condition_dim": condition.shape[1]}),
    )
    sdes = {}
    for variant in exp.sde_variants(scale):
        build = functools.partial(
            _train_sde,
            exp=exp,
            scale=scale,
            variant=variant,
            hyper=hyper,
            ae=ae,
            encoded=encoded,
            progress=progress,
        )
        config = {"sde": exp.sde, "variant": variant, "model": hyper}
        name = f"{scale.name}_sde_{variant.name}"
        sdes[variant] = graph.stage(
            name, "sde", config, [ae_stage, pairs, truth], build, directory=True
        )
    return _evaluate(graph, scale, ae_stage, ae, truth, sdes, lambda: normalised_validation()[1])


def _evaluate(graph, scale, ae_stage, ae, truth, sdes, normaliser_fn) -> StageRecord:
    exp = graph.exp

    def build(writer):
        normaliser = normaliser_fn()
        test = truth.dataset["test"]  # (C, R, T+1, *state)
        num_cond, num_runs, num_times = test.shape[:3]
        z_true = encode_configurations(ae, test.reshape(-1, *test.shape[3:]))
        z_true = np.asarray(z_true).reshape(num_cond, num_runs, num_times, -1)
        times = np.arange(num_times, dtype=np.float32) * exp.truth.save_every * exp.step_duration
        writer.add("times", times)
        writer.add("truth", z_true)
        conditions = _optional(truth.dataset, "test_condition")  # (C, k)
        for variant, stage in sdes.items():
            sde, key = load_model(stage.path), variant_key(exp, scale, variant)
            pred, score = [], []
            for c in range(num_cond):
                p = rollout(
                    sde,
                    z_true[c, :, 0],
                    times,
                    jr.fold_in(key, 10 + c),
                    num_substeps=exp.evaluation.rollout_substeps,
                    condition=None if conditions is None else conditions[c],
                )
                pred.append(np.asarray(p, np.float32))
                true_c = normaliser.normalise(jnp.asarray(z_true[c]))
                score.append(np.asarray(exp.score(normaliser.normalise(p), true_c)))
            writer.add(f"pred_{variant.name}", np.stack(pred))
            writer.add(f"score_{variant.name}", np.stack(score).astype(np.float32))

    config = {"evaluation": exp.evaluation, "variants": list(sdes)}
    upstream = [ae_stage, truth, *sdes.values()]
    return graph.stage(f"{scale.name}_evaluation", "evaluation", config, upstream, build)


def _optional(dataset, name: str) -> np.ndarray | None:
    """``dataset[name]`` as a host array, or None: a condition (e.g. temperature) is optional;
    an experiment that has one returns it from its hooks as ``condition`` (pairs),
    ``validation_condition`` and ``test_condition`` (truth), each ``(rows, k)``."""
    return np.asarray(dataset[name], np.float32) if name in dataset else None


# ------------------------------------------------------------------------------ metrics
def _metrics(exp: AbstractExperiment, evaluations: dict, records, wall_time: float) -> dict:
    """``results[scale][variant]`` (score, per condition, diverged fraction) and
    ``summary[scale][group]`` (mean over seeds, standard error over seeds when > 1)."""
    results, summary = {}, {}
    for scale in exp.scales():
        ev = evaluations[scale.name].dataset
        truth = np.asarray(ev["truth"])
        results[scale.name], groups = {}, {}
        for variant in exp.sde_variants(scale):
            per_condition = np.asarray(ev[f"score_{variant.name}"])
            score = float(np.mean(per_condition))
            results[scale.name][variant.name] = {
                "group": variant.group,
                "seed": variant.seed,
                "covariance_scale": variant.covariance_scale,
                "score": score,
                "per_condition": dict(
                    zip(
                        exp.conditions(),
                        map(float, per_condition.reshape(len(per_condition), -1).mean(1)),
                        strict=True,
                    )
                ),
                "diverged_fraction": diverged_fraction(
                    np.asarray(ev[f"pred_{variant.name}"]), truth
                ),
            }
            groups.setdefault(variant.group, []).append(score)
        summary[scale.name] = {group: _mean_se(scores) for group, scores in groups.items()}
    return {
        "experiment": exp.name,
        "preset": exp.preset,
        "metric": exp.metric,
        "wall_time_s": wall_time,
        "summary": summary,
        "results": results,
        "stages_built": [r.name for r in records if r.built],
        "stages": {r.name: str(r.path) for r in records},
        "config": canonical_config(exp),
    }


def _mean_se(values: list[float]) -> dict:
    values = np.asarray(values, np.float64)
    se = float(values.std(ddof=1) / np.sqrt(len(values))) if len(values) > 1 else None
    return {"mean": float(values.mean()), "se_over_seeds": se, "num_seeds": len(values)}
