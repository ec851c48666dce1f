"""The experiment abstraction: shared sub-configs, the questions an experiment answers, results.

An experiment is a final frozen dataclass (``AbstractExperiment`` subclass) holding

- the shared sub-configs below (small data, upsampling, pairs, autoencoder, SDE training,
  ground truth, evaluation), each documented once here;
- its own physics fields (temperature, lattice size, ...), each with a docstring;
- a few hooks (``system``, ``scales``, ``small_data``, ``upsample``, ``pairs``, ``truth``,
  ``autoencoder``, ``sde_variants``, ``score``, ``reference``) that return small, JSON-able
  or array results.

The runner (``jmacro.pipelines.runner``) owns the stage graph, the cache keys, the file names
and the report; an experiment never builds a key by hand. Which stages a field of the
experiment affects is declared once, on the field, with ``affects``:

- ``"all"`` (default): physics; every stage that simulates depends on it;
- ``"truth"``: only the ground truth (e.g. the test initial magnetisations);
- ``"none"``: it selects *which* stages exist (patch sizes, the lambda sweep); the stages' own
  keys hold the scale or variant, so nothing else depends on it.
"""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

import numpy as np
import tyro

from jmacro._checks import check_positive_int

AFFECTS = ("all", "truth", "none")


def param(default: Any, *, affects: Literal["all", "truth", "none"] = "all") -> Any:
    """A physics field of an experiment with the stages it ``affects`` (module docstring)."""
    if affects not in AFFECTS:
        raise ValueError(f"affects must be one of {AFFECTS}, got {affects!r}.")
    return dataclasses.field(default=default, metadata={"affects": affects})


def _positive(cfg: Any, *names: str) -> None:
    for name in names:
        check_positive_int(getattr(cfg, name), name)


# ------------------------------------------------------------------------------ sub-configs
@dataclasses.dataclass(frozen=True)
class SmallData:
    """Small-system simulations, the only microscopic data the method learns from."""

    num_trajectories: int = 1000
    """Independent small-system trajectories (reference: 1000 for spins, 50 for the SPDE)."""
    num_steps: int = 200
    """Steps per trajectory; a step lasts the experiment's step duration."""

    def __post_init__(self):
        _positive(self, "num_trajectories", "num_steps")


@dataclasses.dataclass(frozen=True)
class Upsampling:
    """Hierarchical upsampling of small snapshots to large ones (Algorithm 1)."""

    num_large: int | None = 100_000
    """Large snapshots drawn with replacement from the small pool; None takes every pool
    snapshot once, in order."""
    snapshot_every: int = 1
    """Keep every this-many-th snapshot of each small trajectory in the pool."""
    num_random: int = 100_000
    """Random-magnetisation configurations appended (spins; reference: as many as
    num_large)."""
    relax: bool = True
    """Run LocalRelax after each upsampling iteration (spins)."""
    window: int = 16
    """LocalRelax window side (sites)."""
    stride: int = 8
    """LocalRelax window stride (sites)."""
    schedule: Literal["sequential", "parallel"] = "sequential"
    """Visit windows one after another (reference) or in non-overlapping parallel waves."""
    relax_time: float | None = 2.0
    """Continuous time (sweeps) of each window visit; None relaxes by w^2 flips (reference).
    Flip-count relaxation samples the jump chain, tilted towards disordered states, which
    biases the learned drift (domain-wall density drift -0.012 per sweep at T = 2.5)."""
    num_unrelaxed: int = 10_000
    """I.i.d. spin configurations (mean magnetisation uniform in [-1, 1]) appended to the large
    snapshots without relaxation (spins), so the training data cover the i.i.d. initial states
    of the test ensembles (relaxed snapshots never reach their domain-wall density)."""
    interpolation: Literal["linear", "cubic"] = "linear"
    """Interpolation of fields onto the finer grid (fields; reference: linear)."""

    def __post_init__(self):
        _positive(self, "snapshot_every", "window", "stride")
        if self.num_large is not None:
            _positive(self, "num_large")
        for name in ("num_random", "num_unrelaxed"):
            if getattr(self, name) < 0:
                raise ValueError(f"upsampling.{name} must be >= 0, got {getattr(self, name)}.")


