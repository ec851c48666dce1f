"""NbMoTa: vacancy KMC of an equimolar BCC alloy, short-range order, a temperature-conditioned
stochastic OnsagerNet (REFERENCE.md 2.5, issue 14), checked against direct KMC of the large
system, which the reference never had.

Stages (the runner's graph; conditions are temperatures, the condition vector the SDE sees is
c = (T - 100 K) / 2900 K):

- small: per training temperature, ``small.num_trajectories / len(train_temperatures)``
  residence-time KMC runs of the small cell (``small_cells``^3 cells, one vacancy, exponential
  waiting times) from random equimolar states, a frame every ``events_per_frame`` events; and
  the long runs of the equilibrium SRO curve (``equilibrium_*``);
- large: per training temperature, ``snapshots_per_temperature`` crystals of K =
  (large_cells / small_cells)^3 tiles, each tile a frame of that temperature's runs from a
  window of +- ``frame_window`` frames around one random frame index (all runs), rolled by a
  random cell offset, the composition restored exactly and each tile's vacancy moved to its
  centre (``jmacro.scale.alloy.tile_upsample``);
- pairs: the window of ``small_cells``^3 cells around one random vacancy (= its tile) evolved
  as a periodic crystal for ``window_events`` events with mean waiting times (the reference);
- latent: the intra-tile SRO (``SROEncoder``; no learned closure): the bonds across tile seams
  are left out, because a tiled crystal's seams join independent frames (SRO ~ 0 there) and
  would dilute its SRO by ~18 % at 8^3-cell tiles. LocalRelax of the seams (the reference)
  would cost thousands of events per vacancy per snapshot; for a homogeneous crystal (the
  direct KMC) the intra-tile SRO estimates the whole SRO (the report compares the two);
- SDEs: ours (lambda = K) and the baseline, the small system's own SDE (lambda = 1,
  ``baseline_pairs``), each a temperature-conditioned ``LatentSDE`` with a stochastic
  OnsagerNet drift (``drift``) and a full diffusion;
- truth: direct KMC of the large crystal (K vacancies, exponential waiting times) from random
  states at each test temperature: ``truth.num_test_runs`` runs on a grid of
  ``truth.test_steps`` steps per temperature; the grid spans the mean time of
  ``horizon_events`` events of small-cell runs from random states at that temperature
  (``event_time``; one grid per temperature, ``test_times``: 1600 K is ~100x slower than
  3000 K); validation runs at the training temperatures, steps of ``window_events`` events
  per vacancy at that mean rate (the pairs' duration): the full-system pairs of model
  selection.

Time: physical seconds everywhere (KMC clocks; the pairs' dt, the test grids, the rollouts).
The SDE's networks see tau = t / t0 with t0 the coldest training temperature's validation
step (``model_time_scale``, ``LatentNormaliser``); a saved model rolls out in seconds
(``jmacro.rollout``).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path
from typing import ClassVar, Literal

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np

from jmacro import bcc
from jmacro.metrics import relative_squared_error
from jmacro.models import SRO_COORDINATES, SRO_NAMES, model_hyperparams
from jmacro.pipelines import base
from jmacro.pipelines._nbmota_report import _sro, nbmota_sections
from jmacro.pipelines.base import AbstractExperiment, Scale, SDEVariant, param
from jmacro.scale.alloy import evolve_vacancy_window, tile_centres, tile_upsample
from jmacro.systems import KRABarrier, NNKBarrier, VacancyKMC
from jmacro.systems.alloy_kmc import AlloyState

logger = logging.getLogger(__name__)

T_OFFSET, T_SPAN = 100.0, 2900.0
"""The condition the SDE sees: c = (T - T_OFFSET) / T_SPAN, in [0, 1] over 100-3000 K."""


def temperature_condition(temperatures) -> np.ndarray:
    """c = (T - 100 K) / 2900 K as ``(n, 1)`` float32, from ``n`` temperatures in K."""
    t = np.asarray(temperatures, np.float64).reshape(-1, 1)
    return ((t - T_OFFSET) / T_SPAN).astype(np.float32)


SMOKE = dict(
    train_temperatures=(2000.0, 3000.0),
    test_temperatures=(2500.0,),
    small_cells=4,
    large_cells=8,
    events_per_frame=50,
    frame_window=1,
    snapshots_per_temperature=16,
    window_events=20,
    horizon_events=400,
    equilibrium_temperatures=(2000.0, 3000.0),
    equilibrium_runs=2,
    equilibrium_events=400,
    equilibrium_frames=4,
    sde_width=8,
    sde_depth=1,
    small=dict(num_trajectories=4, num_steps=4),
    sde=dict(epochs=2, batch_size=16),
    truth=dict(num_val_runs=2, val_steps=4, num_test_runs=2, test_steps=4),
    evaluation=dict(rollout_substeps=2),
    num_seeds=2,
)
# This 2-core CPU, about 15 minutes for 3 replicates: 4 training temperatures, 1,024 -> 8,192
# sites (K = 8), the built-in KRA barriers; direct KMC of 8,192 sites at 3 temperatures (one
# between training temperatures).
QUICK = dict(
    train_temperatures=(1600.0, 2000.0, 2500.0, 3000.0),
    test_temperatures=(1600.0, 2200.0, 3000.0),
    snapshots_per_temperature=1000,
    horizon_events=16000,
    frame_window=1,
    equilibrium_runs=4,
    equilibrium_events=48000,
    small=dict(num_trajectories=64, num_steps=32),
    pairs=dict(per_snapshot=6),
    sde=dict(epochs=40, batch_size=512),
    truth=dict(num_val_runs=8, val_steps=64, num_test_runs=12, test_steps=40),
)
# The reference's: 8 temperatures 1600-3000 K, 10 small runs of 2e6 events each logged in 2,001
# frames, 160,000 pairs, 300 epochs, the six SRO numbers, NNK barriers (give --nnk-weights);
# 8,192 sites (--large-cells 32 / 64 for 65,536 / 524,288). For a GPU.
PAPER = dict(
    train_temperatures=tuple(float(t) for t in range(1600, 3001, 200)),
    test_temperatures=tuple(float(t) for t in range(1600, 3001, 200)),
    barrier="nnk",
    sro_coordinates="all",
    events_per_frame=1000,
    snapshots_per_temperature=5000,
    horizon_events=200_000,
    equilibrium_temperatures=tuple(float(t) for t in range(1400, 3001, 200)),
    equilibrium_runs=10,
    equilibrium_events=2_000_000,
    equilibrium_frames=100,
    sde_width=64,
    sde_depth=3,
    frame_window=10,
    small=dict(num_trajectories=80, num_steps=2000),
    pairs=dict(per_snapshot=4),
    sde=dict(epochs=300, batch_size=1024),
    truth=dict(num_val_runs=16, val_steps=200, num_test_runs=20, test_steps=100),
)


@dataclasses.dataclass(frozen=True, kw_only=True)
class NbMoTa(AbstractExperiment):
    """Equimolar NbMoTa on BCC (a = 3.24 Angstrom): vacancy-exchange KMC, rate nu0
    exp(-E_b / k_B T) (``VacancyKMC``), learned through the intra-tile SRO."""

    name: ClassVar[str] = "nbmota"
    metric: ClassVar[str] = "test_error"
    time_unit: ClassVar[str] = "time (s)"
    scale_axis: ClassVar[str] = "large system (sites)"
    score_space: ClassVar[str] = "physical"
    presets: ClassVar[dict] = {"smoke": SMOKE, "quick": QUICK, "paper": PAPER}

    train_temperatures: tuple[float, ...] = param((1600.0, 2000.0, 2500.0, 3000.0))
    """Temperatures (K) of the small runs, the pairs and the validation runs."""
    test_temperatures: tuple[float, ...] = param((1600.0, 2200.0, 3000.0), affects="truth")
    """Temperatures (K) of the direct large-system KMC (the test conditions)."""
    small_cells: int = param(8)
    """Cells per side of the small system, a tile and a partial-evolution window (8: 1,024
    sites, one vacancy)."""
    large_cells: int = param(16)
    """Cells per side of the large system (16: 8,192 sites, K = 8 tiles and vacancies)."""
    barrier: Literal["kra", "nnk"] = param("kra")
    """Barrier model: the built-in KRA fit to DFT (``KRABarrier.nbmota``) or the NNK network
    (needs ``nnk_weights``)."""
    nnk_weights: str | None = param(None)
    """Path of the NNK weights file (``weights.npy``, 26 arrays; see the README) for
    ``barrier = "nnk"``."""
    sro_coordinates: Literal["all", "independent"] = param("independent", affects="none")
    """Latent: all six SRO numbers or the three independent ones (NbMo, NbTa, MoTa)."""
    drift: Literal["onsager", "mlp"] = param("onsager", affects="none")
    """SDE drift: the temperature-conditioned stochastic OnsagerNet or the reference MLP."""
    baseline_pairs: Literal["patch", "reference"] = param("patch", affects="none")
    """The baseline's pairs: the window alone (``"patch"``: z_t and z~ both the window's SRO,
    the 1,024-site system's own dynamics) or the reference's (z_t the large crystal's SRO,
    z~ the window's after: the tile-to-crystal difference enters every increment as a jump
    that does not scale with dt, and its SDE learned noise only)."""
    sde_width: int = param(32, affects="none")
    """Hidden width of the SDE's networks (drift and diffusion)."""
    sde_depth: int = param(2, affects="none")
    """Hidden layers of the SDE's networks."""
    events_per_frame: int = param(500)
    """KMC events between two saved frames of a small run (``small.num_steps`` frames)."""
    frame_window: int = param(1)
    """Tiles of one large snapshot come from frames within +- this many of one random frame."""
    snapshots_per_temperature: int = param(1000)
    """Large (tiled) snapshots per training temperature."""
    window_events: int = param(124)
    """Events of one partial evolution of a vacancy-centred window (mean waiting times), and
    per vacancy of one validation step (the reference: 124)."""
    horizon_events: int = param(16000, affects="truth")
    """Nominal events per vacancy over a test run (its time horizon at each temperature)."""
    equilibrium_temperatures: tuple[float, ...] = param(
        tuple(float(t) for t in range(1600, 3001, 200))
    )
    """Temperatures (K) of the long small runs of the equilibrium SRO curve."""
    equilibrium_runs: int = param(4)
    """Long small runs per equilibrium temperature."""
    equilibrium_events: int = param(48000)
    """Events of each long small run."""
    equilibrium_frames: int = param(24)
    """Frames saved per long run (the last half are averaged)."""
    small: base.SmallData = base.SmallData(num_trajectories=64, num_steps=32)
    upsampling: base.Upsampling = base.Upsampling(num_large=None, num_random=0, relax=False)
    pairs: base.Pairs = base.Pairs(per_snapshot=6)
    autoencoder: base.AutoencoderTraining = base.AutoencoderTraining(closure_dim=0)
    sde: base.SDETraining = base.SDETraining(epochs=40, batch_size=512, normalisation="standard")
    truth: base.GroundTruth = base.GroundTruth(
        num_test_runs=12, test_steps=40, num_val_runs=8, val_steps=64, reference_steps=0
    )
    evaluation: base.Evaluation = base.Evaluation(rollout_substeps=4)

    def __post_init__(self):
        super().__post_init__()
        for name in ("train_temperatures", "test_temperatures", "equilibrium_temperatures"):
            values = getattr(self, name)
            if not values or not all(0 < t < float("inf") for t in values):
                raise ValueError(f"{name} must be non-empty, finite and > 0 K, got {values}.")
        for name in (
            "small_cells",
            "large_cells",
            "events_per_frame",
            "snapshots_per_temperature",
            "window_events",
            "horizon_events",
            "equilibrium_runs",
            "equilibrium_events",
            "equilibrium_frames",
            "sde_width",
        ):
            base._positive(self, name)
        if self.small_cells < 2 or self.large_cells % self.small_cells:
            raise ValueError(
                f"small_cells = {self.small_cells} must be >= 2 and divide large_cells = "
                f"{self.large_cells} (K = (large / small)^3 tiles)."
            )
        if self.frame_window < 0 or self.sde_depth < 0:
            raise ValueError("frame_window and sde_depth must be >= 0.")
        if self.equilibrium_events < self.equilibrium_frames:
            raise ValueError("equilibrium_events must be >= equilibrium_frames.")
        if self.small.num_trajectories % len(self.train_temperatures):
            raise ValueError(
                f"small.num_trajectories = {self.small.num_trajectories} must be a multiple of "
                f"the {len(self.train_temperatures)} training temperatures (runs per "
                "temperature)."
            )
        if self.upsampling.num_large is not None:
            raise ValueError(
                "nbmota draws its own large snapshots (snapshots_per_temperature, per "
                "temperature, tiles from a window of frames): leave upsampling.num_large = None."
            )
        if self.autoencoder.closure_dim:
            raise ValueError("nbmota's SRO latent is closed: autoencoder.closure_dim must be 0.")
        if self.barrier == "nnk" and self.nnk_weights is not None:
            if not Path(self.nnk_weights).is_file():
                raise ValueError(
                    f"nnk_weights = {self.nnk_weights!r} is not a file; give the path of the "
                    "NNK weights.npy (see the README: the user passes the data files)."
                )
        if self.barrier == "kra" and self.nnk_weights is not None:
            raise ValueError("nnk_weights is given but barrier = 'kra'; set --barrier nnk.")

    # ---- pieces
    @property
    def latent_names(self) -> tuple[str, ...]:
        """The SRO numbers of the latent (``sro_coordinates``)."""
        return tuple(f"SRO {SRO_NAMES[i]}" for i in SRO_COORDINATES[self.sro_coordinates])

    @property
    def num_tiles(self) -> int:
        """K = (large_cells / small_cells)^3: tiles, vacancies and windows."""
        return (self.large_cells // self.small_cells) ** 3

    def barrier_model(self):
        """The barrier model (``barrier``); loads the NNK weights from ``nnk_weights``."""
        if self.barrier == "kra":
            return KRABarrier.nbmota()
        if self.nnk_weights is None:
            raise ValueError(
                "barrier = 'nnk' needs the NNK weights file: pass --nnk-weights PATH/weights.npy "
                "(see the README for where it comes from), or use --barrier kra."
            )
        return NNKBarrier.from_file(self.nnk_weights)

    def _runs_per_temperature(self) -> int:
        return self.small.num_trajectories // len(self.train_temperatures)

    def event_time(self, barrier, temperatures, key, num_runs: int = 16) -> np.ndarray:
        """Seconds per event of one vacancy along a trajectory, ``(len(temperatures),)``:
        the mean time of ``num_runs`` small-cell runs of ``horizon_events`` events from random
        states, divided by ``horizon_events``. (The mean of 1 / R_tot over random states is
        not it: ordering slows the vacancy down, 4x at 1600 K over 16,000 events.)"""
        temperatures = np.repeat(np.asarray(temperatures, np.float32), num_runs)
        states = _random_states(key, len(temperatures), self.small_cells, 1)
        keys = jr.split(jr.fold_in(key, 1), len(temperatures))
        _, times = _event_runs_dynamic(
            barrier, jnp.asarray(temperatures), states, keys, 1, self.horizon_events
        )
        elapsed = np.asarray(times, np.float64)[:, -1].reshape(-1, num_runs)
        return elapsed.mean(axis=1) / self.horizon_events

    def model_time_scale(self, validation_dt, validation_condition) -> float:
        """The slowest training temperature's mean validation step (about ``window_events``
        events per vacancy there): the OnsagerNet can speed its drift up at hotter
        temperatures (M = L L^T grows) but not slow it below alpha g, so the coldest
        temperature sets the unit of time."""
        keys = np.round(np.asarray(validation_condition)[:, 0], 6)
        return float(max(np.mean(validation_dt[keys == k]) for k in np.unique(keys)))

    # ---- hooks
    def check_inputs(self) -> None:
        """The NNK weights file, for ``barrier = "nnk"`` (``barrier_model``'s error)."""
        if self.barrier == "nnk":
            self.barrier_model()

    def system(self):
        return VacancyKMC(self.barrier_model(), self.train_temperatures[0])

    @property
    def step_duration(self) -> float:
        """No single step: each test temperature has its own grid (``test_times``, s)."""
        return float("nan")

    def scales(self) -> tuple[Scale, ...]:
        sites = 2 * self.large_cells**3
        return (Scale(f"K{self.num_tiles}", self.small_cells, self.num_tiles, float(sites), 1),)

    def small_data(self, system, scale, key, progress):
        start, barrier = time.perf_counter(), system.barrier_model
        runs = self._runs_per_temperature()
        temperatures = np.repeat(np.asarray(self.train_temperatures, np.float32), runs)
        states = _random_states(jr.fold_in(key, 0), len(temperatures), self.small_cells, 1)
        keys = jr.split(jr.fold_in(key, 1), len(temperatures))
        logger.info("small runs: %d x %d events", len(temperatures), self.small_events)
        path, times = _event_runs_dynamic(
            barrier, jnp.asarray(temperatures), states, keys, self.small.num_steps,
            self.events_per_frame,
        )  # fmt: skip
        out = {
            "snapshots": np.asarray(path.occupancy, np.int8),
            "times": np.asarray(times, np.float32),
            "temperature": temperatures,
        }
        eq_t = np.repeat(
            np.asarray(self.equilibrium_temperatures, np.float32), self.equilibrium_runs
        )
        eq_states = _random_states(jr.fold_in(key, 2), len(eq_t), self.small_cells, 1)
        eq_keys = jr.split(jr.fold_in(key, 3), len(eq_t))
        per_frame = self.equilibrium_events // self.equilibrium_frames
        logger.info(
            "equilibrium runs: %d x %d events", len(eq_t), per_frame * self.equilibrium_frames
        )
        eq_path, eq_times = _event_runs_dynamic(
            barrier, jnp.asarray(eq_t), eq_states, eq_keys, self.equilibrium_frames, per_frame
        )
        sro = _sro(eq_path.occupancy)  # (runs, F+1, 6), every bond
        shape = (len(self.equilibrium_temperatures), self.equilibrium_runs)
        out["equilibrium_sro"] = sro.reshape(*shape, *sro.shape[1:])
        out["equilibrium_times"] = np.asarray(eq_times, np.float32).reshape(*shape, -1)
        events = (
            len(temperatures) * self.small_events + len(eq_t) * per_frame * self.equilibrium_frames
        )
        out["kmc_events"] = np.asarray(events, np.float64)
        out["kmc_seconds"] = np.asarray(time.perf_counter() - start, np.float64)
        return out

    @property
    def small_events(self) -> int:
        """Events of one small run (``small.num_steps`` frames of ``events_per_frame``)."""
        return self.small.num_steps * self.events_per_frame

    def upsample(self, system, scale, picked, key, progress):
        """Large snapshots ``(C * snapshots_per_temperature, L, L, L, 2)`` int8, temperature by
        temperature (the order of ``train_temperatures``) from ``picked``: the small runs'
        frames in order (``upsampling.num_large = None``), run by run, temperature-major."""
        runs_total = self.small.num_trajectories
        if len(picked) % runs_total:
            raise ValueError(
                f"expected the small runs' frames in order, a multiple of {runs_total} runs; "
                f"got {len(picked)} snapshots."
            )
        frames = len(picked) // runs_total
        pool = np.asarray(picked).reshape(len(self.train_temperatures), -1, *picked.shape[1:])
        width = min(2 * self.frame_window + 1, frames)
        per_side = self.large_cells // self.small_cells
        out = []
        for c in range(len(self.train_temperatures)):
            keys = jr.split(jr.fold_in(key, c), self.snapshots_per_temperature)
            out.append(
                np.asarray(
                    _tile_snapshots(
                        jnp.asarray(pool[c]), keys, self._runs_per_temperature(), frames,
                        width, per_side,
                    ),
                    np.int8,
                )
            )  # fmt: skip
        return np.concatenate(out)

    def _snapshot_temperatures(self, count: int) -> np.ndarray:
        """Temperature (K) of each of ``count`` large snapshots (``upsample``'s order)."""
        num = len(self.train_temperatures)
        if count % num:
            raise ValueError(f"expected a multiple of {num} snapshots, got {count}.")
        return np.repeat(np.asarray(self.train_temperatures, np.float32), count // num)

    def partial_pairs(self, system, scale, snapshots, key, progress):
        """One window evolution per snapshot (``evolve_vacancy_window``): ``patch_after``,
        ``dt`` (s), ``patch_index`` (the vacancy = tile), ``condition`` (c of its T)."""
        began = time.perf_counter()
        temperatures = self._snapshot_temperatures(len(snapshots))
        vacancies = tile_centres(self.large_cells, self.small_cells)
        chunk, parts = 1024, []
        for start in range(0, len(snapshots), chunk):
            stop = min(start + chunk, len(snapshots))
            keys = jr.split(jr.fold_in(key, start), stop - start)
            parts.append(
                _windows(
                    system.barrier_model, jnp.asarray(temperatures[start:stop]),
                    jnp.asarray(snapshots[start:stop]), vacancies, keys, self.small_cells,
                    self.window_events,
                )
            )  # fmt: skip
        _, after, dt, which = (np.concatenate([np.asarray(p[i]) for p in parts]) for i in range(4))
        return {
            "patch_after": after.astype(np.int8),
            "dt": dt.astype(np.float32),
            "patch_index": which.astype(np.int32),
            "condition": temperature_condition(temperatures),
            "kmc_seconds": np.asarray([time.perf_counter() - began], np.float64),
        }

    def ground_truth(self, system, key, progress):
        start, barrier, truth = time.perf_counter(), system.barrier_model, self.truth
        num_test, runs = len(self.test_temperatures), truth.num_test_runs
        val_t = np.asarray(self.train_temperatures, np.float32)
        val_t = val_t[np.arange(truth.num_val_runs) % len(val_t)]
        every_t = np.concatenate([np.asarray(self.test_temperatures, np.float32), val_t])
        unique, where = np.unique(every_t, return_inverse=True)
        event_time = self.event_time(barrier, unique, jr.fold_in(key, 0))[where]
        step = event_time[:num_test] * self.horizon_events / truth.test_steps  # (C,) s
        temperatures = np.repeat(np.asarray(self.test_temperatures, np.float32), runs)
        states = _random_states(
            jr.fold_in(key, 1), num_test * runs, self.large_cells, self.num_tiles
        )
        keys = jr.split(jr.fold_in(key, 2), num_test * runs)
        logger.info("direct KMC of %d sites: %d runs", 2 * self.large_cells**3, num_test * runs)
        path = _timed_runs(
            barrier, jnp.asarray(temperatures), jnp.asarray(np.repeat(step, runs), jnp.float32),
            states, keys, truth.test_steps, truth.save_every,
        )  # fmt: skip
        test = np.asarray(path, np.int8)
        grid = np.arange(truth.test_steps // truth.save_every + 1) * truth.save_every
        out = {
            "test": test.reshape(num_test, runs, *test.shape[1:]),
            "test_times": (grid[None, :] * step[:, None]).astype(np.float32),
            "test_condition": temperature_condition(self.test_temperatures),
            "test_event_time": event_time[:num_test].astype(np.float64),
        }
        # validation: full-system pairs at the training temperatures, steps of window_events
        # events per vacancy at the mean rate (the pairs' duration)
        val_step = (self.window_events * event_time[num_test:]).astype(np.float32)
        val_states = _random_states(
            jr.fold_in(key, 3), len(val_t), self.large_cells, self.num_tiles
        )
        val_keys = jr.split(jr.fold_in(key, 4), len(val_t))
        val_path = _timed_runs(
            barrier, jnp.asarray(val_t), jnp.asarray(val_step), val_states, val_keys,
            truth.val_steps, 1,
        )  # fmt: skip
        out["validation"] = np.asarray(val_path, np.int8)
        grid = np.arange(truth.val_steps + 1, dtype=np.float64)
        out["validation_times"] = (grid[None, :] * val_step[:, None]).astype(np.float32)
        out["validation_condition"] = temperature_condition(val_t)
        horizon = num_test * runs * self.horizon_events + len(val_t) * truth.val_steps * (
            self.window_events
        )
        out["kmc_events"] = np.asarray(horizon * self.num_tiles, np.float64)  # expected
        out["kmc_seconds"] = np.asarray(time.perf_counter() - start, np.float64)
        return out

    def conditions(self):
        return [f"T = {t:g} K" for t in self.test_temperatures]

    def autoencoder_hyperparams(self, scale):
        return model_hyperparams(
            "sro_encoder",
            num_cells=self.large_cells,
            tile_cells=self.small_cells,
            coordinates=self.sro_coordinates,
        )

    def sde_hyperparams(self, scale):
        return {"drift_mode": self.drift, "width_size": self.sde_width, "depth": self.sde_depth}

    def sde_variants(self, scale):
        """Ours (lambda = K) and the baseline, the small system's own SDE (lambda = 1): pairs
        with both ends the window's SRO (``baseline_pairs = "patch"``), or the reference's
        (start point the large crystal's SRO, ``"reference"``)."""
        method = "patch" if self.baseline_pairs == "patch" else "baseline"
        return (
            SDEVariant("ours", "ours", "ours", float(scale.num_patches)),
            SDEVariant("baseline", "baseline", method, 1.0),
        )

    def score(self, predicted, truth):
        """Relative squared error of the ensemble-mean SRO trajectory (physical SRO)."""
        return relative_squared_error(predicted, truth)

    def report_sections(self, run_dir, metrics, replicates):
        return nbmota_sections(self, run_dir, metrics, replicates)

    def describe(self):
        return (
            f"{2 * self.small_cells**3:,} -> {2 * self.large_cells**3:,} sites (K = "
            f"{self.num_tiles}), {self.barrier.upper()} barriers, trained at "
            f"{', '.join(f'{t:g}' for t in self.train_temperatures)} K; latent: "
            f"{len(self.latent_names)} intra-tile SRO numbers; drift: {self.drift}."
        )


# ------------------------------------------------------------------------------ kernels
def _random_states(key, num: int, num_cells: int, num_vacancies: int) -> AlloyState:
    """``num`` uniformly random equimolar states ``(num, L, L, L, 2)`` with their vacancies."""
    occupancy = jax.vmap(lambda k: bcc.random_occupancy(k, num_cells, num_vacancies))(
        jr.split(key, num)
    )
    vacancies = jax.vmap(lambda o: bcc.find_vacancies(o, num_vacancies))(occupancy)
    return AlloyState(occupancy, vacancies)


@eqx.filter_jit
def _log_total_rates(barrier, temperatures, states):
    """ln R_tot ``(len(temperatures), num_states)``."""

    def one(t, state):
        return VacancyKMC(barrier, t).log_total_rate(state)

    return jax.vmap(lambda t: jax.vmap(lambda s: one(t, s))(states))(temperatures)


@eqx.filter_jit
def _event_runs(barrier, temperatures, states, keys, num_frames, events_per_frame):
    """Frames every ``events_per_frame`` events, one run per row (its own temperature)."""

    def one(t, state, key):
        return VacancyKMC(barrier, t).event_trajectory(state, key, num_frames, events_per_frame)

    return jax.vmap(one)(temperatures, states, keys)


def _event_runs_dynamic(barrier, temperatures, states, keys, num_frames, events_per_frame):
    """``_event_runs`` with the event count traced: one compiled program for every count."""
    count = jnp.asarray(events_per_frame, jnp.int32)
    return _event_runs(barrier, temperatures, states, keys, num_frames, count)


@eqx.filter_jit
def _timed_runs(barrier, temperatures, steps, states, keys, num_steps, save_every):
    """States every ``steps[r]`` seconds, one run per row (its own temperature)."""

    def one(t, step, state, key):
        return VacancyKMC(barrier, t).trajectory(state, key, num_steps, step, save_every)

    return jax.vmap(one)(temperatures, steps, states, keys).occupancy


@eqx.filter_jit
def _windows(barrier, temperatures, occupancy, vacancies, keys, window_cells, num_events):
    """``evolve_vacancy_window`` of each snapshot (vacancies at ``vacancies``, mean waits)."""

    def one(t, occ, key):
        kmc = VacancyKMC(barrier, t, waiting_time="mean")
        return evolve_vacancy_window(kmc, AlloyState(occ, vacancies), key, window_cells, num_events)

    return jax.vmap(one)(temperatures, occupancy, keys)


@eqx.filter_jit
def _tile_snapshots(pool, keys, runs, frames, width, tiles_per_side):
    """One tiled crystal per key from ``pool (runs * frames, l, l, l, 2)`` (run-major): a frame
    index f, then each tile from a random run and a frame in the window of ``width`` frames
    around f (clipped to the run)."""
    num_tiles = tiles_per_side**3

    def one(key):
        key_picks, key_up = jr.split(key)
        picks = window_picks(key_picks, runs, frames, width, num_tiles)
        return tile_upsample(key_up, pool, tiles_per_side, picks=picks).occupancy

    return jax.vmap(one)(keys)


def window_picks(key, runs: int, frames: int, width: int, num_tiles: int) -> jax.Array:
    """Indices ``(num_tiles,)`` into a run-major pool of ``runs`` x ``frames`` frames: one
    frame index f uniform in [0, frames), the window of ``width`` consecutive frames centred
    on it (shifted inside the run at its ends), then each tile a uniform run and a uniform
    frame of that window (the reference's +-10 frames, all seeds)."""
    key_f, key_run, key_frame = jr.split(key, 3)
    centre = jr.randint(key_f, (), 0, frames)
    low = jnp.clip(centre - width // 2, 0, frames - width)
    run = jr.randint(key_run, (num_tiles,), 0, runs)
    frame = low + jr.randint(key_frame, (num_tiles,), 0, width)
    return run * frames + frame


__all__ = ["NbMoTa", "temperature_condition", "window_picks"]
