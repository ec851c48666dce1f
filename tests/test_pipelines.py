"""End-to-end pipelines at smoke size: outputs, caching, resuming, bad input."""

import dataclasses
import json

import numpy as np
import pytest

from jmacro.cli import main
from jmacro.pipelines import PRESETS, get_config, run, run_spins

STAGES = [
    "truth",
    "small",
    "large",
    "pairs",
    "ns64_autoencoder",
    "ns64_sde_ours",
    "ns64_sde_baseline",
    "ns64_evaluation",
]


@pytest.fixture(scope="module")
def ising_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("ising-smoke")
    return run_spins(get_config("ising", "smoke"), run_dir, progress=False)


def test_smoke_run_writes_every_output(ising_run):
    run_dir = ising_run.run_dir
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["experiment"] == "ising" and metrics["preset"] == "smoke"
    assert metrics["wall_time_s"] > 0
    for method in ("ours", "baseline"):
        assert set(metrics["test_error"][method]) == {"64"}
        assert np.isfinite(metrics["test_error"][method]["64"])
        assert metrics["test_error"][method]["64"] > 0
    assert [s.name for s in ising_run.stages] == STAGES
    assert all(s.built for s in ising_run.stages)
    for name in ("report.md", "error_vs_patch_size.png", "trajectories_ns64.png"):
        assert (run_dir / name).stat().st_size > 0
    assert "| 64 | 4 |" in (run_dir / "report.md").read_text()


def test_resuming_a_finished_run_recomputes_nothing(ising_run):
    again = run_spins(get_config("ising", "smoke"), ising_run.run_dir, progress=False)
    assert not any(stage.built for stage in again.stages)
    assert again.metrics["test_error"] == ising_run.metrics["test_error"]


def test_changing_a_parameter_recomputes_only_what_depends_on_it(ising_run):
    cfg = dataclasses.replace(get_config("ising", "smoke"), sde_epochs=3)
    changed = run_spins(cfg, ising_run.run_dir, progress=False)
    built = [s.name for s in changed.stages if s.built]
    assert built == ["ns64_sde_ours", "ns64_sde_baseline", "ns64_evaluation"]


def test_incompatible_run_directory_is_refused_and_left_alone(ising_run):
    before = (ising_run.run_dir / "metrics.json").read_bytes()
    with pytest.raises(ValueError, match="another --out"):
        run_spins(get_config("curie-weiss", "smoke"), ising_run.run_dir, progress=False)
    assert (ising_run.run_dir / "metrics.json").read_bytes() == before


def test_curie_weiss_smoke_runs_end_to_end(tmp_path):
    result = run_spins(get_config("curie-weiss", "smoke"), tmp_path / "cw", progress=False)
    errors = result.metrics["test_error"]
    assert np.isfinite(errors["ours"]["64"]) and np.isfinite(errors["baseline"]["64"])
    # No learned closure for Curie-Weiss: the latent is the magnetisation alone.
    truth = np.load(tmp_path / "cw" / "ns64_evaluation" / "truth.npy")
    assert truth.shape[-1] == 1


def test_every_preset_is_valid_and_quick_is_the_default():
    for experiment, presets in PRESETS.items():
        assert {"smoke", "quick", "paper"} <= set(presets)
        for name, cfg in presets.items():
            assert cfg.experiment == experiment and cfg.preset == name
    assert get_config("ising") is PRESETS["ising"]["quick"]
    assert set(PRESETS) == {"ising", "curie-weiss", "predator-prey"}


