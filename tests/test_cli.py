"""The ``jmacro`` command line."""

import json
import logging
import re
import signal
import subprocess
import sys
import time
from types import SimpleNamespace

import pytest
from tqdm import tqdm

import jmacro
from jmacro import pipelines
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


def test_help_lists_every_command_and_version_is_printed(capsys):
    with pytest.raises(SystemExit) as excinfo:
        main(["--help"])
    assert excinfo.value.code == 0
    out = capsys.readouterr().out
    assert "  run " in out and "  simulate " in out and "--version" in out
    with pytest.raises(SystemExit) as excinfo:
        main(["--version"])
    assert excinfo.value.code == 0
    assert capsys.readouterr().out.strip() == f"jmacro {jmacro.__version__}"


def test_python_dash_m_jmacro_is_the_cli():
    done = subprocess.run(
        [sys.executable, "-m", "jmacro", "--version"], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"jmacro {jmacro.__version__}"


@pytest.mark.parametrize("name", ["ising", "curie-weiss", "predator-prey"])
def test_experiment_help_shows_runner_options_and_only_field_docs(name, capsys):
    with pytest.raises(SystemExit) as excinfo:
        main(["run", name, "--preset", "smoke", "--help"])
    assert excinfo.value.code == 0
    out = capsys.readouterr().out
    for option in ("--out DIR", "--store DIR", "--force", "--quiet", "--preset NAME"):
        assert option in out
    title = out.splitlines()[2]  # the experiment's docstring, without reST markup
    assert title and "``" not in title and "--experiment" not in out
    # Comments above fields (e.g. why Ising pairs last 0.5 sweeps) are not help text: each
    # sub-config group is described by its class docstring.
    assert "5x lower error" not in out and "a state-dependent diffusion" not in out
    assert "Partial evolution of one patch of every large snapshot" in out


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--magnetisation", "2"], "--magnetisation must be in [-1, 1]"),
        (["--step-time", "0"], "--step-time must be finite and > 0"),
        (["--step-time", "nan"], "--step-time must be finite and > 0"),
        (["--temperature", "0"], "--temperature must be finite and > 0"),
        (["--num-steps", "0"], "--num-steps must be a positive integer"),
        (["--seed", "-1"], "--seed must be an integer >= 0"),
    ],
)
def test_simulate_rejects_bad_values_naming_the_flag(flags, message, capsys):
    with pytest.raises(SystemExit) as excinfo:
        main(["simulate", "ising", "--size", "8", *flags])
    assert excinfo.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_an_unknown_command_exits_2(capsys):
    with pytest.raises(SystemExit) as excinfo:
        main(["fit"])
    assert excinfo.value.code == 2
    assert "unknown command 'fit'" in capsys.readouterr().err


def test_out_inside_a_file_exits_2_with_a_message(tmp_path, capsys):
    target = tmp_path / "a-file"
    target.write_text("not a run")
    with pytest.raises(SystemExit) as excinfo:
        main(["run", "ising", "--preset", "smoke", "--out", str(target / "run")])
    assert excinfo.value.code == 2
    assert f"cannot write the run directory {target / 'run'}" in capsys.readouterr().err


TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d (INFO|WARNING) jmacro\.")


@pytest.mark.parametrize("quiet", [False, True])
def test_run_logs_timestamped_lines_and_no_bars_off_a_terminal(
    quiet, tmp_path, monkeypatch, capsys
):
    """Off a terminal (pytest's captured stderr) a run gets no progress bars; its messages
    are timestamped lines; ``--quiet`` leaves warnings only."""
    seen = {}

    def fake_run(cfg, run_dir, *, store, force, progress):
        seen["progress"] = progress
        logging.getLogger("jmacro.pipelines.runner").info("stage built")
        logging.getLogger("jmacro.io.cache").warning("stage rebuilt")
        for _ in tqdm(range(3), desc="fit", disable=not progress):
            pass
        keys = ("experiment", "preset", "metric", "wall_time_s", "summary")
        return SimpleNamespace(run_dir=run_dir, metrics=dict.fromkeys(keys))

    monkeypatch.setattr(pipelines, "run", fake_run)
    argv = ["run", "ising", "--preset", "smoke", "--out", str(tmp_path / "run")]
    main(argv + ["--quiet"] * quiet)
    err = capsys.readouterr().err.splitlines()
    assert seen["progress"] is False
    assert "\r" not in "".join(err) and not any("fit" in line for line in err)
    assert all(TIMESTAMP.match(line) for line in err), err
    expected = ["stage rebuilt"] if quiet else ["stage built", "stage rebuilt"]
    assert [line.split(": ", 1)[1] for line in err] == expected


def test_ctrl_c_prints_one_line_and_exits_130(tmp_path):
    """SIGINT during a real run: one line naming the stage store, exit 130, no traceback and
    no crash at shutdown (it segfaulted in 2 of 3 tries before), no temporaries left."""
    out, store = tmp_path / "run", tmp_path / "stages"
    argv = [sys.executable, "-m", "jmacro", "run", "ising", "--preset", "smoke"]
    process = subprocess.Popen(
        [*argv, "--out", str(out), "--store", str(store)],
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
    )
    lines = []
    for line in process.stderr:  # wait until the first stage is being built
        lines.append(line)
        if "building" in line:
            break
    time.sleep(1.0)
    process.send_signal(signal.SIGINT)
    lines += process.stderr.readlines()
    assert process.wait(timeout=60) == 130
    assert lines[-1] == (
        f"jmacro: interrupted; completed stages are kept in {store}; re-run the same command "
        "to resume.\n"
    )
    assert not any("Traceback" in line for line in lines)
    assert not [p for p in store.iterdir() if p.name.startswith(".")]
    assert json.loads((out / "wall_time.json").read_text())["seconds"] > 1.0


@pytest.mark.parametrize("value", ["-1", "nan"])
def test_a_bad_temperature_is_reported_as_a_number(value, tmp_path, capsys):
    with pytest.raises(SystemExit) as excinfo:
        main(["run", "ising", "--preset", "smoke", "--temperature", value, "--out", str(tmp_path)])
    assert excinfo.value.code == 2
    err = capsys.readouterr().err
    assert f"temperature must be finite and > 0, got {float(value)}" in err
    assert "array(" not in err
