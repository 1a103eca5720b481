"""notebooks/reproduce.ipynb: stored without outputs, and run headless (nbclient + ipykernel) with tiny
parameters on real MNIST, failing on any cell's error."""

import re
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOK = Path(__file__).parents[1] / "notebooks" / "reproduce.ipynb"
PARAMETERS = {"QUICK", "EPOCHS", "SEEDS", "LONG_EPOCHS", "OUT"}


def read() -> nbformat.NotebookNode:
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    return nb


def parameter_cell(nb: nbformat.NotebookNode) -> nbformat.NotebookNode:
    cells = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(cells) == 1, "the notebook needs exactly one cell tagged 'parameters'"
    return cells[0]


def test_notebook_is_stored_without_outputs():
    nb = read()
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, cell.source[:60]
    names = set(re.findall(r"^(\w+) = ", parameter_cell(nb).source, flags=re.MULTILINE))
    assert names == PARAMETERS  # the test below replaces exactly these


@pytest.mark.slow
def test_notebook_runs_with_tiny_parameters(tmp_path):
    nb = read()
    out = tmp_path / "runs"
    cell = parameter_cell(nb)
    cell.source = re.sub(r"^QUICK = False", "QUICK = True", cell.source, flags=re.MULTILINE)
    cell.source = re.sub(r"^OUT = .*$", f"OUT = {str(out)!r}", cell.source, flags=re.MULTILINE)
    assert "QUICK = True" in cell.source and str(out) in cell.source
    client = NotebookClient(
        nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    )
    client.execute()  # raises CellExecutionError on the first cell that fails
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    text = "".join(o.text for o in outputs if o.output_type == "stream" and o.name == "stdout")
    assert re.search(r"^Train Set: Epoch 2, Average Loss: \d\.\d{6}, lr: 1\.00e-02 \| ", text, re.MULTILINE)
    assert "Train Set: Epoch 3," not in text  # QUICK: 2 epochs
    assert re.search(r"^Test Set: Average Loss: .*\(\d+\.\d\d%\)$", text, re.MULTILINE)
    for letter in "ABC":
        assert f"Claim {letter}: " in text
    assert re.search(r"the shipped model: image: 7 ", text), "the drawn seven is not read as 7"
    pictures = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(pictures) >= 8  # loss curve, 4 plots of the claims, filters, feature maps, the drawing
    last = next(c for c in reversed(nb.cells) if c.cell_type == "code")
    assert any("image/png" in o.get("data", {}) for o in last.outputs), "plots after the report stay inline"
    assert (out.parent / f"{out.name}-quick" / "report.html").is_file()
    fragments = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.get("name") == "stderr"]
    assert sum(o.text.count("\r") for o in fragments) <= 10 * len(nb.cells)  # no pile of progress fragments
