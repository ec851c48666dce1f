"""The experiment runner at smoke size, for every registered experiment: outputs, caching,
resuming, run-directory ownership, code versions, bad input."""

import ast
import dataclasses
import inspect
import itertools
import json
import pathlib
import re
import textwrap

import jax.random as jr
import numpy as np
import pytest

import jmacro
from jmacro import _versions
from jmacro.cli import main
from jmacro.pipelines import EXPERIMENTS, default_run_dir, get_experiment, run, runner

NAMES = sorted(EXPERIMENTS)


def expected_stages(cfg) -> list[str]:
    """Stage names in build order, once per replicate seed."""
    names = ["truth"]
    for scale in cfg.scales():
        names += [f"{scale.name}_{stage}" for stage in ("small", "large", "pairs", "autoencoder")]
        names += [f"{scale.name}_sde_{v.name}" for v in cfg.sde_variants(scale)]
        names.append(f"{scale.name}_evaluation")
    return names * cfg.num_seeds


@pytest.fixture(scope="module", params=NAMES)
def smoke_run(request, tmp_path_factory):
    root = tmp_path_factory.mktemp(request.param)
    cfg = get_experiment(request.param, "smoke")
    return cfg, run(cfg, root / "run", progress=False)


def test_smoke_run_writes_every_output(smoke_run):
    cfg, result = smoke_run
    metrics = json.loads((result.run_dir / "metrics.json").read_text())
    assert metrics["experiment"] == cfg.name and metrics["preset"] == "smoke"
    assert metrics["wall_time_s"] > 0
    assert [s.name for s in result.stages] == expected_stages(cfg)
    assert [s.seed for s in result.stages][-1] == cfg.seed + cfg.num_seeds - 1
    assert all(s.built for s in result.stages)
    assert metrics["seeds"] == list(range(cfg.seed, cfg.seed + cfg.num_seeds))
    for scale in cfg.scales():
        groups = {v.group for v in cfg.sde_variants(scale)}
        assert set(metrics["summary"][scale.name]) == groups
        for entry in metrics["summary"][scale.name].values():
            assert np.isfinite(entry["mean"]) and entry["mean"] >= 0
            assert entry["num_seeds"] == cfg.num_seeds and entry["se_over_seeds"] >= 0
        for variant in metrics["results"][scale.name].values():
            assert 0.0 <= variant["diverged_fraction"]["mean"] <= 1.0
            assert set(variant["per_condition"]) == set(cfg.conditions())
            assert len(variant["per_replicate"]) == cfg.num_seeds
        floor = metrics["floors"][scale.name]["score"]
        assert np.isfinite(floor["mean"]) and floor["mean"] >= 0
        assert (result.run_dir / f"trajectories_{scale.name}.png").stat().st_size > 0
    assert f"| {cfg.scales()[0].name} |" in (result.run_dir / "report.md").read_text()


def test_resuming_a_finished_run_recomputes_nothing(smoke_run):
    cfg, result = smoke_run
    again = run(cfg, result.run_dir, progress=False)
    assert not any(stage.built for stage in again.stages)
    assert again.metrics["summary"] == result.metrics["summary"]


def test_one_changed_parameter_recomputes_only_what_depends_on_it(smoke_run):
    cfg, result = smoke_run
    if cfg.name == "nbmota":
        # Its SDE retraining costs about 50 s of CI's budget; the stage cache is the same
        # code for every experiment and is checked on the other three.
        pytest.skip("checked on the other experiments")
    changed = dataclasses.replace(cfg, sde=dataclasses.replace(cfg.sde, epochs=3))
    other = run(changed, result.run_dir.parent / "changed", progress=False)
    built = [s.name for s in other.stages if s.built]
    scale = cfg.scales()[0]
    sdes = [f"{scale.name}_sde_{v.name}" for v in cfg.sde_variants(scale)]
    assert built == [*sdes, f"{scale.name}_evaluation"] * cfg.num_seeds


def test_another_config_is_refused_and_the_run_left_untouched(smoke_run):
    cfg, result = smoke_run
    before = (result.run_dir / "metrics.json").read_bytes()
    changed = dataclasses.replace(cfg, seed=1)
    with pytest.raises(ValueError, match="another --out"):
        run(changed, result.run_dir, progress=False)
    assert (result.run_dir / "metrics.json").read_bytes() == before


