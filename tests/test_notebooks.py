"""Every tutorial in notebooks/ runs top to bottom in a fresh kernel, with small budgets.

The kernel must be this environment's Python, whatever kernel specs the machine has (a
user-wide `python3` spec may point at another Python without mlwidgets). So the tests write
their own `python3` kernel spec, whose command is `sys.executable`, into a temporary folder
and give nbclient a kernel manager that looks only there; nothing is installed anywhere.
"""

from __future__ import annotations

import shutil
import sys
import time
from pathlib import Path

import nbformat
import pytest
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import KernelManager
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
TUTORIALS = ("01-quickstart", "02-sessions-and-checkpoints", "03-export-to-core-ml",
             "04-your-own-images", "05-lesson-overfitting")
BUDGET_VARIABLE = "MLWIDGETS_TUTORIAL_ITERATIONS"
BUDGET = "2"  # iterations: enough for a pause, a resume, and a best checkpoint to choose
CELL_TIMEOUT = 600
# What a notebook must leave behind, from its folder: the point of the tutorial, not a detail.
PRODUCES = {
    "01-quickstart": ["sessions/quickstart/exports/Shapes.mlpackage",
                      "sessions/quickstart/exports/Shapes.mlpackage.zip"],
    "03-export-to-core-ml": [f"sessions/export/exports/{name}" for name in (
        "Shapes.mlpackage", "ShapesHalf.mlpackage", "ShapesInt8.mlpackage",
        "ShapesLegacy.mlmodel")],
    "04-your-own-images": ["my-images/circle", "sessions/my-images-scratch/checkpoints"],
}


def test_the_tutorials_from_the_issue_are_all_there():
    assert [p.stem for p in NOTEBOOKS] == list(TUTORIALS)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebooks_are_stored_clean_with_a_budget_parameter(path: Path):
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    assert nb.metadata.kernelspec.name == "python3"
    assert "widgets" not in nb.metadata, "saved widget state: clear it before committing"
    code = [c for c in nb.cells if c.cell_type == "code"]
    for cell in code:
        assert cell.outputs == [] and cell.execution_count is None, \
            f"{path.name} is stored with outputs: clear them ({cell.source[:60]!r})"
    parameters = code[0]
    assert "parameters" in parameters.metadata.get("tags", []), \
        f"{path.name}: the first code cell is not tagged 'parameters'"
    assert BUDGET_VARIABLE in parameters.source, \
        f"{path.name}: the parameter cell does not read {BUDGET_VARIABLE}"


@pytest.fixture(scope="module")
def kernel_specs(tmp_path_factory: pytest.TempPathFactory) -> KernelSpecManager:
    """A spec manager that knows one kernel, `python3`, running this very interpreter."""
    from ipykernel.kernelspec import write_kernel_spec

    folder = tmp_path_factory.mktemp("kernels")
    write_kernel_spec(folder / "python3")  # its argv starts with sys.executable
    return KernelSpecManager(kernel_dirs=[str(folder)], ensure_native_kernel=False)


@pytest.mark.slow
@pytest.mark.timeout(900)
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs_without_errors(path: Path, tmp_path: Path, kernel_specs,
                                      monkeypatch: pytest.MonkeyPatch):
    # A copy of the notebook alone: what it writes (sessions/, my-images/) lands in tmp_path,
    # and a developer's own sessions next to the real notebooks are not copied along.
    notebook = Path(shutil.copy(path, tmp_path))
    monkeypatch.setenv(BUDGET_VARIABLE, BUDGET)  # the kernel inherits the environment
    monkeypatch.setenv("MLWIDGETS_TUTORIAL_IMAGES", "12")  # shapes a class, where asked
    # The apps (01, 04) never wait for training; run headless, their later cells need it done.
    monkeypatch.setenv("MLWIDGETS_TUTORIAL_WAIT", "1")
    nb = nbformat.read(notebook, as_version=4)
    km = KernelManager(kernel_name="python3", kernel_spec_manager=kernel_specs)
    assert km.kernel_spec.argv[0] == sys.executable
    client = NotebookClient(nb, km=km, timeout=CELL_TIMEOUT,
                            resources={"metadata": {"path": str(tmp_path)}})
    started = time.perf_counter()
    try:
        client.execute()  # raises CellExecutionError, naming the cell, if any cell fails
    finally:  # nbclient leaves running a kernel it was given
        if client.kc is not None:
            client.kc.stop_channels()
        if km.has_kernel:
            km.shutdown_kernel(now=True)
    print(f"{path.name} ran in {time.perf_counter() - started:.1f} s")

    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs
              if o.output_type == "error"]
    assert not errors
    for produced in PRODUCES.get(path.stem, []):
        assert (tmp_path / produced).exists(), f"{path.name} did not write {produced}"
