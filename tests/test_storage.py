"""Datasets on disk: round trips, reproducibility, atomic writes, and detection of damage."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

from jmacro.io.atomic import atomic_directory
from jmacro.io.storage import (
    DatasetError,
    DatasetExistsError,
    DatasetNotFoundError,
    DatasetWriter,
    load_dataset,
    save_dataset,
)


def _arrays() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {
        "spins": np.where(rng.random((5, 4, 4)) < 0.5, 1, -1).astype(np.int8),
        "times": rng.random(5).astype(np.float32),
        "field": rng.normal(size=(3, 2)),  # float64
        "flags": np.array([True, False, True]),
        "scalar": np.int64(7),
        "empty": np.zeros((0, 3), np.float32),
    }


def _siblings(path: Path) -> list[str]:
    """Everything next to ``path`` that belongs to it (temporary or set-aside copies)."""
    return sorted(p.name for p in path.parent.iterdir() if p.name.startswith(f".{path.name}."))


def _dead_pid() -> int:
    """A process id that is (almost surely) not running: a child that already exited."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


# --------------------------------------------------------------------------------- round trip
def test_round_trip_is_memory_mapped_read_only_and_exact(tmp_path):
    arrays = _arrays()
    arrays["from_jax"] = jnp.arange(6, dtype=jnp.int32).reshape(2, 3)
    meta = {"seed": 3, "config": {"temperature": 2.5, "sizes": (8, 16)}}
    path = save_dataset(tmp_path / "data", arrays, meta)

    data = load_dataset(path)
    assert sorted(data) == sorted(arrays)
    for name, expected in arrays.items():
        expected = np.asarray(expected)
        assert isinstance(data[name], np.memmap), name
        assert data[name].dtype == expected.dtype, name
        assert data[name].shape == expected.shape, name
        np.testing.assert_array_equal(data[name], expected)
    with pytest.raises(ValueError, match="read-only"):
        data["spins"][0, 0, 0] = 5
    assert data.meta["seed"] == 3
    assert data.meta["config"] == {"temperature": 2.5, "sizes": [8, 16]}
    assert data.meta["format"] == 1
    assert data.meta["arrays"]["spins"]["shape"] == [5, 4, 4]
    # The files are plain .npy: numpy alone can read them.
    np.testing.assert_array_equal(np.load(path / "field.npy"), arrays["field"])

    in_memory = load_dataset(path, mmap=False, verify="full")
    assert not isinstance(in_memory["times"], np.memmap)
    assert not in_memory["times"].flags.writeable
    np.testing.assert_array_equal(in_memory["times"], arrays["times"])


def test_same_arrays_give_identical_files_and_fingerprints(tmp_path):
    arrays = _arrays()
    first = save_dataset(tmp_path / "a", arrays, {"run": 1})
    second = save_dataset(tmp_path / "b", arrays, {"run": 2, "note": "other meta"})
    for name in arrays:
        assert (first / f"{name}.npy").read_bytes() == (second / f"{name}.npy").read_bytes()
    assert load_dataset(first).fingerprint() == load_dataset(second).fingerprint()

    changed = dict(arrays, times=arrays["times"] + np.float32(1e-6))
    third = save_dataset(tmp_path / "c", changed, {"run": 1})
    assert load_dataset(third).fingerprint() != load_dataset(first).fingerprint()
    renamed = {("times2" if k == "times" else k): v for k, v in arrays.items()}
    fourth = save_dataset(tmp_path / "d", renamed, {"run": 1})
    assert load_dataset(fourth).fingerprint() != load_dataset(first).fingerprint()


def test_streamed_writer_matches_save_dataset_bit_for_bit(tmp_path):
    spins = _arrays()["spins"]
    reference = save_dataset(tmp_path / "whole", {"spins": spins, "t": np.float32(1.5)})
    # Known total length, uneven batches.
    with DatasetWriter(tmp_path / "known", {"seed": 0}, lengths={"spins": 5}) as writer:
        for start, stop in [(0, 2), (2, 3), (3, 5)]:
            writer.append("spins", spins[start:stop])
        writer.add("t", np.float32(1.5))
    # Unknown total length.
    with DatasetWriter(tmp_path / "unknown") as writer:
        for row in spins:
            writer.append("spins", row[None])
        writer.add("t", np.float32(1.5))
    for streamed in ("known", "unknown"):
        path = tmp_path / streamed
        assert (path / "spins.npy").read_bytes() == (reference / "spins.npy").read_bytes()
        data = load_dataset(path, verify="full")
        assert data.fingerprint() == load_dataset(reference).fingerprint()
    assert load_dataset(tmp_path / "known").meta["seed"] == 0


