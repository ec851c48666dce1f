"""The NbMoTa experiment's own pieces: the intra-tile SRO latent, its encoder and pairs, the
tiling of frames from a time window, the data hooks' invariants, and the config's errors.
The end-to-end smoke run is ``tests/test_pipelines.py`` (every registered experiment).

Exact references: brute-force neighbour counting on a small box; the tiled crystal's
composition and vacancy positions; the pair formulas. Sizes are the smoke preset's (4^3-cell
tiles in an 8^3-cell crystal), so the compiled kernels are shared with the smoke run.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

from jmacro import bcc
from jmacro.geometry import BCCTiling3D
from jmacro.models import SROEncoder, build_model, model_hyperparams
from jmacro.observables import short_range_order, short_range_order_interior
from jmacro.pipelines import get_experiment
from jmacro.pipelines.nbmota import temperature_condition, window_picks
from jmacro.scale.alloy import tile_centres
from jmacro.training import encode_partial_evolution_pairs


def brute_force_bonds(occupancy: np.ndarray, tile_cells: int) -> np.ndarray:
    """B[i, j]: ordered first-neighbour pairs (i site, j site) with both sites in the same
    tile (no wrap across the box either), by walking every site and its 8 neighbours."""
    num_cells = occupancy.shape[0]
    bonds = np.zeros((4, 4))
    for cell in np.ndindex(num_cells, num_cells, num_cells):
        for sub in range(2):
            voxel = 2 * np.asarray(cell) + sub
            for offset in bcc.FIRST_SHELL:
                other = voxel + offset  # unwrapped: leaving the box leaves the tile
                if np.any(other < 0) or np.any(other >= 2 * num_cells):
                    continue
                if np.any(other // (2 * tile_cells) != voxel // (2 * tile_cells)):
                    continue
                j = occupancy[(*(other // 2), other[0] % 2)]
                bonds[occupancy[(*cell, sub)], j] += 1
    return bonds


def sro_from_bonds(bonds: np.ndarray) -> np.ndarray:
    z = 8.0 * bonds[1:, 1:] / bonds[1:].sum(axis=1, keepdims=True)
    rows, cols = np.asarray(bcc.SRO_PAIRS).T
    return (z - 8.0 / 3.0)[rows - 1, cols - 1]


@pytest.fixture(scope="module")
def smoke():
    return get_experiment("nbmota", "smoke")


@pytest.fixture(scope="module")
def data(smoke):
    """The smoke preset's hooks in a chain: small runs, tiled crystals, window pairs."""
    system, scale = smoke.system(), smoke.scales()[0]
    small = smoke.small_data(system, scale, jr.key(0), False)
    frames = small["snapshots"].reshape(-1, 4, 4, 4, 2)
    large = smoke.upsample(system, scale, frames, jr.key(1), False)
    pairs = smoke.partial_pairs(system, scale, large, jr.key(2), False)
    return small, large, pairs


# ------------------------------------------------------------------------------ the latent
def test_intra_tile_sro_counts_exactly_the_bonds_inside_tiles():
    occupancy = np.asarray(bcc.random_occupancy(jr.key(0), 4, 5))  # 5 vacancies
    for tile in (2, 4):
        expected = sro_from_bonds(brute_force_bonds(occupancy, tile))
        got = np.asarray(short_range_order_interior(jnp.asarray(occupancy), tile))
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    # ... and its identities: n_i Z_ij symmetric; sum_j delta_ij = -8 B_i,vacancy / n_i
    bonds = brute_force_bonds(occupancy, 2)
    assert np.allclose(bonds, bonds.T)
    matrix = 8.0 * bonds[1:, 1:] / bonds[1:].sum(1, keepdims=True) - 8.0 / 3.0
    np.testing.assert_allclose(matrix.sum(1), -8.0 * bonds[1:, 0] / bonds[1:].sum(1), atol=1e-9)