@dataclasses.dataclass(frozen=True)
class Pairs:
    """Partial evolution of one patch of every large snapshot (Algorithm 2)."""

    boundary: Literal["periodic", "halo", "mean_field", "ghosts"] = "periodic"
    """What the evolving patch sees outside itself: an isolated periodic patch (reference for
    Ising), frozen real neighbours (halo), the whole system's magnetisation (mean field,
    Curie-Weiss) or frozen ghost cells (fields)."""
    num_steps: int = 1
    """Steps (of the experiment's step duration) per partial evolution."""
    duration: float | None = None
    """Time of one partial evolution (spins; time units), overriding ``num_steps`` steps.
    Theorem 1 is an O(dt) statement: shorter pairs are less biased (docs/pair_bias.md)."""
    per_snapshot: int = 1
    """Partial evolutions per large snapshot, each of an independently drawn patch with its
    own key: snapshots are the expensive part, and two patch increments of one snapshot are
    nearly uncorrelated (|corr| < 0.01 at short durations, docs/pair_bias.md). Patches
    are drawn independently, so one may be evolved twice (with independent noise)."""

    def __post_init__(self):
        _positive(self, "num_steps", "per_snapshot")
        if self.duration is not None and not 0 < self.duration < float("inf"):
            raise ValueError(f"pairs.duration must be finite and > 0, got {self.duration}.")


@dataclasses.dataclass(frozen=True)
class AutoencoderTraining:
    """The patch-additive closure autoencoder and its training (reconstruction loss)."""

    closure_dim: int = 2
    """Learned closure variables; 0 keeps only the known observables (no training)."""
    width: int = 32
    """Base channels of the convolutional encoder (spins) or hidden width of the MLPs."""
    epochs: int = 10
    """Training epochs."""
    learning_rate: float = 2e-4
    """AdamW learning rate."""
    batch_size: int = 512
    """Minibatch size."""
    max_snapshots: int | None = 100_000
    """Training snapshots (a random subset of the large ones, a tenth held out); None: all."""

    def __post_init__(self):
        _positive(self, "width", "epochs", "batch_size")
        if self.closure_dim < 0:
            raise ValueError(f"closure_dim must be >= 0, got {self.closure_dim}.")
        if self.max_snapshots is not None:
            _positive(self, "max_snapshots")


@dataclasses.dataclass(frozen=True)
class SDETraining:
    """The latent neural SDE and its K-scaled likelihood training."""

    diffusion: Literal["full", "diagonal", "constant_diagonal", "constant"] = "full"
    """Diffusion parametrisation: a full matrix from an MLP, a diagonal MLP, a learned
    constant diagonal, or a learned constant matrix."""
    epochs: int = 100
    """Training epochs; the model with the best validation loss is kept."""
    learning_rate: float = 1e-3
    """AdamW learning rate (halved on plateaus)."""
    batch_size: int = 1024
    """Minibatch size."""
    jitter: float = 1e-2
    """eps of the covariance C = lambda Sigma Sigma^T dt + eps I RELATIVE to the data:
    eps = jitter * min_k Var(dz_k) over the normalised training increments
    (``jmacro.training.absolute_jitter``), so it never absorbs more than this fraction of any
    latent's noise."""
    normalisation: Literal["minmax", "standard"] = "minmax"
    """Latent normalisation the networks see (and the coordinates of the test metric)."""

    def __post_init__(self):
        _positive(self, "epochs", "batch_size")
        if not 0 < self.learning_rate < float("inf"):
            raise ValueError(f"sde.learning_rate must be finite and > 0, got {self.learning_rate}.")
        if not 0 <= self.jitter < 1:
            raise ValueError(f"sde.jitter must be in [0, 1) (relative), got {self.jitter}.")


