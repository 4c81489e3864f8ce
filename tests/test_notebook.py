"""examples/quickstart.ipynb runs top to bottom on a tiny folder, committed without outputs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import make_class_folders

NOTEBOOK = Path(__file__).parents[1] / "examples" / "quickstart.ipynb"


def test_the_notebook_is_committed_without_outputs():
    cells = json.loads(NOTEBOOK.read_text())["cells"]
    code = [c for c in cells if c["cell_type"] == "code"]
    assert code, "the notebook has no code"
    assert all(c["outputs"] == [] and c["execution_count"] is None for c in code)


@pytest.mark.timeout(300)
def test_the_notebook_runs_and_every_result_draws_itself(tmp_path, monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    data = tmp_path / "flowers"
    make_class_folders(data / "train", per_class=6, seed=1, n_classes=3)
    make_class_folders(data / "valid", per_class=2, seed=2, n_classes=3)
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.setenv("PETALNET_QUICKSTART_DATA", str(data))
    monkeypatch.setenv("PETALNET_QUICKSTART_EPOCHS", "2")
    monkeypatch.setenv("PETALNET_CACHE_DIR", str(tmp_path / "cache"))
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbclient.NotebookClient(
        nb, timeout=240, kernel_name="python3", resources={"metadata": {"path": str(work)}}
    ).execute()
    outputs = {
        "".join(c.source).splitlines()[-1]: c.outputs for c in nb.cells if c.cell_type == "code"
    }
    errors = [o for outs in outputs.values() for o in outs if o.output_type == "error"]
    assert not errors
    for line in ("clf", "report", "top"):  # tables, not dict dumps
        html = outputs[line][0]["data"]["text/html"]
        assert "<table>" in html
    assert "accuracy" in outputs["report"][0]["data"]["text/html"]
    for line in (
        "clf.plot_history()",
        "report.plot_confusion()",
        "report.plot_reliability()",
        "report.plot_misclassified()",
        "top.plot()",
    ):
        kinds = {k for o in outputs[line] for k in o.get("data", {})}
        assert "image/png" in kinds, line
    streams = "".join(o.get("text", "") for outs in outputs.values() for o in outs)
    assert "IProgress" not in streams and "TqdmWarning" not in streams
    assert (work / "quickstart-model.pt").is_file()