def test_a_tiled_crystal_has_its_frames_sro_not_the_seams():
    """A crystal of 8 independent frames (no relabelling): its intra-tile SRO is the frames'
    pooled intra-tile SRO exactly, whatever the seams; its whole SRO is not."""
    rng = np.random.default_rng(1)
    frames = []
    for m in range(8):
        # B2-like order: Mo on one sublattice, Ta on the other (70 %), Nb elsewhere; the
        # sublattices swap from tile to tile, so the seams join Mo to Mo and Ta to Ta
        corner = np.where(rng.random((4, 4, 4)) < 0.7, 2, 1)
        centre = np.where(rng.random((4, 4, 4)) < 0.7, 3, 1)
        frame = np.stack([corner, centre], -1).astype(np.int8)
        frame = frame[..., ::-1] if m % 2 else frame
        frame[0, 0, 0, 0] = 0  # one vacancy per frame
        frames.append(np.ascontiguousarray(frame))
    crystal = jnp.zeros((8, 8, 8, 2), jnp.int8)
    tiling = BCCTiling3D(4)
    for m, frame in enumerate(frames):
        crystal = tiling.insert(crystal, m, jnp.asarray(frame))
    pooled = sum(brute_force_bonds(f, 4) for f in frames)
    got = np.asarray(short_range_order_interior(crystal, 4))
    np.testing.assert_allclose(got, sro_from_bonds(pooled), rtol=1e-5, atol=1e-6)
    mota = 4  # strongly ordered inside the frames (about +1.6), anti-ordered at the seams
    assert got[mota] > 1.0
    assert float(short_range_order(crystal)[mota]) < got[mota] - 0.3


def test_encoder_pairs_are_the_window_formulas(smoke, data):
    encoder = build_model(smoke.autoencoder_hyperparams(smoke.scales()[0]))
    assert isinstance(encoder, SROEncoder) and encoder.latent_names == ("NbMo", "NbTa", "MoTa")
    assert encoder.num_patches == 8 and encoder.patch_shape == (4, 4, 4, 2)
    _, large, pairs = data
    n = len(large)
    encoded = {
        method: encode_partial_evolution_pairs(
            encoder, large, pairs["patch_index"], pairs["patch_after"], pairs["dt"],
            method=method, condition=pairs["condition"],
        )
        for method in ("ours", "baseline", "patch")
    }  # fmt: skip
    for i in (0, n - 1):
        before = BCCTiling3D(4).extract(jnp.asarray(large[i]), int(pairs["patch_index"][i]))
        phi_before = np.asarray(encoder.encode_patch(before))
        phi_after = np.asarray(encoder.encode_patch(jnp.asarray(pairs["patch_after"][i])))
        z = np.asarray(encoder.encode(jnp.asarray(large[i])))
        ours, baseline, patch = (encoded[m] for m in ("ours", "baseline", "patch"))
        np.testing.assert_allclose(ours.z0[i], z, atol=1e-6)
        np.testing.assert_allclose(ours.z1[i], z + phi_after - phi_before, atol=1e-5)
        np.testing.assert_allclose(baseline.z1[i], phi_after, atol=1e-6)
        np.testing.assert_allclose(patch.z0[i], phi_before, atol=1e-6)
    all_six = build_model(model_hyperparams("sro_encoder", num_cells=8, tile_cells=4))
    six = np.asarray(all_six.encode(jnp.asarray(large[0])))
    np.testing.assert_allclose(six[[1, 2, 4]], encoder.encode(jnp.asarray(large[0])), atol=1e-7)