def test_streamed_writer_rejects_inconsistent_batches(tmp_path):
    spins = _arrays()["spins"]
    with pytest.raises(ValueError, match="exceeds its expected length 4"):
        with DatasetWriter(tmp_path / "over", lengths={"spins": 4}) as writer:
            writer.append("spins", spins)
    with pytest.raises(DatasetError, match="got 2 rows but 5 were expected"):
        with DatasetWriter(tmp_path / "short", lengths={"spins": 5}) as writer:
            writer.append("spins", spins[:2])
    with pytest.raises(ValueError, match="earlier batches had int8"):
        with DatasetWriter(tmp_path / "dtype") as writer:
            writer.append("spins", spins[:2])
            writer.append("spins", spins[2:].astype(np.int32))
    for name in ("over", "short", "dtype"):
        assert not (tmp_path / name).exists()
        assert _siblings(tmp_path / name) == []


def test_large_batches_stream_without_holding_the_dataset(tmp_path):
    # 40 batches of 1 MiB: the writer only ever holds one batch (nothing to assert on memory
    # cheaply; this checks that many appends give the right content and size).
    batch = np.ones((256, 1024), np.float32)
    with DatasetWriter(tmp_path / "big", lengths={"x": 40 * 256}) as writer:
        for i in range(40):
            writer.append("x", batch * i)
    data = load_dataset(tmp_path / "big")
    assert data["x"].shape == (10240, 1024)
    np.testing.assert_array_equal(data["x"][::256, 0], np.arange(40, dtype=np.float32))


# ---------------------------------------------------------------------------------- overwrite
def test_overwrite_semantics(tmp_path):
    path = tmp_path / "data"
    save_dataset(path, {"x": np.arange(3)}, {"version": 1})
    with pytest.raises(DatasetExistsError, match="overwrite=True"):
        save_dataset(path, {"x": np.arange(4)}, {"version": 2})
    with pytest.raises(FileExistsError):  # also an OSError for callers that catch those
        save_dataset(path, {"x": np.arange(4)})
    assert load_dataset(path).meta["version"] == 1

    save_dataset(path, {"y": np.arange(4)}, {"version": 2}, overwrite=True)
    data = load_dataset(path)
    assert data.meta["version"] == 2 and list(data) == ["y"]
    assert not (path / "x.npy").exists()
    assert _siblings(path) == []  # the old version was deleted once the new one was in place


def test_failed_overwrite_keeps_the_old_dataset(tmp_path):
    path = tmp_path / "data"
    save_dataset(path, {"x": np.arange(3)}, {"version": 1})
    with pytest.raises(RuntimeError, match="simulated crash"):
        with DatasetWriter(path, {"version": 2}, overwrite=True) as writer:
            writer.add("x", np.arange(10))
            raise RuntimeError("simulated crash")
    data = load_dataset(path, verify="full")
    assert data.meta["version"] == 1
    np.testing.assert_array_equal(data["x"], np.arange(3))
    assert _siblings(path) == []


def test_crash_while_moving_the_new_version_in_keeps_the_old_one(tmp_path, monkeypatch):
    import jmacro.io.atomic as atomic

    path = tmp_path / "data"
    save_dataset(path, {"x": np.arange(3)}, {"version": 1})
    real_replace = atomic.os.replace

    def failing_replace(src, dst):
        if ".tmp-" in Path(src).name:  # the rename of the finished build onto `path`
            raise OSError("simulated crash during rename")
        real_replace(src, dst)

    monkeypatch.setattr(atomic.os, "replace", failing_replace)
    with pytest.raises(OSError, match="simulated crash"):
        save_dataset(path, {"x": np.arange(4)}, {"version": 2}, overwrite=True)
    monkeypatch.undo()
    data = load_dataset(path, verify="full")
    assert data.meta["version"] == 1
    assert _siblings(path) == []


def test_overwrite_refuses_to_delete_a_directory_that_is_not_a_dataset(tmp_path):
    path = tmp_path / "precious"
    path.mkdir()
    (path / "thesis.tex").write_text("do not delete")
    with pytest.raises(DatasetError, match="refusing to delete"):
        save_dataset(path, {"x": np.arange(3)}, overwrite=True)
    assert (path / "thesis.tex").read_text() == "do not delete"


