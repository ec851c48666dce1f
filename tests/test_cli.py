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