def test_a_new_code_version_rebuilds_exactly_the_dependent_stages(smoke_run, monkeypatch):
    cfg, result = smoke_run
    monkeypatch.setitem(_versions.VERSIONS, "rollout", _versions.VERSIONS["rollout"] + 1)
    again = run(cfg, result.run_dir, progress=False)
    assert [s.name for s in again.stages if s.built] == [
        f"{scale.name}_evaluation" for scale in cfg.scales()
    ] * cfg.num_seeds


def test_curie_weiss_has_no_learned_closure(smoke_run):
    cfg, result = smoke_run
    if cfg.name != "curie-weiss":
        pytest.skip("Curie-Weiss only")
    truth = np.load(result.stages[-1].path / "truth.npy")
    assert truth.shape[-1] == 1  # the latent is the magnetisation alone


def test_predator_prey_mmd_is_resolved_in_time(smoke_run):
    cfg, result = smoke_run
    if cfg.name != "predator-prey":
        pytest.skip("predator-prey only")
    evaluation = result.stages[-1].path
    # 2 test conditions; 20 steps saved every 10 -> 3 output times.
    mmd = result.metrics["results"]["K5"]["lam5_seed0"]["mmd_over_time"]
    assert len(mmd) == 3
    assert mmd[0] == pytest.approx(0.0, abs=1e-6)  # both ensembles start at the same states
    assert np.load(evaluation / "truth.npy").shape == (2, 4, 3, 4)  # (conditions, runs, t, d)
    more = dataclasses.replace(cfg, lambdas=(1.0, 5.0, 10.0))
    extended = run(more, result.run_dir.parent / "more-lambdas", progress=False)
    built = [s.name for s in extended.stages if s.built]
    assert built == ["K5_sde_lam10_seed0", "K5_evaluation"] * cfg.num_seeds
    old, new = result.metrics["summary"]["K5"], extended.metrics["summary"]["K5"]
    assert {g: new[g]["mean"] for g in old} == {g: old[g]["mean"] for g in old}


@pytest.mark.parametrize("name", NAMES)
def test_every_preset_is_valid_and_quick_is_the_default(name):
    cls = EXPERIMENTS[name]
    assert {"smoke", "quick", "paper"} <= set(cls.presets)
    for preset in cls.presets:
        cfg = get_experiment(name, preset)
        assert cfg.name == name and cfg.preset == preset
        assert default_run_dir(cfg).name == f"{name}-{preset}"
    assert get_experiment(name) == get_experiment(name, "quick")


def test_an_overridden_config_gets_its_own_default_directory():
    quick = get_experiment("ising")
    hotter = get_experiment("ising", temperature=3.0)
    assert default_run_dir(hotter) != default_run_dir(quick)
    assert default_run_dir(hotter).name.startswith("ising-quick-")
    assert default_run_dir(get_experiment("ising", temperature=3.0)) == default_run_dir(hotter)


@pytest.mark.parametrize("name", NAMES)
def test_every_field_is_documented_in_the_cli_help(name, capsys):
    with pytest.raises(SystemExit) as excinfo:
        main(["run", name, "--preset", "smoke", "--help"])
    assert excinfo.value.code == 0
    out = capsys.readouterr().out
    for sub in ("small", "upsampling", "pairs", "autoencoder", "sde", "truth", "evaluation"):
        assert f"--{sub}." in out
    cls = EXPERIMENTS[name]
    for field in dataclasses.fields(cls):
        if field.name != "preset":  # chosen by the runner's --preset, not a parameter
            assert f"--{field.name.replace('_', '-')}" in out


def _field_docstrings(cls) -> set[str]:
    """Fields of ``cls`` (and its bases) followed by a docstring, as tyro reads them."""
    documented = set()
    for klass in cls.__mro__:
        try:
            tree = ast.parse(textwrap.dedent(inspect.getsource(klass)))
        except (OSError, TypeError):
            continue
        body = tree.body[0].body
        for node, after in itertools.pairwise(body):
            is_doc = isinstance(after, ast.Expr) and isinstance(after.value, ast.Constant)
            if isinstance(node, ast.AnnAssign) and is_doc:
                documented.add(node.target.id)
    return documented


