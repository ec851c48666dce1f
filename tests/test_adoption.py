"""What a new user meets first: shareable output files, float64 mode, wall time across
interrupted runs, the project files."""

import json
import os
import pathlib
import re
import stat
import subprocess
import sys
import time
import tomllib
from types import SimpleNamespace

import jax.random as jr
import numpy as np
import pytest

from jmacro.io import atomic_write_json, save_dataset
from jmacro.models import make_latent_sde
from jmacro.pipelines import get_experiment, report, run, runner
from jmacro.training import save_model

ROOT = pathlib.Path(__file__).resolve().parents[1]
README = ROOT / "README.md"


@pytest.mark.parametrize("umask", [0o022, 0o002])
def test_outputs_follow_the_umask_so_colleagues_can_read_them(tmp_path, umask):
    """Models, datasets and JSON records get the modes any other file would (0644 / 0664
    files, 0755 / 0775 directories), not the 0600 of a private temporary file."""
    previous = os.umask(umask)
    try:
        sde = make_latent_sde(jr.key(0), latent_dim=2)
        save_model(tmp_path / "model", sde, {"kind": "latent_sde", "latent_dim": 2})
        save_dataset(tmp_path / "data", {"x": np.zeros(3, np.float32)}, {"seed": 0})
        atomic_write_json(tmp_path / "record.json", {"a": 1})
    finally:
        os.umask(previous)
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert {p.name for p in files} >= {"model.eqx", "hyperparams.json", "x.npy", "record.json"}
    for path in files:
        assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask, path
    for path in (tmp_path / "model", tmp_path / "data"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o777 & ~umask, path


def test_float64_mode_runs_the_readme_rollout_and_spde_examples():
    """JAX_ENABLE_X64=1 (common among physicists) once broke these two examples with dtype
    errors; they run in a fresh interpreter with it set."""
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    chosen = [b for b in blocks if "rollout(" in b or "PredatorPrey()" in b]
    assert len(chosen) == 2
    code = "import jax\nassert jax.config.jax_enable_x64\n" + "\n".join(chosen)
    done = subprocess.run(
        [sys.executable, "-c", code],
        env={**os.environ, "JAX_ENABLE_X64": "1"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "(100, 11, 2)" in done.stdout


def test_wall_time_adds_up_across_interrupted_calls(tmp_path, monkeypatch):
    """``wall_time_s`` of a resumed run counts the interrupted calls too (it once counted the
    last call only); ``force`` starts the count again."""
    cfg = get_experiment("ising", "smoke", num_seeds=1)

    def interrupted(*args):
        time.sleep(0.3)
        raise KeyboardInterrupt

    monkeypatch.setattr(runner, "_truth", interrupted)
    for _ in range(2):
        with pytest.raises(KeyboardInterrupt):
            run(cfg, tmp_path / "run", progress=False)
    spent = json.loads((tmp_path / "run" / runner.WALL_TIME_FILE).read_text())["seconds"]
    assert spent >= 0.6
    # the rest of the pipeline stubbed out: only the bookkeeping of the runner is under test
    monkeypatch.setattr(runner, "_truth", lambda *args: None)
    monkeypatch.setattr(runner, "_run_scale", lambda *args: SimpleNamespace(dataset={}))
    monkeypatch.setattr(runner, "summarise", lambda *args: {})
    monkeypatch.setattr(runner, "write_report", lambda *args: None)
    metrics = run(cfg, tmp_path / "run", progress=False).metrics
    assert metrics["wall_time_s"] == pytest.approx(spent + metrics["wall_time_this_call_s"])
    forced = run(cfg, tmp_path / "run", force=True, progress=False).metrics
    assert forced["wall_time_s"] == forced["wall_time_this_call_s"] < 0.6


def test_project_files_a_user_looks_for():
    """A licence, a citation, a changelog, supported Pythons, a GPU extra; a README that links
    only to files in the repository."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert "MIT License" in (ROOT / "LICENSE").read_text()
    citation = (ROOT / "CITATION.cff").read_text()
    assert "Scalable learning of macroscopic stochastic dynamics" in citation
    assert "## [" + project["version"] + "]" in (ROOT / "CHANGELOG.md").read_text()
    pythons = [c for c in project["classifiers"] if c.startswith("Programming Language :: Py")]
    assert {f"Programming Language :: Python :: 3.{v}" for v in (11, 12, 13)} <= set(pythons)
    assert any(d.startswith("jax[cuda12]") for d in project["optional-dependencies"]["cuda12"])
    readme = README.read_text()
    targets = re.findall(r"\]\(([^)#]+)", readme)
    assert targets, "the README links to its docs and figures"
    for target in targets:
        assert not target.startswith(("..", "/")), target
        assert (ROOT / target).exists() or target.startswith("https://"), target
    assert "REFERENCE.md" not in readme and "../shared" not in readme


def test_trajectory_plot_clips_and_flags_a_diverging_model(tmp_path, monkeypatch):
    """A baseline whose magnetisation runs off to 8 (seen in a quick run) no longer sets the
    axis: the axis shows the truth, the curve is clipped and the panel and report flag it;
    each test condition gets its own colour; every panel has a y-label."""
    rng = np.random.default_rng(0)
    truth = np.stack([np.full((8, 5, 2), m) for m in (-0.5, 0.5)])  # (C, R, T+1, d)
    truth += 0.05 * rng.normal(size=truth.shape)
    runaway = truth.copy()
    runaway[..., 0] += np.linspace(0.0, 8.0, 5)  # along time
    evaluation = {"times": np.arange(5.0), "truth": truth, "pred_ours": truth, "pred_base": runaway}
    experiment = SimpleNamespace(
        name="ising",
        latent_names=("magnetisation", "domain-wall density"),
        conditions=lambda: ["m0 = -0.5", "m0 = 0.5"],
        time_unit="time (sweeps)",
    )
    variants = [
        SimpleNamespace(name="ours", group="ours"),
        SimpleNamespace(name="base", group="baseline"),
    ]
    figures = []
    monkeypatch.setattr(report, "_save", lambda fig, path, plt: figures.append(fig))
    flags = report.plot_trajectories(tmp_path / "t.png", experiment, evaluation, variants)
    assert flags == ["baseline (magnetisation)"]
    m_axis, dw_axis = figures[0].axes[:2]
    low, high = m_axis.get_ylim()
    assert -1.0 < low < -0.5 and 0.5 < high < 1.0  # the truth's range, not the runaway's 8.5
    assert "off scale" in " ".join(t.get_text() for t in m_axis.texts)
    assert not dw_axis.texts
    assert "magnetisation" in m_axis.get_ylabel() and "per bond" in dw_axis.get_ylabel()
    colours = {line.get_color() for line in m_axis.lines if line.get_linestyle() == "-"}
    assert len(colours) == 2  # one per initial condition
