"""Stage cache: resume without recomputation, rebuild exactly what a changed config touches."""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

import numpy as np
import pytest

from jmacro.io.cache import (
    StageCache,
    StaleStageError,
    canonical_config,
    config_fingerprint,
    describe_difference,
)
from jmacro.io.storage import DatasetWriter, load_dataset


@dataclasses.dataclass(frozen=True)
class DataConfig:
    temperature: float = 2.5
    size: int = 8
    seeds: tuple[int, ...] = (0, 1)


@dataclasses.dataclass(frozen=True)
class RunConfig:
    data: DataConfig = DataConfig()
    learning_rate: float = 1e-3


# ------------------------------------------------------------------------------ fingerprints
def test_fingerprint_ignores_key_order_and_container_kind():
    a = {"x": 1, "y": {"b": 2.5, "a": [1, 2]}}
    b = {"y": {"a": (1, 2), "b": 2.5}, "x": 1}
    assert config_fingerprint(a) == config_fingerprint(b)
    assert config_fingerprint(DataConfig()) == config_fingerprint(dataclasses.asdict(DataConfig()))
    assert config_fingerprint(RunConfig()) == config_fingerprint(dataclasses.asdict(RunConfig()))
    # numpy scalars count as the Python numbers they hold.
    assert config_fingerprint({"t": np.float64(2.5), "n": np.int32(8)}) == config_fingerprint(
        {"t": 2.5, "n": 8}
    )


def test_fingerprint_sees_every_change():
    base = config_fingerprint(RunConfig())
    changed = [
        RunConfig(learning_rate=1e-3 * (1 + 1e-15)),  # last bits of a float
        RunConfig(data=DataConfig(temperature=2.6)),
        RunConfig(data=DataConfig(seeds=(1, 0))),  # order of a list matters
        RunConfig(data=DataConfig(size=9)),
    ]
    fingerprints = {config_fingerprint(c) for c in changed}
    assert base not in fingerprints and len(fingerprints) == len(changed)
    assert config_fingerprint({"x": 1}) != config_fingerprint({"x": 1.0})


def test_fingerprint_is_stable_across_runs_and_machines():
    # A fixed digest: if this changes, every cached run directory silently becomes stale, so a
    # change of the canonical form must be deliberate (update this value and say so).
    # The digest is SHA-256 of '{"a":{"name":"ising","t":0.1},"b":[1,2.5,null,true]}'.
    config = {"b": [1, 2.5, None, True], "a": {"t": 0.1, "name": "ising"}}
    assert config_fingerprint(config) == (
        "80cce4e297f4c9ef6c143e6da731eb7c5866c60cba0d809f1034e09454a82289"
    )


def test_fingerprint_refuses_what_it_cannot_hash_stably():
    with pytest.raises(TypeError, match=r"config\['fn'\] has type function"):
        config_fingerprint({"fn": lambda x: x})
    with pytest.raises(TypeError, match="string keys"):
        config_fingerprint({(1, 2): 3})


# ------------------------------------------------------------------------------ the cache
def write_file(name: str, content: str):
    """A directory-stage build_fn that writes one text file."""

    def build(directory: Path) -> None:
        (directory / name).write_text(content)

    return build


class CountingBuild:
    """A build_fn that records how often it ran and writes arrays derived from the config."""

    def __init__(self, config: DataConfig):
        self.config = config
        self.calls = 0

    def __call__(self, writer: DatasetWriter) -> None:
        self.calls += 1
        rng = np.random.default_rng(self.config.seeds[0])
        writer.add("x", rng.random((3, self.config.size)) * self.config.temperature)
        writer.meta["seeds"] = self.config.seeds


