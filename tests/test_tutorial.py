"""The tutorial notebook (docs/tutorial.md, built into docs/tutorial.ipynb) is current and runs."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parents[1] / "docs"


def _builder():
    spec = importlib.util.spec_from_file_location("notebook_build", DOCS / "notebook_build.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_committed_notebook_is_built_from_the_markdown():
    nbformat = pytest.importorskip("nbformat")
    built = _builder().build()
    committed = nbformat.read(str(DOCS / "tutorial.ipynb"), as_version=4)
    assert [(c.cell_type, c.source) for c in committed.cells] == [
        (c.cell_type, c.source) for c in built.cells
    ], "docs/tutorial.ipynb is stale: run python docs/notebook_build.py"
    assert sum(c.cell_type == "code" for c in built.cells) >= 6


@pytest.mark.tutorial
def test_the_notebook_executes_on_two_cores(tmp_path):
    pytest.importorskip("nbclient")
    from nbclient import NotebookClient

    nb = _builder().build()
    client = NotebookClient(
        nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    )
    client.execute()  # raises CellExecutionError, with the cell and its traceback, on an error
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    text = "\n".join(o.get("text", "") for o in outputs if o.get("output_type") == "stream")
    figures = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(figures) >= 4, text  # the terms, latent usage, samples, interpolations
    assert "active units of 10" in text, text
    # the measured ratio is printed, and large: the point of section 4
    ratio = float(re.search(r"score function / reparameterized \(B\): (\S+)", text)[1])
    assert ratio > 10, text
    assert (tmp_path / "runs" / "vae" / "model.safetensors").exists()