@pytest.mark.parametrize("name", NAMES)
def test_every_config_field_has_a_docstring(name):
    cls = EXPERIMENTS[name]
    cfg = get_experiment(name, "smoke")
    documented = _field_docstrings(cls)
    sub_configs = ("small", "upsampling", "pairs", "autoencoder", "sde", "truth", "evaluation")
    for field in dataclasses.fields(cls):
        if field.name in sub_configs:
            sub = type(getattr(cfg, field.name))
            missing = {f.name for f in dataclasses.fields(sub)} - _field_docstrings(sub)
            assert not missing, f"{sub.__name__} fields without a docstring: {missing}"
        else:
            assert field.name in documented, f"{cls.__name__}.{field.name} has no docstring"


def test_bad_sizes_are_rejected_before_any_work():
    with pytest.raises(ValueError, match=r"does not tile|power"):
        get_experiment("ising", "smoke", patch_sizes=(6,))
    with pytest.raises(ValueError, match="experiment"):
        get_experiment("potts")
    with pytest.raises(ValueError, match="preset"):
        get_experiment("ising", "huge")
    with pytest.raises(ValueError, match="does not divide"):
        get_experiment("predator-prey", "smoke", num_patches=3)
    with pytest.raises(ValueError, match="dt"):
        get_experiment("predator-prey", "smoke", dt=-0.01)
    with pytest.raises(ValueError, match="sigma"):
        get_experiment("predator-prey", "smoke", sigma=-1.0)
    with pytest.raises(ValueError, match="stability"):
        get_experiment("predator-prey", "smoke", scaling="physical")  # dt = 0.01 >> dx^2 / 2
    with pytest.raises(ValueError, match="save_every"):
        get_experiment("predator-prey", "smoke", truth=dict(save_every=7))


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


def test_cli_out_pointing_at_a_file_exits_2(tmp_path, capsys):
    target = tmp_path / "a-file"
    target.write_text("not a run")
    with pytest.raises(SystemExit) as excinfo:
        main(["run", "ising", "--preset", "smoke", "--out", str(target), "--quiet"])
    assert excinfo.value.code == 2
    assert "is a file" in capsys.readouterr().err
    assert target.read_text() == "not a run"


def test_cli_run_help_lists_experiments_and_presets(capsys):
    with pytest.raises(SystemExit) as excinfo:
        main(["run", "--help"])
    assert excinfo.value.code == 0
    out = capsys.readouterr().out
    assert all(name in out for name in NAMES) and "quick" in out and "paper" in out


@pytest.mark.parametrize("name", NAMES)
def test_data_hooks_are_reproducible_and_shaped(name):
    """Same key, same arrays: the store's fingerprints (and resuming) rely on it."""
    cfg = get_experiment(name, "smoke")
    system, scale = cfg.system(), cfg.scales()[0]
    small = [cfg.small_data(system, scale, jr.key(0), False)["snapshots"] for _ in range(2)]
    np.testing.assert_array_equal(*small)
    assert small[0].shape[:2] == (cfg.small.num_trajectories, cfg.small.num_steps + 1)
    picked = small[0][:, -1]
    large = [cfg.upsample(system, scale, picked, jr.key(1), False) for _ in range(2)]
    np.testing.assert_array_equal(*large)
    pairs = [cfg.partial_pairs(system, scale, large[0], jr.key(2), False) for _ in range(2)]
    for key in ("patch_after", "dt", "patch_index"):
        np.testing.assert_array_equal(pairs[0][key], pairs[1][key])
    assert pairs[0]["patch_index"].max() < scale.num_patches