def test_bad_sizes_are_rejected_before_any_work():
    with pytest.raises(ValueError, match=r"does not tile|power"):
        dataclasses.replace(get_config("ising", "smoke"), patch_sizes=(6,))
    with pytest.raises(ValueError, match="experiment"):
        get_config("potts")
    with pytest.raises(ValueError, match="preset"):
        get_config("ising", "huge")
    smoke = get_config("predator-prey", "smoke")
    with pytest.raises(ValueError, match="does not divide"):
        dataclasses.replace(smoke, num_patches=3)
    with pytest.raises(ValueError, match="dt"):
        dataclasses.replace(smoke, dt=-0.01)
    with pytest.raises(ValueError, match="sigma"):
        dataclasses.replace(smoke, sigma=-1.0)
    with pytest.raises(ValueError, match="stability"):
        dataclasses.replace(smoke, scaling="physical")  # dt = 0.01 >> dx^2 / 2


@pytest.mark.parametrize(
    "argv",
    [
        ["run", "potts"],
        ["run", "ising", "--preset", "huge"],
        ["run"],
        ["run", "ising", "--preset", "smoke", "--out", "/proc/jmacro-cannot-write"],
        ["run", "predator-prey", "--preset", "smoke", "--num-patches", "3"],
    ],
)
def test_cli_run_bad_input_exits_2(argv, capsys):
    with pytest.raises(SystemExit) as excinfo:
        main(argv)
    assert excinfo.value.code == 2
    assert capsys.readouterr().err or argv == ["run"]


def test_cli_run_help_lists_experiments_and_presets(capsys):
    with pytest.raises(SystemExit) as excinfo:
        main(["run", "--help"])
    assert excinfo.value.code == 0
    out = capsys.readouterr().out
    assert "ising" in out and "curie-weiss" in out and "quick" in out and "paper" in out


PREDATOR_PREY_STAGES = [
    "small",
    "large",
    "pairs",
    "truth",
    "autoencoder",
    "sde_lam1_seed0",
    "sde_lam5_seed0",
    "evaluation",
]


@pytest.fixture(scope="module")
def predator_prey_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("predator-prey-smoke")
    return run(get_config("predator-prey", "smoke"), run_dir, progress=False)


def test_predator_prey_smoke_writes_every_output(predator_prey_run):
    run_dir = predator_prey_run.run_dir
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["experiment"] == "predator-prey" and metrics["preset"] == "smoke"
    assert metrics["wall_time_s"] > 0
    assert set(metrics["mmd_mean"]) == {"1", "5"}
    assert all(np.isfinite(v) and v >= 0 for v in metrics["mmd_mean"].values())
    assert metrics["best_lambda"] in metrics["mmd_mean"]
    for lam in ("1", "5"):
        assert 0.0 <= metrics["diverged_fraction"][lam]["0"] <= 1.0
    assert [s.name for s in predator_prey_run.stages] == PREDATOR_PREY_STAGES
    for name in ("report.md", "mmd_vs_lambda.png", "mmd_over_time.png", "trajectories.png"):
        assert (run_dir / name).stat().st_size > 0
    # MMD at every output time of every test condition: 2 conditions, 20 steps / 10 + 1 times.
    mmd = np.load(run_dir / "evaluation" / "mmd_lam5_seed0.npy")
    assert mmd.shape == (2, 3)
    assert mmd[:, 0] == pytest.approx(0.0, abs=1e-6)  # both ensembles start at the same states
    truth = np.load(run_dir / "evaluation" / "truth.npy")
    assert truth.shape == (2, 4, 3, 4)  # (conditions, runs, times, d = 4)


def test_predator_prey_resume_and_one_new_lambda(predator_prey_run):
    smoke = get_config("predator-prey", "smoke")
    again = run(smoke, predator_prey_run.run_dir, progress=False)
    assert not any(stage.built for stage in again.stages)
    assert again.metrics["mmd_mean"] == predator_prey_run.metrics["mmd_mean"]
    more = run(
        dataclasses.replace(smoke, lambdas=(1.0, 5.0, 10.0)),
        predator_prey_run.run_dir,
        progress=False,
    )
    assert [s.name for s in more.stages if s.built] == ["sde_lam10_seed0", "evaluation"]
    assert {k: more.metrics["mmd_mean"][k] for k in ("1", "5")} == pytest.approx(
        predator_prey_run.metrics["mmd_mean"]
    )
