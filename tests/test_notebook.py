"""docs/notebook.ipynb runs in a real Jupyter kernel (nbclient + ipykernel on this interpreter):
plan, run, open_output, a preview image and a PyTorch batch. The run's cell shows the summary
table (HTML and text), and the live progress bar is drawn in a widget updated in place (not
printed line by line, no warning)."""

import base64
import json
import os
import sys

import nbformat
import pytest
from nbclient import NotebookClient

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOK = os.path.join(ROOT, "docs", "notebook.ipynb")
KERNEL = "pixelbeam-test"


@pytest.fixture
def jupyter_env(tmp_path, monkeypatch):
    """A kernel spec for this interpreter, and Jupyter's and IPython's folders under tmp_path."""
    spec = tmp_path / "jupyter" / "kernels" / KERNEL
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "pixelbeam test", "language": "python"}))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    monkeypatch.setenv("JUPYTER_RUNTIME_DIR", str(tmp_path / "runtime"))
    monkeypatch.setenv("IPYTHONDIR", str(tmp_path / "ipython"))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    work = tmp_path / "work"
    work.mkdir()
    return work


def cell_with(nb, text):
    (cell,) = [c for c in nb.cells if c.cell_type == "code" and text in c.source]
    return cell


def outputs_of(cell, kind):
    return [o for o in cell.outputs if o.output_type in ("execute_result", "display_data") and kind in o.get("data", {})]


def test_the_notebook_runs_in_a_real_kernel(jupyter_env):
    nb = nbformat.read(NOTEBOOK, as_version=4)
    client = NotebookClient(nb, kernel_name=KERNEL, timeout=900, startup_timeout=300,
                            resources={"metadata": {"path": str(jupyter_env)}})
    client.execute()  # raises CellExecutionError, with the traceback, if a cell fails
    out = jupyter_env / "out" / "notebook-demo"
    rows = [json.loads(line) for line in open(out / "manifest.jsonl") if line.strip()]
    counts = {s: sum(r["status"] == s for r in rows) for s in ("written", "filtered", "failed")}
    assert len(rows) == json.load(open(out / "dataset.json"))["patches_planned"] and counts["written"] > 8

    run_cell = cell_with(nb, "pixelbeam.run(")
    (table,) = [o for o in outputs_of(run_cell, "text/html") if o.output_type == "execute_result"]
    html = table.data["text/html"]
    assert "<th>planned</th>" in html and "<th>written</th>" in html
    assert f"<td>{len(rows)}</td><td>{counts['written']}</td><td>{counts['filtered']}</td><td>0</td>" in html
    text = table.data["text/plain"].splitlines()
    assert text[0].split() == ["planned", "written", "filtered", "failed", "seconds", "patches/s"]
    assert text[1].split()[:4] == [str(len(rows)), str(counts["written"]), str(counts["filtered"]), "0"]
    # the progress bar: one widget, updated in place; no warning and no stream of bar lines
    widgets = outputs_of(run_cell, "application/vnd.jupyter.widget-view+json")
    assert len(widgets) == 1
    streams = "".join(o.text for o in run_cell.outputs if o.output_type == "stream")
    assert "ipywidgets" not in streams and "fetch" not in streams and "WARNING" not in streams, streams[:2000]
    state = nb.metadata["widgets"]["application/vnd.jupyter.widget-state+json"]["state"]
    drawn = json.dumps(state[widgets[0].data["application/vnd.jupyter.widget-view+json"]["model_id"]])
    to_fetch = len(rows)
    assert f"{to_fetch}/{to_fetch}" in drawn  # the bar's last frame: every patch fetched

    (image,) = outputs_of(cell_with(nb, "Image(filename=output.preview)"), "image/png")
    assert base64.b64decode(image.data["image/png"]) == (out / "preview.png").read_bytes()
    batch = "".join(o.text for o in cell_with(nb, "NpyPatchDataset").outputs if o.output_type == "stream")
    assert "(8, 3, 64, 64) torch.float32" in batch
    counted = cell_with(nb, "output.counts()").outputs
    assert f"'written': {counts['written']}" in "".join(o.get("text", "") for o in counted)
