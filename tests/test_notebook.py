"""notebooks/knowledge_distillation.ipynb: stored clean, and runs end to end on a short schedule."""
from __future__ import annotations

import json
import re

import pytest

from conftest import REPO

nbformat = pytest.importorskip("nbformat", reason="install the test extra: pip install -e .[test]")
nbclient = pytest.importorskip("nbclient", reason="install the test extra: pip install -e .[test]")

NOTEBOOK = REPO / "notebooks" / "knowledge_distillation.ipynb"


def _read():
    return nbformat.read(NOTEBOOK, as_version=4)


def _is_parameters(cell) -> bool:
    return "parameters" in cell.metadata.get("tags", [])


def test_notebook_is_stored_without_outputs():
    nb = _read()
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(not c.outputs and c.execution_count is None for c in code)
    assert _is_parameters(code[0]) and "EPOCHS = 5" in code[0].source


def test_notebook_runs_on_a_short_schedule(tmp_path):
    nb = _read()
    # Like papermill: a cell right after the parameters cell overrides them.
    at = next(i for i, c in enumerate(nb.cells) if _is_parameters(c)) + 1
    out = tmp_path / "run"
    nb.cells.insert(at, nbformat.v4.new_code_cell(
        f"EPOCHS = 1\nTRAIN_SUBSET = 5000\nOUT = {str(out)!r}"))
    # The kernel inherits this process's environment: offline, with the session's data root.
    nbclient.NotebookClient(nb, timeout=300, kernel_name="python3",
                            resources={"metadata": {"path": str(tmp_path)}}).execute()

    text = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    assert "mnist: 5,000 training / 10,000 test images" in text
    accuracy = {name: float(value) / 100 for name, value in
                re.findall(r"^(teacher|distilled student|control \(labels only\))\s+([\d.]+)%",
                           text, re.MULTILINE)}
    assert accuracy["teacher"] > 0.85, text         # one epoch of the CNN on 5,000 images
    assert accuracy["distilled student"] > 0.75, text
    assert accuracy["control (labels only)"] > 0.75, text
    images = [o for c in nb.cells for o in c.get("outputs", []) if "image/png" in o.get("data", {})]
    assert len(images) == 3  # the sample digits, curves + confusion difference, the run's plot

    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["status"] == "complete" and metrics["dataset"]["train_size"] == 5000
    assert (out / "report.html").is_file()
