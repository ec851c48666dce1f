"""Robustness of the systems layer: bad spin values, durations and mean-field backgrounds are
refused with a clear ValueError before any compute, and traced values still run under jit."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

from jmacro import simulate
from jmacro._checks import check_spins
from jmacro.geometry import MeanField, SquareTiling2D
from jmacro.scale import (
    BlockReplication,
    HierarchicalUpsampling,
    PartialEvolution,
    evolve_patches,
    upsample_dataset,
)
from jmacro.systems import CurieWeiss, GlauberIsing

BAD_VALUES = [0.5, 2, 0, -3, np.nan]
SYSTEMS = [GlauberIsing(2.5, 0.1), CurieWeiss(1.1, 0.1)]


def _batch_with(value, dtype=None) -> np.ndarray:
    """Four valid 8x8 lattices with one entry replaced by ``value``."""
    states = np.ones((4, 8, 8), np.float32 if isinstance(value, float) else np.int32)
    states[2, 3, 5] = value
    return states if dtype is None else states.astype(dtype)


class _NoCompute:
    """Fails the test if a driver gets as far as compiling/running the batch."""

    def __init__(self, monkeypatch, module):
        def boom(*args, **kwargs):
            raise AssertionError("the driver ran compute before refusing bad states")

        monkeypatch.setattr(module, "map_in_batches", boom, raising=False)
        monkeypatch.setattr(module, "sharded_vmap", boom, raising=False)


@pytest.mark.parametrize("system", SYSTEMS, ids=lambda s: type(s).__name__)
@pytest.mark.parametrize("value", BAD_VALUES)
def test_check_states_rejects_non_spin_values(system, value):
    with pytest.raises(ValueError, match=r"only -1 and \+1"):
        system.check_states(_batch_with(value), "initial", batched=True)
    with pytest.raises(ValueError, match=r"only -1 and \+1"):
        system.check_states(_batch_with(value)[2], "state")


@pytest.mark.parametrize("system", SYSTEMS, ids=lambda s: type(s).__name__)
def test_check_states_accepts_integer_valued_spins_of_any_numeric_dtype(system):
    for dtype in (np.int8, np.int32, np.float32, np.float64):
        system.check_states(-np.ones((3, 4, 4), dtype), batched=True)
    with pytest.raises(ValueError, match="dtype bool"):
        system.check_states(np.ones((3, 4, 4), bool), batched=True)


def test_check_spins_scans_large_arrays_in_slices(tmp_path, monkeypatch):
    """A memory-mapped dataset larger than one slice is scanned whole: a bad entry in the
    last slice is found and counted."""
    import jmacro._checks as checks

    monkeypatch.setattr(checks, "_SPIN_SCAN_ENTRIES", 64)  # one 8x8 state per slice
    data = np.lib.format.open_memmap(tmp_path / "s.npy", "w+", np.int8, (10, 8, 8))
    data[:] = 1
    data[9, 7, 7] = 0
    data[0, 0, 0] = 2
    with pytest.raises(ValueError, match=r"found 2 other entries \(e\.g\. 2\)"):
        checks.check_spins(np.load(tmp_path / "s.npy", mmap_mode="r"))
    data[:] = -1
    check_spins(np.load(tmp_path / "s.npy", mmap_mode="r"))


@pytest.mark.parametrize("value", [0.5, 2, 0])
def test_trajectories_reject_bad_spins_before_compute(monkeypatch, value):
    _NoCompute(monkeypatch, simulate)
    with pytest.raises(ValueError, match=r"initial must contain only -1 and \+1"):
        simulate.trajectories(GlauberIsing(), _batch_with(value), jr.key(0), 2, 0.5)


def test_random_trajectories_draw_valid_states_even_for_extreme_magnetisation():
    """random_trajectories takes no states: they come from ``init_state``, which makes -1/+1
    spins for any magnetisation (|m| >= 1 gives all-equal spins)."""
    out = simulate.random_trajectories(
        CurieWeiss(),
        jr.key(0),
        2,
        (4, 4),
        1,
        initial_condition=lambda k: {"magnetisation": 1.5},
        step_duration=0.1,
    )
    check_spins(out["snapshots"])


@pytest.mark.parametrize("value", [0.5, 2, 0])
def test_evolve_patches_rejects_bad_spins_before_compute(monkeypatch, value):
    import jmacro.scale.partial as partial

    _NoCompute(monkeypatch, partial)
    scheme = PartialEvolution(SquareTiling2D(4), "halo", duration=0.5)
    with pytest.raises(ValueError, match=r"snapshots must contain only -1 and \+1"):
        evolve_patches(GlauberIsing(), _batch_with(value), jr.key(0), scheme, progress=False)


@pytest.mark.parametrize("relax", [False, True])
@pytest.mark.parametrize("value", [0.5, 2, 0])
def test_upsample_dataset_rejects_bad_spins_before_compute(monkeypatch, value, relax):
    import jmacro.scale.upsample as upsample

    _NoCompute(monkeypatch, upsample)
    cfg = HierarchicalUpsampling(16, 2, None, 0)
    system = GlauberIsing() if relax else None
    with pytest.raises(ValueError, match=r"snapshots must contain only -1 and \+1"):
        upsample_dataset(system, _batch_with(value), jr.key(0), cfg, progress=False)
    assert isinstance(cfg.upsample, BlockReplication)


# ------------------------------------------------------------------------------ durations
@pytest.mark.parametrize("duration", [np.inf, -np.inf, np.nan, -1.0])
def test_advance_time_rejects_non_finite_or_negative_durations(duration):
    spins = -jnp.ones((8, 8), jnp.int8)
    for advance in (GlauberIsing().advance_time, CurieWeiss().advance_time):
        with pytest.raises(ValueError, match="duration must be"):
            advance(spins, jr.key(0), duration)
    with pytest.raises(ValueError, match="duration must be"):
        GlauberIsing().advance_time(spins, jr.key(0), duration, method="parallel")
    with pytest.raises(ValueError, match="duration must be"):
        GlauberIsing().advance(spins, jr.key(0), duration)


def test_advance_time_rejects_durations_whose_attempt_count_overflows_int32():
    spins = -jnp.ones((8, 8), jnp.int8)
    too_long = 2.0**31 / spins.size  # 2^31 expected attempts: past int32
    for advance in (GlauberIsing().advance_time, CurieWeiss().advance_time):
        with pytest.raises(ValueError, match="int32 attempt count"):
            advance(spins, jr.key(0), too_long)
    # The bound is on n t: a patch of a large Curie-Weiss system counts its own sites only.
    with pytest.raises(ValueError, match="int32 attempt count"):
        CurieWeiss().advance_time(spins, jr.key(0), too_long, 0, 10**6)


def test_traced_durations_still_run_under_jit():
    """Inside jit the duration is unknown: no check, no error (documented in check_duration)."""
    spins = -jnp.ones((8, 8), jnp.int8)
    for model in (GlauberIsing(2.5, 0.1), CurieWeiss(1.1, 0.1)):
        out = jax.jit(lambda t, model=model: model.advance_time(spins, jr.key(0), t))(
            jnp.float32(0.5)
        )
        check_spins(out)
        assert out.shape == (8, 8)


# ------------------------------------------------------------------------------ Curie-Weiss
@pytest.mark.parametrize(
    "background_sum",
    [
        37,  # outside = 100 - 64 = 36 frozen spins: |sum| <= 36
        -37,
        35,  # wrong parity: 36 spins of +-1 sum to an even number
        1000,
    ],
)
def test_curie_weiss_rejects_impossible_background_sum(background_sum):
    spins = -jnp.ones((8, 8), jnp.int8)
    model = CurieWeiss()
    with pytest.raises(ValueError, match=r"background_sum=.* is impossible"):
        model.advance_time(spins, jr.key(0), 0.1, background_sum, 100)
    with pytest.raises(ValueError, match=r"background_sum=.* is impossible"):
        model.advance_events(spins, jr.key(0), 4, background_sum, 100)
    with pytest.raises(ValueError, match=r"background_sum=.* is impossible"):
        model.patch_step(spins, jr.key(0), 0.1, MeanField(background_sum, 100))


def test_curie_weiss_accepts_every_possible_background_sum_and_traced_ones():
    spins = -jnp.ones((8, 8), jnp.int8)
    model = CurieWeiss()
    for background_sum in (-36, -2, 0, 36):
        model.advance_time(spins, jr.key(0), 0.01, background_sum, 100)
    # One outside spin: its sum is +-1, never 0.
    with pytest.raises(ValueError, match="impossible"):
        model.advance_time(spins, jr.key(0), 0.01, 0, 65)
    model.advance_time(spins, jr.key(0), 0.01, 1, 65)
    model.advance_time(spins, jr.key(0), 0.01, -1, 65)
    # The whole system (the default): background 0 outside no spins.
    model.advance_time(spins, jr.key(0), 0.01)
    # Traced sums are not checked (built by the tiling inside vmap/jit).
    run = jax.jit(lambda b: model.advance_time(spins, jr.key(0), 0.01, b, 100))
    assert run(jnp.int32(0)).shape == (8, 8)
