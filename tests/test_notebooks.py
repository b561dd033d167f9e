"""The notebooks in notebooks/ run top to bottom, offline, on a CPU, and assert their own results.

Each notebook is executed with nbclient in a fresh working directory, by an IPython kernel that runs this
interpreter (a kernelspec written for the test, so no other Jupyter installation can change which Python runs
the cells). The tensor cache is the test's own (conftest), so nothing is written to ~/.cache.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((REPO / "notebooks").glob("*.ipynb"))
CELL_TIMEOUT_S = 600


def test_the_notebooks_exist():
    assert {p.name for p in NOTEBOOKS} >= {"quickstart.ipynb", "augmentation.ipynb"}


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_is_stored_without_outputs(path):
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    assert nb.metadata.kernelspec.name == "python3"
    for i, cell in enumerate(nb.cells):
        if cell.cell_type == "code":
            assert not cell.outputs and cell.execution_count is None, (
                f"{path.name} cell {i} has outputs: store notebooks cleared "
                f"(jupyter nbconvert --clear-output --inplace {path.relative_to(REPO)})")


def _kernel_manager(tmp_path: Path):
    from jupyter_client import KernelManager
    from jupyter_client.kernelspec import KernelSpecManager

    kernels = tmp_path / "kernels"
    spec = kernels / "medsynth-test"
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "medsynth test kernel", "language": "python",
        "env": {"IPYTHONDIR": str(tmp_path / "ipython")},
    }))
    return KernelManager(kernel_name="medsynth-test", kernel_spec_manager=KernelSpecManager(kernel_dirs=[str(kernels)]))


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs(path, tmp_path):
    nb = nbformat.read(path, as_version=4)
    work = tmp_path / "work"
    work.mkdir()
    client = nbclient.NotebookClient(nb, km=_kernel_manager(tmp_path), timeout=CELL_TIMEOUT_S,
                                     resources={"metadata": {"path": str(work)}})
    t0 = time.time()
    client.execute()       # raises CellExecutionError, with the cell and its traceback, when a cell fails
    print(f"{path.name}: executed in {time.time() - t0:.0f} s")
    # the cells ran in the kernel we made, and in the temporary working directory
    assert any(work.iterdir()), f"{path.name} wrote nothing into its working directory"
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    assert not errors
