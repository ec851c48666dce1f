"""End-to-end pipelines at smoke size: outputs, caching, resuming, bad input."""

import dataclasses
import json

import numpy as np
import pytest

from jmacro.cli import main
from jmacro.pipelines import PRESETS, get_config, run_spins

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
        assert set(presets) == {"smoke", "quick", "paper"}
        for name, cfg in presets.items():
            assert cfg.experiment == experiment and cfg.preset == name
    assert get_config("ising") is PRESETS["ising"]["quick"]


def test_bad_sizes_are_rejected_before_any_work():
    with pytest.raises(ValueError, match=r"does not tile|power"):
        dataclasses.replace(get_config("ising", "smoke"), patch_sizes=(6,))
    with pytest.raises(ValueError, match="experiment"):
        get_config("potts")
    with pytest.raises(ValueError, match="preset"):
        get_config("ising", "huge")


@pytest.mark.parametrize(
    "argv",
    [
        ["run", "potts"],
        ["run", "ising", "--preset", "huge"],
        ["run"],
        ["run", "ising", "--preset", "smoke", "--out", "/proc/jmacro-cannot-write"],
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
