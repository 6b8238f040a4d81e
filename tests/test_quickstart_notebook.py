"""examples/quickstart.ipynb runs top to bottom (nbclient, a real kernel): on tiny Qwen by default,
on the embedded model in the slow suite. It runs in a temporary folder and writes only into its own
run directory there (runs/quickstart), and its printed output reads as its comments say."""

from __future__ import annotations

from pathlib import Path

import pytest

NOTEBOOK = Path(__file__).resolve().parents[1] / "examples" / "quickstart.ipynb"


def _execute(monkeypatch, model: str | None, cwd: Path) -> list:
    nbformat = pytest.importorskip("nbformat")
    from nbclient import NotebookClient

    if model is None:
        monkeypatch.delenv("INTROSPECT_MECH_MODEL", raising=False)
    else:
        monkeypatch.setenv("INTROSPECT_MECH_MODEL", model)
    nb = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(cwd)}}).execute()
    return nb.cells


def _text(cell) -> str:
    return "".join(o.get("text", "") for o in cell.get("outputs", []) if o.get("output_type") == "stream")


def test_quickstart_runs_on_tiny_qwen(monkeypatch, tiny_qwen2_dir, tmp_path):
    import re

    cells = [c for c in _execute(monkeypatch, str(tiny_qwen2_dir), tmp_path) if c.cell_type == "code"]
    run = (tmp_path / "runs" / "quickstart").resolve()
    assert f"4 layers, d_model 64; results go to {run}" in _text(cells[0])
    # a value with its CI and n, then one line per item's row (8 themes, one item each): no raw dicts
    out = _text(cells[1])
    assert re.search(r"P\(prefers misaligned\) = \d\.\d{3} \[\d\.\d{3}, \d\.\d{3}\] over 8 items", out), out
    assert len(re.findall(r"^\w+ +[+-]\d+\.\d{3}$", out, re.M)) == 8 and "{" not in out, out
    assert "direction norm at every 4th layer: L0 " in _text(cells[2])
    assert any(o.get("output_type") in ("execute_result", "display_data") and "application/vnd.plotly.v1+json" in o.get("data", {})
               for o in cells[3].outputs), "the probe figure is displayed"
    assert "add random (L2, α=2)" in _text(cells[4]) and "{" not in _text(cells[4])
    assert re.search(r"^bored  -> '.*'", _text(cells[5]), re.M) and re.search(r"^wish   -> ", _text(cells[5]), re.M)
    assert f"dashboard: {run / 'dashboard.html'}" in _text(cells[6])
    # everything it wrote is inside its own run directory
    assert sorted(p.name for p in tmp_path.iterdir()) == ["runs"] and sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["quickstart"]
    assert {"manifest.json", "probe_layers.jsonl", "steering_effects.jsonl", "samples.jsonl", "dashboard.html"} <= {
        p.name for p in run.iterdir()}
    assert len((run / "probe_layers.jsonl").read_text().splitlines()) == 4  # one row per layer


@pytest.mark.slow
def test_quickstart_runs_on_embedded_model(monkeypatch, tmp_path):
    cells = [c for c in _execute(monkeypatch, None, tmp_path) if c.cell_type == "code"]
    assert "30 layers, d_model 576;" in _text(cells[0])
    assert "dashboard.html" in _text(cells[-1])
