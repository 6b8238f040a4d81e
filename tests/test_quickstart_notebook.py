"""examples/quickstart.ipynb runs top to bottom (nbclient, a real kernel): on tiny Qwen by default,
on the embedded model in the slow suite."""

from __future__ import annotations

from pathlib import Path

import pytest

NOTEBOOK = Path(__file__).resolve().parents[1] / "examples" / "quickstart.ipynb"


def _execute(monkeypatch, model: str | None) -> list:
    nbformat = pytest.importorskip("nbformat")
    from nbclient import NotebookClient

    if model is None:
        monkeypatch.delenv("INTROSPECT_MECH_MODEL", raising=False)
    else:
        monkeypatch.setenv("INTROSPECT_MECH_MODEL", model)
    nb = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(NOTEBOOK.parent)}}).execute()
    return nb.cells


def _text(cell) -> str:
    return "".join(o.get("text", "") for o in cell.get("outputs", []) if o.get("output_type") == "stream")


def test_quickstart_runs_on_tiny_qwen(monkeypatch, tiny_qwen2_dir):
    cells = [c for c in _execute(monkeypatch, str(tiny_qwen2_dir)) if c.cell_type == "code"]
    assert "4 layers, d_model 64" in _text(cells[0])
    assert "P(prefers misaligned)" in _text(cells[1])
    assert any(o.get("output_type") in ("execute_result", "display_data") and "application/vnd.plotly.v1+json" in o.get("data", {})
               for o in cells[3].outputs), "the probe figure is displayed"
    assert "add random" in _text(cells[4])
    assert "dashboard.html" in _text(cells[5])


@pytest.mark.slow
def test_quickstart_runs_on_embedded_model(monkeypatch):
    cells = [c for c in _execute(monkeypatch, None) if c.cell_type == "code"]
    assert "30 layers, d_model 576" in _text(cells[0])
    assert "dashboard.html" in _text(cells[-1])