def test_first_call_builds_second_loads_without_calling_build(tmp_path):
    config = DataConfig()
    build = CountingBuild(config)
    first = StageCache(tmp_path).get_or_build("data", config, build)
    assert first.built and first.reason == "missing" and build.calls == 1
    assert first.dataset is not None and first.dataset["x"].shape == (3, 8)
    assert first.dataset.meta["stage"]["fingerprint"] == config_fingerprint(config)
    assert first.dataset.meta["seeds"] == [0, 1]

    resumed = StageCache(tmp_path)  # a new process resuming the run
    second = resumed.get_or_build("data", config, build)
    assert not second.built and second.reason == "cached" and build.calls == 1
    np.testing.assert_array_equal(second.dataset["x"], first.dataset["x"])
    assert second.fingerprint == first.fingerprint
    assert [r.built for r in resumed.history] == [False]


def test_changed_config_rebuilds_and_logs_what_changed(tmp_path, caplog):
    cache = StageCache(tmp_path)
    cache.get_or_build("data", DataConfig(), CountingBuild(DataConfig()))
    new_config = DataConfig(temperature=3.0)
    build = CountingBuild(new_config)
    with caplog.at_level(logging.INFO, logger="jmacro.io.cache"):
        result = cache.get_or_build("data", new_config, build)
    assert result.built and build.calls == 1
    assert "temperature: 2.5 -> 3.0" in result.reason
    assert "temperature: 2.5 -> 3.0" in caplog.text and "rebuilding" in caplog.text
    # The stored data is the new one, and asking again now loads it.
    assert result.dataset.meta["stage"]["config"]["temperature"] == 3.0
    assert not cache.get_or_build("data", new_config, build).built and build.calls == 1
    # Going back to the old config is a change too: never reuse data built for another config.
    assert cache.get_or_build("data", DataConfig(), CountingBuild(DataConfig())).built


def test_force_rebuilds(tmp_path):
    config = DataConfig()
    build = CountingBuild(config)
    cache = StageCache(tmp_path)
    cache.get_or_build("data", config, build)
    result = cache.get_or_build("data", config, build, force=True)
    assert result.built and result.reason == "forced" and build.calls == 2


def test_changing_one_stage_keeps_the_unrelated_stage(tmp_path):
    cfg = RunConfig()
    cache = StageCache(tmp_path)
    data_build, other_build = CountingBuild(cfg.data), CountingBuild(DataConfig(size=4))
    data = cache.get_or_build("data", cfg.data, data_build)
    other = cache.get_or_build("other", {"size": 4}, other_build)

    train = write_file("weights.txt", "w")
    key = {"lr": cfg.learning_rate, "data": data.fingerprint}
    cache.get_or_build_dir("model", key, train)

    # Change only the data config: data and the model (which depends on it) rebuild.
    new = RunConfig(data=DataConfig(temperature=2.0))
    cache2 = StageCache(tmp_path)
    data2 = cache2.get_or_build("data", new.data, CountingBuild(new.data))
    other2 = cache2.get_or_build("other", {"size": 4}, other_build)
    key2 = {"lr": new.learning_rate, "data": data2.fingerprint}
    model2 = cache2.get_or_build_dir("model", key2, train)
    assert [(r.name, r.built) for r in cache2.history] == [
        ("data", True),
        ("other", False),
        ("model", True),
    ]
    assert other_build.calls == 1 and other2.fingerprint == other.fingerprint
    assert model2.reason.startswith("config changed: data:")


def test_resuming_a_finished_run_recomputes_nothing(tmp_path):
    def run(cache: StageCache) -> None:
        data = cache.get_or_build("data", DataConfig(), CountingBuild(DataConfig()))
        cache.get_or_build_dir("model", {"data": data.fingerprint}, write_file("w", "1"))

    run(StageCache(tmp_path))
    again = StageCache(tmp_path)
    run(again)
    assert [r.built for r in again.history] == [False, False]


def test_on_mismatch_error_refuses_stale_data_and_keeps_it(tmp_path):
    StageCache(tmp_path).get_or_build("data", DataConfig(), CountingBuild(DataConfig()))
    strict = StageCache(tmp_path, on_mismatch="error")
    new_config = DataConfig(size=4)
    with pytest.raises(StaleStageError, match="size: 8 -> 4"):
        strict.get_or_build("data", new_config, CountingBuild(new_config))
    assert load_dataset(tmp_path / "data")["x"].shape == (3, 8)