@pytest.mark.slow  # about 45 s per experiment: one compile per preset and scale
@pytest.mark.parametrize("name", ["ising", "curie-weiss"])
def test_every_preset_upsamples_at_every_scale(name):
    """Every preset's upsampling runs through every intermediate size (a window as large as an
    intermediate lattice once crashed the paper preset at n_s = 8^2), on one tiny snapshot."""
    for preset in EXPERIMENTS[name].presets:
        cfg = get_experiment(name, preset)
        upsampling = dataclasses.replace(cfg.upsampling, num_random=1, num_unrelaxed=0)
        cfg = dataclasses.replace(cfg, upsampling=upsampling)  # the preset's windows
        system = cfg.system()
        for scale in cfg.scales():
            picked = np.ones((1, scale.small_size, scale.small_size), np.int8)
            large = cfg.upsample(system, scale, picked, jr.key(0), False)
            assert large.shape == (2, cfg.large_size, cfg.large_size)
            assert set(np.unique(large)) <= {-1, 1}


def _tiny(cfg):
    """``cfg`` with every count cut to the minimum: sizes, windows and boundaries stay."""
    replace = dataclasses.replace
    return replace(
        cfg,
        num_seeds=1,
        small=replace(cfg.small, num_trajectories=2, num_steps=2),
        upsampling=replace(
            cfg.upsampling, num_large=2, num_random=1, num_unrelaxed=1, snapshot_every=1
        ),
        autoencoder=replace(cfg.autoencoder, width=4, epochs=1, batch_size=4),
        sde=replace(cfg.sde, epochs=1, batch_size=4),
        truth=replace(
            cfg.truth,
            num_val_runs=2,
            val_steps=2,
            num_test_runs=2,
            test_steps=2 * cfg.truth.save_every,
            reference_steps=min(cfg.truth.reference_steps, 2),
        ),
    )


@pytest.mark.slow  # about 2-4 minutes per experiment: every scale of the paper preset compiles
@pytest.mark.parametrize("name", NAMES)
def test_the_paper_preset_runs_end_to_end_at_tiny_counts(name, tmp_path):
    """Every stage of the ``paper`` preset (its sizes, windows, boundaries, scales and
    variants) runs, at every scale, with the counts cut to a few samples."""
    cfg = _tiny(get_experiment(name, "paper"))
    result = run(cfg, tmp_path / "run", progress=False)
    assert [s.name for s in result.stages] == expected_stages(cfg)
    for scale in cfg.scales():
        for entry in result.metrics["summary"][scale.name].values():
            assert np.isfinite(entry["mean"])


@pytest.mark.parametrize(
    "name",
    ["ising", pytest.param("curie-weiss", marks=pytest.mark.slow)],  # same code path
)
def test_the_reference_semantics_run_end_to_end(name, tmp_path):
    """``pair_events=True``: n-flip steps with random durations for the small data, the pairs
    and the validation runs; the reference protocol's event-stepped test runs are scored."""
    cfg = get_experiment(name, "smoke", pair_events=True, num_seeds=1)
    result = run(cfg, tmp_path / "run", progress=False)
    stages = {s.name: s.dataset for s in result.stages}
    scale = cfg.scales()[0]
    small_dt = np.diff(np.asarray(stages[f"{scale.name}_small"]["times"]), axis=1)
    val_dt = np.diff(np.asarray(stages["truth"]["validation_times"]), axis=1)
    pair_dt = np.asarray(stages[f"{scale.name}_pairs"]["dt"])
    for dt in (small_dt, val_dt, pair_dt):
        assert np.all(dt > 0) and np.std(dt) > 0  # random durations, not a fixed step
    # n flips at heat-bath rates < 1 per site and sweep take more than 1 sweep on average
    assert small_dt.mean() > 1.0
    assert stages["truth"]["reference_test"].shape[2] == cfg.truth.reference_steps + 1
    summary = result.metrics["summary"][scale.name]["ours"]
    assert np.isfinite(summary["reference_score"]["mean"])


def test_a_sub_config_override_keeps_the_presets_other_fields():
    quick = get_experiment("ising", "quick")
    more = get_experiment("ising", "quick", upsampling=dict(num_unrelaxed=7))
    assert more.upsampling == dataclasses.replace(quick.upsampling, num_unrelaxed=7)