# ------------------------------------------------------------------------------ interruptions
@pytest.mark.parametrize("error", [RuntimeError("simulated crash"), KeyboardInterrupt()])
def test_interrupted_build_leaves_nothing_that_loads(tmp_path, error):
    path = tmp_path / "data"
    with pytest.raises(type(error)):
        with DatasetWriter(path, {"seed": 0}) as writer:
            writer.add("a", np.arange(10))
            writer.append("b", np.ones((4, 2)))
            raise error
    assert not path.exists()
    assert _siblings(path) == []
    with pytest.raises(DatasetNotFoundError):
        load_dataset(path)


def test_leftover_of_a_killed_build_never_loads_and_is_cleaned_by_the_next_save(tmp_path):
    path = tmp_path / "data"
    # What a build killed with SIGKILL leaves behind: a half-written hidden temporary directory.
    leftover = tmp_path / f".data.tmp-{_dead_pid()}-0123abcd"
    leftover.mkdir()
    np.save(leftover / "a.npy", np.arange(10))
    with pytest.raises(DatasetNotFoundError, match="interrupted build"):
        load_dataset(path)
    with pytest.raises(DatasetError):
        load_dataset(leftover)  # the temporary directory itself has no meta.json

    save_dataset(path, {"a": np.arange(3)})
    assert not leftover.exists()
    np.testing.assert_array_equal(load_dataset(path)["a"], np.arange(3))


def test_missing_dataset_after_interrupted_overwrite_points_to_the_old_copy(tmp_path):
    path = tmp_path / "data"
    save_dataset(path, {"a": np.arange(3)})
    aside = tmp_path / f".data.old-{_dead_pid()}-0123abcd"
    path.rename(aside)  # a crash between "move old aside" and "move new in"
    with pytest.raises(DatasetNotFoundError, match="rename it back") as info:
        load_dataset(path)
    assert str(aside) in str(info.value)


def test_atomic_directory_for_arbitrary_files(tmp_path):
    path = tmp_path / "checkpoint"
    with atomic_directory(path) as tmp:
        assert tmp.parent == tmp_path and not path.exists()
        (tmp / "weights.eqx").write_bytes(b"\x00\x01")
    assert (path / "weights.eqx").read_bytes() == b"\x00\x01"
    with pytest.raises(ValueError, match="boom"):
        with atomic_directory(path, overwrite=True) as tmp:
            (tmp / "weights.eqx").write_bytes(b"new")
            raise ValueError("boom")
    assert (path / "weights.eqx").read_bytes() == b"\x00\x01"
    assert _siblings(path) == []


# ------------------------------------------------------------------------- damage detection
def _truncate(path: Path) -> None:
    file = path / "times.npy"
    file.write_bytes(file.read_bytes()[:-3])


def _wrong_shape_in_meta(path: Path) -> None:
    meta = json.loads((path / "meta.json").read_text())
    meta["arrays"]["spins"]["shape"] = [5, 4, 5]
    (path / "meta.json").write_text(json.dumps(meta))


def _wrong_dtype_in_meta(path: Path) -> None:
    meta = json.loads((path / "meta.json").read_text())
    meta["arrays"]["times"]["dtype"] = "<f8"
    (path / "meta.json").write_text(json.dumps(meta))


def _unknown_format(path: Path) -> None:
    meta = json.loads((path / "meta.json").read_text())
    meta["format"] = 99
    (path / "meta.json").write_text(json.dumps(meta))


