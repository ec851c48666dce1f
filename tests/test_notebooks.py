"""The notebooks in notebooks/ are committed without outputs and run top to bottom at smoke size.

Each notebook is executed by nbclient in a kernel started from a kernelspec written on the fly
that runs ``sys.executable -m ipykernel_launcher``: the kernel uses this interpreter and its
installed jmacro, whatever ``python3`` kernelspec the machine has. The kernel inherits the
environment, so ``JMACRO_NOTEBOOK_PRESET=smoke`` selects the smoke sizes and
``JMACRO_NOTEBOOK_DIR`` keeps the notebook's data in pytest's temporary directory.
"""

import ast
import json
import math
import os
import pathlib
import re
import sys

import nbclient
import nbformat
import pytest

NOTEBOOKS = sorted((pathlib.Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))
KERNEL_NAME = "jmacro-test-python"
CELL_TIMEOUT_S = 600


def _ids(paths):
    return [path.name for path in paths]


def test_there_are_notebooks():
    assert NOTEBOOKS, "notebooks/ holds no .ipynb file"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=_ids(NOTEBOOKS))
def test_notebook_is_committed_without_outputs(path):
    notebook = nbformat.read(path, as_version=4)
    nbformat.validate(notebook)
    dirty = [
        index
        for index, cell in enumerate(notebook.cells)
        if cell.cell_type == "code" and (cell.outputs or cell.execution_count is not None)
    ]
    assert not dirty, f"{path.name}: cells {dirty} hold outputs; clear them before committing"


@pytest.fixture
def kernel_env(tmp_path, monkeypatch):
    """A kernelspec for this interpreter on JUPYTER_PATH, and the notebooks' environment."""
    spec_dir = tmp_path / "jupyter" / "kernels" / KERNEL_NAME
    spec_dir.mkdir(parents=True)
    spec = {
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "jmacro tests",
        "language": "python",
    }
    (spec_dir / "kernel.json").write_text(json.dumps(spec))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    monkeypatch.setenv("JMACRO_NOTEBOOK_PRESET", "smoke")
    monkeypatch.setenv("JMACRO_NOTEBOOK_DIR", str(tmp_path / "data"))
    # Figures must come back as inline images, whatever backend the caller's environment sets.
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    # At smoke size XLA compilation is nearly all the run time; without LLVM optimisations it
    # compiles about twice as fast (measured: 137 s -> 73 s of CPU), and run time is negligible.
    xla_flags = os.environ.get("XLA_FLAGS", "")
    monkeypatch.setenv("XLA_FLAGS", f"{xla_flags} --xla_backend_optimization_level=0".strip())
    work_dir = tmp_path / "work"
    work_dir.mkdir()
    return work_dir


def _execute(path, work_dir):
    notebook = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(
        notebook,
        kernel_name=KERNEL_NAME,
        timeout=CELL_TIMEOUT_S,
        startup_timeout=120,
        resources={"metadata": {"path": str(work_dir)}},
    )
    try:
        client.execute()
    except nbclient.exceptions.CellExecutionError as error:
        # The message holds the failing cell's source and traceback (minus terminal colours).
        message = re.sub(r"\x1b\[[0-9;]*m", "", str(error))
    else:
        return notebook
    pytest.fail(f"{path.name} failed:\n{message}", pytrace=False)


def _check_figures_rendered(name, notebook):
    for index, cell in enumerate(notebook.cells):
        if cell.cell_type == "code" and "plt.show()" in cell.source:
            images = [out for out in cell.outputs if "image/png" in out.get("data", {})]
            assert images, f"{name}: cell {index} shows a figure but produced no image"


def _last_result(notebook):
    """The text of the last code cell's ``execute_result`` (its final expression)."""
    last = [cell for cell in notebook.cells if cell.cell_type == "code"][-1]
    results = [out for out in last.outputs if out.output_type == "execute_result"]
    assert results, "the last code cell must end with an expression"
    return results[-1]["data"]["text/plain"]


def _check_ising_pipeline(notebook):
    text = _last_result(notebook)
    try:
        errors = ast.literal_eval(text)
    except ValueError:  # nan and inf are not literals
        pytest.fail(f"the errors are not all finite numbers: {text}")
    assert set(errors) == {"ours", "baseline"}
    for method, value in errors.items():
        # A relative squared error is >= 0 and, for a trained model, neither 0 nor infinite.
        assert math.isfinite(value) and value > 0, f"{method}: test error {value}"


RESULT_CHECKS = {"ising_pipeline.ipynb": _check_ising_pipeline}


@pytest.mark.parametrize("path", NOTEBOOKS, ids=_ids(NOTEBOOKS))
def test_notebook_runs_at_smoke_size(path, kernel_env):
    notebook = _execute(path, kernel_env)
    _check_figures_rendered(path.name, notebook)
    RESULT_CHECKS.get(path.name, lambda notebook: None)(notebook)
