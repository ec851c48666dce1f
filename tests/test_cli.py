"""The ``jmacro`` command line."""

import json

import pytest

from jmacro.cli import main


def test_simulate_prints_one_json_record_per_step(capsys):
    main(["simulate", "ising", "--size", "8", "--num-steps", "2", "--num-replicas", "2"])
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["step"] for r in lines] == [1, 2]
    assert lines[1]["time"] > lines[0]["time"] > 0
    assert all(-1 <= r["m"] <= 1 and 0 <= r["domain_wall_density"] <= 1 for r in lines)


def test_simulate_bad_size_exits_with_message(capsys):
    with pytest.raises(SystemExit) as excinfo:
        main(["simulate", "ising", "--size", "1", "--num-steps", "1"])
    assert excinfo.value.code == 2
    assert "at least 2" in capsys.readouterr().err


def test_unknown_system_is_rejected(capsys):
    with pytest.raises(SystemExit) as excinfo:
        main(["simulate", "potts"])
    assert excinfo.value.code == 2


def test_a_bad_config_exits_2_before_any_directory_is_made(tmp_path, capsys):
    out = tmp_path / "run"
    with pytest.raises(SystemExit) as excinfo:
        main(["run", "ising", "--preset", "smoke", "--out", str(out), "--temperature", "-1"])
    assert excinfo.value.code == 2
    assert "temperature" in capsys.readouterr().err
    assert not out.exists()


def test_an_error_during_the_run_is_not_reported_as_a_user_error(tmp_path, monkeypatch):
    """An internal failure keeps its type and traceback (exit status 1 from Python), it is
    not turned into the 'bad input' exit status 2."""
    from jmacro import pipelines

    def broken(*args, **kwargs):
        raise ValueError("operands could not be broadcast together")

    monkeypatch.setattr(pipelines, "run", broken)
    with pytest.raises(ValueError, match="broadcast"):
        main(["run", "ising", "--preset", "smoke", "--out", str(tmp_path / "run")])