def test_failed_build_stores_nothing_and_the_next_call_builds(tmp_path):
    def broken(writer: DatasetWriter) -> None:
        writer.add("x", np.arange(3))
        raise RuntimeError("simulation blew up")

    cache = StageCache(tmp_path)
    with pytest.raises(RuntimeError, match="blew up"):
        cache.get_or_build("data", DataConfig(), broken)
    assert not (tmp_path / "data").exists()
    build = CountingBuild(DataConfig())
    assert cache.get_or_build("data", DataConfig(), build).built and build.calls == 1


def test_corrupt_stage_is_rebuilt_with_a_warning(tmp_path, caplog):
    cache = StageCache(tmp_path)
    cache.get_or_build("data", DataConfig(), CountingBuild(DataConfig()))
    file = tmp_path / "data" / "x.npy"
    file.write_bytes(file.read_bytes()[:-8])
    build = CountingBuild(DataConfig())
    with caplog.at_level(logging.WARNING, logger="jmacro.io.cache"):
        result = cache.get_or_build("data", DataConfig(), build)
    assert result.built and build.calls == 1 and result.reason.startswith("invalid:")
    assert "x.npy is truncated" in caplog.text
    assert result.dataset["x"].shape == (3, 8)


def test_build_fn_that_returns_arrays_is_told_to_use_the_writer(tmp_path):
    with pytest.raises(TypeError, match=r"writer\.add"):
        StageCache(tmp_path).get_or_build("data", {}, lambda writer: {"x": np.arange(3)})
    assert not (tmp_path / "data").exists()


# ---------------------------------------------------------------------- directory stages
def test_directory_stage_builds_atomically_and_resumes(tmp_path):
    calls = []

    def train(directory: Path) -> None:
        calls.append(directory)
        assert directory != tmp_path / "model"  # builds in a temporary directory
        (directory / "weights.bin").write_bytes(bytes([len(calls)]))

    cache = StageCache(tmp_path)
    first = cache.get_or_build_dir("model", {"lr": 1e-3}, train)
    assert first.built and first.dataset is None and len(calls) == 1
    assert (first.path / "weights.bin").read_bytes() == b"\x01"
    stage = json.loads((first.path / "stage.json").read_text())
    assert stage["fingerprint"] == config_fingerprint({"lr": 1e-3})

    assert not StageCache(tmp_path).get_or_build_dir("model", {"lr": 1e-3}, train).built
    assert len(calls) == 1

    def crashing(directory: Path) -> None:
        (directory / "weights.bin").write_bytes(b"partial")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        cache.get_or_build_dir("model", {"lr": 3e-4}, crashing)
    assert (first.path / "weights.bin").read_bytes() == b"\x01"  # old version intact

    rebuilt = cache.get_or_build_dir("model", {"lr": 3e-4}, train)
    assert rebuilt.built and "lr: 0.001 -> 0.0003" in rebuilt.reason
    assert (rebuilt.path / "weights.bin").read_bytes() == b"\x02"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]  # no leftovers


def test_directory_stage_with_unreadable_stage_file_is_rebuilt(tmp_path):
    cache = StageCache(tmp_path)
    cache.get_or_build_dir("model", {}, write_file("w", "1"))
    (tmp_path / "model" / "stage.json").write_text("{not json")
    result = cache.get_or_build_dir("model", {}, write_file("w", "2"))
    assert result.built and result.reason.startswith("invalid:")
    assert (result.path / "w").read_text() == "2"


def test_bad_stage_names_are_refused(tmp_path):
    with pytest.raises(ValueError, match=r"stage name '\.\./escape' is not allowed"):
        StageCache(tmp_path).get_or_build("../escape", {}, CountingBuild(DataConfig()))


def test_describe_difference_names_the_changed_entries():
    old = canonical_config(RunConfig())
    new = canonical_config(dataclasses.replace(RunConfig(), learning_rate=1e-2))
    assert describe_difference(old, new) == "learning_rate: 0.001 -> 0.01"
    assert describe_difference(old, {**old, "extra": 1}) == "extra added (1)"
    assert describe_difference(old, old) == "fingerprint differs"