@pytest.mark.parametrize(
    ("name", "overrides", "message"),
    [
        ("ising", dict(pairs=dict(boundary="mean_field")), "cannot evolve a patch"),
        ("curie-weiss", dict(pairs=dict(boundary="halo")), "cannot evolve a patch"),
        ("ising", dict(temperature=0.0), "temperature"),
        ("ising", dict(sde=dict(jitter=-1.0)), "jitter"),
        ("ising", dict(sde=dict(learning_rate=float("nan"))), "learning_rate"),
        ("ising", dict(test_magnetisations=()), "no test conditions"),
        ("ising", dict(seed=-1), "seed"),
        ("curie-weiss", dict(num_seeds=0), "num_seeds"),
        ("ising", dict(pairs=dict(duration=float("inf"))), "duration"),
        ("ising", dict(pairs=dict(per_snapshot=0)), "per_snapshot"),
        ("predator-prey", dict(test_k=()), "no test conditions"),
    ],
)
def test_bad_configs_fail_before_any_compute(name, overrides, message):
    with pytest.raises(ValueError, match=message):
        get_experiment(name, "smoke", **overrides)


def test_an_interrupted_fit_resumes_from_its_last_epoch(tmp_path, monkeypatch):
    """Ctrl-C after the autoencoder's first epoch leaves its checkpoint in the store; the
    next run resumes at epoch 2 (it does not start over) and cleans the checkpoint up."""
    cfg = get_experiment("ising", "smoke", num_seeds=1, autoencoder=dict(epochs=2))
    real_fit, epochs = runner.fit, []

    def fit_with(callback):
        return lambda *args, **kwargs: real_fit(*args, **kwargs, callback=callback)

    def interrupt(record, model):
        raise KeyboardInterrupt

    monkeypatch.setattr(runner, "fit", fit_with(interrupt))
    with pytest.raises(KeyboardInterrupt):
        run(cfg, tmp_path / "run", progress=False)
    assert [p.name.split("-")[0] for p in (tmp_path / "stages").glob("*_partial")] == [
        "ns64_autoencoder"
    ]
    monkeypatch.setattr(runner, "fit", fit_with(lambda record, model: epochs.append(record.epoch)))
    run(cfg, tmp_path / "run", progress=False)
    assert epochs[0] == 2  # the autoencoder resumed after its first epoch
    assert epochs[1:] == [1, 2] * len(cfg.sde_variants(cfg.scales()[0]))  # fresh SDE fits
    assert not list((tmp_path / "stages").glob("*_partial"))


def test_load_run_and_the_readme_example_on_a_smoke_run(smoke_run, capsys):
    """``jmacro.load_run`` gives back the run's config, models, memory-mapped data and
    metrics, and the README's "use a trained model" example runs on it as written."""
    cfg, result = smoke_run
    if cfg.name != "ising":
        pytest.skip("the README example is the Ising one")
    loaded = jmacro.load_run(result.run_dir)
    assert loaded.config == cfg and loaded.metrics == json.loads(
        (result.run_dir / "metrics.json").read_text()
    )
    scale = cfg.scales()[0].name
    snapshots = loaded.datasets[f"{scale}_large"]["snapshots"]
    assert isinstance(snapshots, np.memmap) and not snapshots.flags.writeable
    history = loaded.histories[f"seed{cfg.seed + 1}/{scale}_sde_ours"]
    assert [r["epoch"] for r in history] == list(range(1, cfg.sde.epochs + 1))
    readme = (pathlib.Path(__file__).parents[1] / "README.md").read_text()
    (example,) = re.findall(r"```python needs-a-run\n(.*?)```", readme, flags=re.S)
    line = re.search(r'^RUN_DIR, SCALE = "[^"]+", "[^"]+"', example, flags=re.M).group(0)
    example = example.replace(line, f"RUN_DIR, SCALE = {str(result.run_dir)!r}, {scale!r}")
    exec(compile(example, "README.md", "exec"), {})
    printed = capsys.readouterr().out
    assert str(cfg.temperature) in printed and "nan" not in printed


def test_every_report_has_training_curves(smoke_run):
    cfg, result = smoke_run
    report = (result.run_dir / "report.md").read_text()
    for scale in cfg.scales():
        assert (result.run_dir / f"training_{scale.name}.png").stat().st_size > 0
        assert f"![training](training_{scale.name}.png)" in report
    assert "Kept models (best validation loss):" in report