@dataclasses.dataclass(frozen=True)
class GroundTruth:
    """Large-system simulations: test ensembles and validation runs."""

    num_test_runs: int = 20
    """Independent large-system runs per test condition."""
    test_steps: int = 500
    """Steps of each test run (a step lasts the experiment's step duration)."""
    save_every: int = 1
    """Keep every this-many-th test step (the output grid of the rollouts too)."""
    num_val_runs: int = 20
    """Validation runs (full-system pairs, lambda = 1, for model selection)."""
    val_steps: int = 200
    """Steps of each validation run."""
    reference_steps: int = 500
    """Event steps (n elementary events each, random durations) of the extra test runs scored
    with the reference's protocol (spins; REFERENCE.md 3.1: 500); 0: no such runs."""

    def __post_init__(self):
        _positive(self, "num_test_runs", "test_steps", "save_every", "num_val_runs", "val_steps")
        if self.reference_steps < 0 or self.reference_steps == 1:
            raise ValueError(
                f"truth.reference_steps must be 0 or >= 2, got {self.reference_steps}."
            )
        if self.test_steps % self.save_every:
            raise ValueError(
                f"save_every = {self.save_every} must divide test_steps = {self.test_steps}."
            )


@dataclasses.dataclass(frozen=True)
class Evaluation:
    """Rollouts of the learned SDEs from the encoded initial test states."""

    rollout_substeps: int = 1
    """Euler-Maruyama steps of the learned SDE per output interval."""
    reference_substeps: int | None = None
    """Euler steps per interval of the reference protocol's grid (its mean event step); None:
    enough that no step exceeds the training pairs' duration (the reference: 1, its pairs
    lasting one interval)."""

    def __post_init__(self):
        _positive(self, "rollout_substeps")
        if self.reference_substeps is not None:
            _positive(self, "reference_substeps")


SUB_CONFIGS = ("small", "upsampling", "pairs", "autoencoder", "sde", "truth", "evaluation")


# ------------------------------------------------------------------------------ hook results
@dataclasses.dataclass(frozen=True)
class Scale:
    """One size the method is run at: a patch size (error vs n_s) or a large size (FSS).

    Attributes:
        name: prefix of the scale's stages and key of its results, e.g. ``"ns64"``.
        small_size: side (spins) or cells (fields) of the small system and of a patch.
        num_patches: K, patches tiling the large system.
        label: the number plotted on the x axis (e.g. n_s).
        key_id: folded into the master key for this scale's models (keeps seeds distinct).
    """

    name: str
    small_size: int
    num_patches: int
    label: float
    key_id: int


@dataclasses.dataclass(frozen=True)
class SDEVariant:
    """One latent SDE trained per scale.

    Attributes:
        name: stage suffix and result key, e.g. ``"ours"`` or ``"lam2p5_seed0"``.
        group: what the report compares (``"ours"``, ``"baseline"``, ``"2.5"``); seeds of a
            group are averaged, with their standard error.
        method: ``"ours"`` (z + patch increment), ``"baseline"`` (the patch as the system,
            from the large latent) or ``"patch"`` (the patch alone, both ends its own latent:
            the small system's SDE; ``jmacro.training.pairs``).
        covariance_scale: lambda of the likelihood loss.
        seed: offset of the master seed for this model's initialisation, training and rollout.
    """

    name: str
    group: str
    method: Literal["ours", "baseline", "patch"]
    covariance_scale: float
    seed: int = 0


def default_variants(scale: Scale) -> tuple[SDEVariant, ...]:
    """Ours with Theorem 1's lambda = K, and the baseline with lambda = 1."""
    return (
        SDEVariant("ours", "ours", "ours", float(scale.num_patches)),
        SDEVariant("baseline", "baseline", "baseline", 1.0),
    )


def lambda_variants(lambdas, seeds) -> tuple[SDEVariant, ...]:
    """ "Ours" pairs for every lambda x seed: names like ``lam2p5_seed0`` (no dots)."""
    return tuple(
        SDEVariant(f"lam{lam:g}_seed{seed}".replace(".", "p"), f"{lam:g}", "ours", lam, seed)
        for lam in lambdas
        for seed in seeds
    )


@dataclasses.dataclass
class RunResult:
    """What ``run`` returns: the run directory, the metrics written to ``metrics.json`` and
    the record of every stage (``built`` says whether it was computed this time)."""

    run_dir: Path
    metrics: dict
    stages: list