# ------------------------------------------------------------------------------ the hooks
def test_upsampled_crystals_are_equimolar_with_one_centred_vacancy_per_tile(smoke, data):
    small, large, pairs = data
    runs, frames = small["snapshots"].shape[:2]
    assert runs == smoke.small.num_trajectories and frames == smoke.small.num_steps + 1
    assert np.all(np.diff(small["times"], axis=1) > 0)  # seconds, exponential waits
    assert large.shape == (2 * smoke.snapshots_per_temperature, 8, 8, 8, 2)
    centres = np.asarray(tile_centres(8, 4))
    for crystal in large:
        counts = np.bincount(crystal.reshape(-1), minlength=4)
        assert counts[0] == 8 and counts[1:].max() - counts[1:].min() <= 1  # equimolar
        at_centres = np.asarray(bcc.gather_sites(jnp.asarray(crystal), jnp.asarray(centres)))
        assert np.all(at_centres == 0)  # the 8 vacancies sit at the 8 tile centres
    assert np.all(pairs["dt"] > 0) and np.all(pairs["patch_index"] < 8)
    temperatures = np.repeat(smoke.train_temperatures, smoke.snapshots_per_temperature)
    np.testing.assert_allclose(pairs["condition"][:, 0], (temperatures - 100) / 2900, rtol=1e-6)
    # hotter windows take less time for the same number of events (mean waiting times)
    half = smoke.snapshots_per_temperature
    assert np.median(pairs["dt"][half:]) < 0.5 * np.median(pairs["dt"][:half])
    # a window evolution moves atoms, never creates or destroys them
    for i in (0, len(large) - 1):
        before = BCCTiling3D(4).extract(jnp.asarray(large[i]), int(pairs["patch_index"][i]))
        np.testing.assert_array_equal(
            np.bincount(np.asarray(before).reshape(-1), minlength=4),
            np.bincount(pairs["patch_after"][i].reshape(-1), minlength=4),
        )


def test_tiles_come_from_one_time_window():
    picks = jax.vmap(lambda k: window_picks(k, 5, 30, 7, 64))(jr.split(jr.key(3), 200))
    run, frame = np.asarray(picks) // 30, np.asarray(picks) % 30
    assert run.min() == 0 and run.max() == 4
    spread = frame.max(axis=1) - frame.min(axis=1)
    assert spread.max() == 6  # within 7 consecutive frames, and 64 tiles fill the window
    assert frame.min() == 0 and frame.max() == 29  # the window reaches both ends of the runs


def test_condition_and_config_errors(smoke):
    np.testing.assert_allclose(temperature_condition([100.0, 3000.0])[:, 0], [0.0, 1.0])
    with pytest.raises(ValueError, match="multiple"):
        get_experiment("nbmota", "smoke", small=dict(num_trajectories=3))
    with pytest.raises(ValueError, match="num_large"):
        get_experiment("nbmota", "smoke", upsampling=dict(num_large=10))
    with pytest.raises(ValueError, match="divide"):
        get_experiment("nbmota", "smoke", large_cells=10)
    with pytest.raises(ValueError, match="closed"):
        get_experiment("nbmota", "smoke", autoencoder=dict(closure_dim=2))
    with pytest.raises(ValueError, match="> 0 K"):
        get_experiment("nbmota", "smoke", test_temperatures=(-5.0,))
    with pytest.raises(ValueError, match="not a file"):
        get_experiment("nbmota", "smoke", barrier="nnk", nnk_weights="/nonexistent/weights.npy")
    paper = get_experiment("nbmota", "paper")  # valid without weights; needs them to run
    with pytest.raises(ValueError, match="--nnk-weights"):
        paper.system()
    assert dataclasses.replace(smoke, barrier="kra").system().temperature == 2000.0


def test_the_coldest_temperature_sets_the_unit_of_time(smoke):
    dt = np.array([1.0, 3.0, 0.01, 0.03], np.float32)  # two cold pairs, two hot ones
    condition = temperature_condition([2000.0, 2000.0, 3000.0, 3000.0])
    assert smoke.model_time_scale(dt, condition) == pytest.approx(2.0)


def test_the_cli_asks_for_the_nnk_weights_before_any_work(tmp_path, capsys):
    from jmacro.cli import main

    with pytest.raises(SystemExit) as excinfo:
        main(["run", "nbmota", "--preset", "paper", "--out", str(tmp_path / "run"), "--quiet"])
    assert excinfo.value.code == 2
    assert "--nnk-weights" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()