DAMAGE = {
    "missing meta.json": (lambda p: (p / "meta.json").unlink(), "meta.json is missing"),
    "corrupt meta.json": (
        lambda p: (p / "meta.json").write_text('{"format": 1, "arr'),
        "meta.json is not valid JSON",
    ),
    "unknown format": (_unknown_format, "format 99"),
    "truncated npy": (_truncate, "times.npy is truncated"),
    "extra bytes": (
        lambda p: (p / "times.npy").write_bytes((p / "times.npy").read_bytes() + b"\x00"),
        "times.npy is longer than its header says",
    ),
    "missing array file": (lambda p: (p / "spins.npy").unlink(), "spins.npy listed in meta"),
    "wrong shape in meta": (_wrong_shape_in_meta, r"spins.npy holds int8\[5, 4, 4\]"),
    "wrong dtype in meta": (_wrong_dtype_in_meta, "times.npy holds float32"),
    "unexpected file": (
        lambda p: np.save(p / "stray.npy", np.arange(2)),
        r"\['stray.npy'\] are not listed",
    ),
    "corrupt header": (
        lambda p: (p / "spins.npy").write_bytes(b"garbage" * 20),
        "spins.npy has a corrupt .npy header",
    ),
}


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_damaged_dataset_is_refused_with_a_clear_message(tmp_path, damage):
    path = save_dataset(tmp_path / "data", _arrays(), {"seed": 0})
    load_dataset(path)  # intact: loads
    corrupt, message = DAMAGE[damage]
    corrupt(path)
    for verify in ("shape", "full"):
        with pytest.raises(DatasetError, match=message) as info:
            load_dataset(path, verify=verify)
        assert str(path) in str(info.value)
        assert "To fix:" in str(info.value)


def test_full_verification_catches_changed_content(tmp_path):
    path = save_dataset(tmp_path / "data", _arrays())
    file = path / "spins.npy"
    raw = bytearray(file.read_bytes())
    raw[-1] = (raw[-1] + 2) % 256  # same size, same header: only the hash can tell
    file.write_bytes(bytes(raw))
    load_dataset(path, verify="shape")
    with pytest.raises(DatasetError, match=r"content of spins\.npy does not match its sha256"):
        load_dataset(path, verify="full")


def test_missing_dataset_names_the_path(tmp_path):
    path = tmp_path / "nowhere"
    with pytest.raises(DatasetNotFoundError, match=r"no dataset at .*nowhere") as info:
        load_dataset(path)
    assert isinstance(info.value, FileNotFoundError)


# ------------------------------------------------------------------------------- bad inputs
@pytest.mark.parametrize(
    ("arrays", "meta", "error", "message"),
    [
        ({"a/b": np.arange(3)}, {}, ValueError, "array name 'a/b' is not allowed"),
        ({"obj": np.array([{}], dtype=object)}, {}, TypeError, "numeric or bool arrays only"),
        ({"keys": jr.split(jr.key(0), 2)}, {}, TypeError, "key_data"),
        ({"a": np.arange(3)}, {"arrays": 1}, ValueError, "reserved"),
        ({"a": np.arange(3)}, {"f": open}, TypeError, r"meta\['f'\] has type"),
        ({"a": np.arange(3)}, {"big": np.zeros(20_000)}, TypeError, "dataset array"),
    ],
)
def test_bad_inputs_are_refused_before_writing(tmp_path, arrays, meta, error, message):
    path = tmp_path / "data"
    with pytest.raises(error, match=message):
        save_dataset(path, arrays, meta)
    assert not path.exists() and _siblings(path) == []


# -------------------------------------------------------------------------------- allocate
def test_allocated_memmap_is_filled_in_place_and_matches_save_dataset(tmp_path):
    spins = _arrays()["spins"]
    with DatasetWriter(tmp_path / "allocated", {"seed": 0}) as writer:
        out = writer.allocate("spins", spins.shape, np.int8)
        assert isinstance(out, np.memmap) and out.shape == spins.shape
        for start in range(0, len(spins), 2):  # filled batch by batch
            out[start : start + 2] = spins[start : start + 2]
        with pytest.raises(ValueError, match="already written"):
            writer.add("spins", spins)
    reference = save_dataset(tmp_path / "whole", {"spins": spins})
    path = tmp_path / "allocated"
    assert (path / "spins.npy").read_bytes() == (reference / "spins.npy").read_bytes()
    assert load_dataset(path, verify="full").fingerprint() == load_dataset(reference).fingerprint()


def test_appended_batches_of_unknown_length_leave_no_part_files(tmp_path):
    with DatasetWriter(tmp_path / "data") as writer:
        for i in range(3):
            writer.append("x", np.full((2, 3), i, np.float32))
        writer.append("empty", np.zeros((0, 4), np.int8))
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == [
        "empty.npy",
        "meta.json",
        "x.npy",
    ]
    data = load_dataset(tmp_path / "data", verify="full")
    np.testing.assert_array_equal(data["x"][:, 0], [0, 0, 1, 1, 2, 2])
    assert data["empty"].shape == (0, 4)