# ------------------------------------------------------------------------------ experiment
@dataclasses.dataclass(frozen=True, kw_only=True)
class AbstractExperiment(abc.ABC):
    """Base of every experiment config. Subclasses are final frozen dataclasses that add
    physics fields (``param``), override sub-config defaults and implement the hooks."""

    name: ClassVar[str]
    """Registry name, e.g. ``"ising"``."""
    presets: ClassVar[Mapping[str, Mapping[str, Any]]]
    """Preset name -> field overrides (``smoke``, ``quick`` and ``paper`` at least)."""
    metric: ClassVar[str]
    """Name of the score the report compares (lower is better)."""
    latent_names: ClassVar[tuple[str, ...]] = ()
    """Names of the latent coordinates, for plots."""
    time_unit: ClassVar[str] = "time"
    """Unit of the step duration, for plots."""
    scale_axis: ClassVar[str] = "scale"
    """What ``Scale.label`` measures, for plots."""
    score_space: ClassVar[Literal["physical", "normalised"]] = "normalised"
    """Coordinates of jmacro's test protocol: the physical latents or the normalised ones the
    SDE sees (``jmacro.pipelines.scoring``)."""

    preset: Annotated[str, tyro.conf.Suppress] = param("custom", affects="none")
    """Name of the preset this config started from (report only; set by ``--preset``)."""
    seed: int = 0
    """Master seed; every stage derives its PRNG key from it."""
    num_seeds: int = param(3, affects="none")
    """Independent replicates of the whole pipeline (data, models, ground truth) with master
    seeds seed, seed + 1, ...; every reported number is their mean +- standard error."""
    small: SmallData = SmallData()
    upsampling: Upsampling = Upsampling()
    pairs: Pairs = Pairs()
    autoencoder: AutoencoderTraining = AutoencoderTraining()
    sde: SDETraining = SDETraining()
    truth: GroundTruth = GroundTruth()
    evaluation: Evaluation = Evaluation()

    def __post_init__(self):
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"seed must be an integer >= 0, got {self.seed!r}.")
        check_positive_int(self.num_seeds, "num_seeds")
        if not self.conditions():
            raise ValueError(f"{self.name}: no test conditions.")

    # ---- the questions an experiment answers
    @abc.abstractmethod
    def system(self):
        """The microscopic simulator."""

    @property
    @abc.abstractmethod
    def step_duration(self) -> float:
        """Duration of one step of the small data, pairs and ground truth (time units)."""

    @abc.abstractmethod
    def scales(self) -> tuple[Scale, ...]:
        """The sizes to run at, in order."""

    @abc.abstractmethod
    def small_data(self, system, scale: Scale, key, progress: bool) -> dict[str, np.ndarray]:
        """Small-system trajectories: at least ``snapshots (T, S+1, *state)``."""

    @abc.abstractmethod
    def upsample(self, system, scale: Scale, picked: np.ndarray, key, progress: bool):
        """Large snapshots ``(M, *large_state)`` from small ``picked (N, *small_state)``."""

    @abc.abstractmethod
    def partial_pairs(self, system, scale: Scale, snapshots, key, progress: bool) -> dict:
        """One partial evolution per snapshot: ``patch_after``, ``dt``, ``patch_index``; and
        ``condition (N, k)`` for an SDE conditioned on e.g. temperature (the runner then trains
        a conditioned ``LatentSDE`` with ``condition_dim = k``)."""

    @abc.abstractmethod
    def ground_truth(self, system, key, progress: bool) -> dict[str, np.ndarray]:
        """``test (C, R, T+1, *state)`` on the test conditions (on the grid of
        ``step_duration``) and ``validation (R, S+1, *state)`` full-system runs, on that grid
        or on their own ``validation_times (R, S+1)``. Optional: ``reference_test (C, R, S'+1,
        *state)`` with ``reference_times`` (event-stepped runs for the reference's protocol);
        for a conditioned experiment ``test_condition (C, k)`` (passed to the rollouts as
        Diffrax ``args``) and ``validation_condition (R, k)``; ``test_times (C, T+1)`` when
        each condition has its own output grid (the rollouts then use it)."""

    @abc.abstractmethod
    def conditions(self) -> list[str]:
        """Labels of the C test conditions, in the order of ``ground_truth``'s test axis."""

    @abc.abstractmethod
    def autoencoder_hyperparams(self, scale: Scale) -> dict:
        """``jmacro.models`` hyperparameters of the closure autoencoder."""

    def sde_variants(self, scale: Scale) -> tuple[SDEVariant, ...]:
        """The SDEs to train at ``scale``; default ours (lambda = K) and baseline."""
        return default_variants(scale)

    @abc.abstractmethod
    def score(self, predicted, truth) -> np.ndarray:
        """Score of one test condition from normalised latents ``(R, T+1, d)``: a scalar or
        an array over time; its mean is the reported number (lower is better)."""

    def check_inputs(self) -> None:
        """Raise ``ValueError`` if a file or setting that a run needs but a preset cannot hold
        (e.g. a path to model weights) is missing; the CLI calls it before any work. Default:
        nothing to check."""
        return None

    def model_time_scale(self, validation_dt: np.ndarray, validation_condition) -> float:
        """The SDE's unit of time (physical), from the validation pairs' durations ``(n,)``
        and conditions ``(n, k)`` (or None); default their mean (the reference's choice)."""
        return float(np.mean(validation_dt))

    def sde_hyperparams(self, scale: Scale) -> dict:
        """Extra ``make_latent_sde`` arguments of this experiment's SDEs (e.g. ``drift_mode``);
        default none: the reference's MLP drift."""
        return {}

    def report_sections(self, run_dir: Path, metrics: dict, replicates: dict) -> list[str]:
        """Experiment-specific markdown lines (and plots written to ``run_dir``) appended to
        ``report.md``; ``replicates[seed][scale]`` are the evaluation datasets. Default none."""
        return []

    def exact_dynamics(self, z: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
        """The exact large-system drift ``(n, d)`` and diagonal covariance rate ``(n, d)`` of
        the latents at ``z (n, d)`` where known (an oracle for the learned SDE); None if not."""
        return None

    def reference_coordinates(self, offset: np.ndarray, scale: np.ndarray):
        """``(offset, scale)`` of the coordinates of the reference's test protocol, from the
        normaliser the SDE sees; default: the same."""
        return offset, scale

    def reference(self, scale: Scale, group: str) -> float | None:
        """The reference implementation's number for this scale and group, if comparable."""
        return None

    def describe(self) -> str:
        """One line for the report header."""
        return ""

    # ---- construction
    @classmethod
    def create(cls, **fields: Any):
        """A config from field values, where a sub-config may be given as a dict of the
        fields that differ from this experiment's default sub-config."""
        defaults = {f.name: f.default for f in dataclasses.fields(cls)}
        for name in SUB_CONFIGS:
            if isinstance(fields.get(name), Mapping):
                fields[name] = dataclasses.replace(defaults[name], **fields[name])
        return cls(**fields)

    @classmethod
    def from_preset(cls, preset: str = "quick", **overrides: Any):
        """The preset ``preset`` (``cls.presets``), with ``overrides`` on top; a sub-config
        given as a dict changes only its own fields of the preset's sub-config."""
        if preset not in cls.presets:
            raise ValueError(
                f"unknown preset {preset!r} for {cls.name}; choose one of {tuple(cls.presets)}."
            )
        fields = {**cls.presets[preset], "preset": preset}
        for name, value in overrides.items():
            if isinstance(value, Mapping) and isinstance(fields.get(name), Mapping):
                value = {**fields[name], **value}
            fields[name] = value
        return cls.create(**fields)

    # ---- derived, shared
    def physics(self, *affects: str) -> dict[str, Any]:
        """This experiment's own fields that affect stages of kind ``affects``."""
        return {
            f.name: getattr(self, f.name)
            for f in dataclasses.fields(self)
            if f.name not in (*SUB_CONFIGS, "seed") and f.metadata.get("affects", "all") in affects
        }
