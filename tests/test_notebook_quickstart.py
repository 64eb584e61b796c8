"""The quickstart notebook runs top to bottom (smoke size)."""
import os

import nbformat
import pytest
from nbclient import NotebookClient

from tests.helpers.runs import notebook_env

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
def test_quickstart_notebook_executes(monkeypatch):
    path = os.path.join(REPO, "notebooks", "quickstart.ipynb")
    nb = nbformat.read(path, as_version=4)
    notebook_env(monkeypatch, SYNTHJAX_NOTEBOOK_SMOKE="1", SYNTHJAX_REPO=REPO)
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": os.path.join(REPO, "notebooks")}}).execute()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    assert sum("image/png" in o.get("data", {}) for o in outputs) >= 3
