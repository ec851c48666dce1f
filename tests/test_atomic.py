"""The one atomic writer: a file is replaced completely or not at all."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from jmacro.io.atomic import (
    atomic_file,
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
    leftovers,
)


def _siblings(path: Path) -> list[str]:
    return sorted(p.name for p in path.parent.iterdir() if p.name.startswith(f".{path.name}."))


def test_single_file_writers_round_trip(tmp_path):
    atomic_write_bytes(tmp_path / "a.bin", b"\x00\x01")
    atomic_write_text(tmp_path / "sub" / "b.txt", "héllo")  # the parent is created
    atomic_write_json(tmp_path / "c.json", {"b": (1, 2), "a": np.float32(0.5)}, default=float)
    assert (tmp_path / "a.bin").read_bytes() == b"\x00\x01"
    assert (tmp_path / "sub" / "b.txt").read_text(encoding="utf-8") == "héllo"
    assert (tmp_path / "c.json").read_text().endswith("\n")
    assert json.loads((tmp_path / "c.json").read_text()) == {"a": 0.5, "b": [1, 2]}
    atomic_write_bytes(tmp_path / "a.bin", b"new")  # replaces an existing file
    assert (tmp_path / "a.bin").read_bytes() == b"new"
    assert _siblings(tmp_path / "a.bin") == []


@pytest.mark.parametrize("error", [RuntimeError("simulated crash"), KeyboardInterrupt()])
def test_writer_raising_midway_leaves_the_old_file_intact(tmp_path, error):
    path = tmp_path / "state.eqx"
    atomic_write_bytes(path, b"old complete content")
    with pytest.raises(type(error)):
        with atomic_file(path) as f:
            f.write(b"half of the new")
            f.flush()
            raise error
    assert path.read_bytes() == b"old complete content"
    assert _siblings(path) == []  # the temporary is gone too


def test_json_that_cannot_be_encoded_leaves_the_old_file_intact(tmp_path):
    path = tmp_path / "hyperparams.json"
    atomic_write_json(path, {"lr": 1e-3})
    with pytest.raises(TypeError):
        atomic_write_json(path, {"lr": object()})
    assert json.loads(path.read_text()) == {"lr": 1e-3}
    assert _siblings(path) == []


def test_temporaries_of_dead_writers_are_removed_by_the_next_write(tmp_path):
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()  # its pid is (almost surely) free now
    path = tmp_path / "history.json"
    dead = tmp_path / f".history.json.tmp-{child.pid}-0123abcd"
    dead.write_bytes(b"half")
    assert leftovers(path, "tmp") == [dead]
    atomic_write_text(path, "[]")
    assert not dead.exists() and path.read_text() == "[]"
