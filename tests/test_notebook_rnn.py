"""The recurrent-models notebook runs top to bottom at smoke size, from the repository root."""
import os

import nbformat
import pytest
from nbclient import NotebookClient

from tests.helpers.runs import notebook_env

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
def test_rnn_notebook_executes(monkeypatch):
    nb = nbformat.read(os.path.join(REPO, "notebooks", "rnn.ipynb"), as_version=4)
    notebook_env(monkeypatch, SYNTHJAX_NOTEBOOK_SMOKE="1", SYNTHJAX_REPO=REPO)
    NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": REPO}}).execute()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    assert sum("image/png" in o.get("data", {}) for o in outputs) >= 3  # samples, canvases, prediction
    text = "".join(o.get("text", "") for o in outputs)
    assert "eval/nll" in text and "eval/neg_elbo" in text and "eval/mse_per_frame" in text and ".gif" in text
