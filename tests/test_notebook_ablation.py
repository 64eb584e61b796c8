"""notebooks/ablation.ipynb executes top to bottom (smoke size) and shows its table and plot."""
import os

import nbformat
from nbclient import NotebookClient

from tests.helpers.runs import notebook_env

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOK = os.path.join(REPO, "notebooks", "ablation.ipynb")


def test_ablation_notebook_runs_and_shows_table_and_plot(tmp_path, monkeypatch):
    notebook_env(monkeypatch, ABLATION_WORKDIR=str(tmp_path / "ablation"))
    nb = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(nb, timeout=120, kernel_name="python3", resources={"metadata": {"path": os.path.dirname(NOTEBOOK)}}).execute()
    outputs = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.outputs]
    markdown = "".join(o.get("data", {}).get("text/markdown", "") for o in outputs)
    assert "| objective.loss | n | d_loss |" in markdown and markdown.count("| 3 |") == 2  # two losses, three seeds each
    assert any("image/png" in o.get("data", {}) for o in outputs)
    assert sorted(os.listdir(tmp_path / "ablation"))[:2] == ["d_loss.png", "results.csv"]
    assert {"stack__objective.loss=hinge", "stack__objective.loss=ns"} <= set(os.listdir(tmp_path / "ablation"))
