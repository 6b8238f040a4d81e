"""The methods x organisms panel: which locate method recovers which planted mechanism, and which
intervention removes it (rows written by the organisms study, `organisms.jsonl`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Sequence

import plotly.graph_objects as go

from ...viz.dashboard import Panel, register_panel
from ...viz.figures import _layout, _ordered
from ...viz.rows import PanelRow

Row = dict[str, Any]


def _cell(r: Row | None) -> str:
    if r is None:
        return ""
    if r.get("value") is None:
        return "fail" if r.get("error") else "n/a"
    s = f"{r['value']:+.2f}"
    if r.get("ci_lo") is not None and r.get("ci_hi") is not None:
        s += f"<br>[{r['ci_lo']:+.2f}, {r['ci_hi']:+.2f}]"
    if r.get("random") is not None:
        s += f"<br>rnd {r['random']:+.2f}"
    return s


def _heatmap(rows: Sequence[Row], title: str, zmin: float, zmax: float, colorbar: str) -> go.Figure:
    orgs = _ordered(r["organism"] for r in rows)
    methods = _ordered(r["method"] for r in rows)
    find = {(r["organism"], r["method"]): r for r in rows}
    z = [[(find.get((o, m)) or {}).get("value") for o in orgs] for m in methods]
    text = [[_cell(find.get((o, m))) for o in orgs] for m in methods]
    fig = go.Figure(go.Heatmap(z=z, x=orgs, y=methods, text=text, texttemplate="%{text}", zmin=zmin, zmax=zmax,
                               colorscale="RdBu", reversescale=True, colorbar=dict(title=colorbar),
                               hovertemplate="%{y}<br>%{x}<br>%{text}<extra></extra>"))
    fig.update_yaxes(autorange="reversed")
    return _layout(fig, title, height=max(320, 70 * len(methods) + 140))


def organisms_figures(rows: Sequence[Row]) -> list[go.Figure]:
    """Two heatmaps, methods x organisms: recovery cosine with the ground truth at the planted block
    (with the random-direction |cosine| in each cell) and the intervention effects (removed fraction,
    with the mean of norm-matched random directions).

    Args:
        rows: `organisms.jsonl` rows `{"organism", "kind": "recovery"|"intervention", "method",
            "value", "ci_lo"?, "ci_hi"?, "random"?, "error"?}`.

    Returns:
        The recovery and intervention heatmaps (each only when such rows exist).
    """
    out = []
    rec = [r for r in rows if r.get("kind") == "recovery"]
    if rec:
        out.append(_heatmap(rec, "Recovery: cosine of what each method finds with the planted direction (at L)",
                            -1.0, 1.0, "cosine"))
    iv = [r for r in rows if r.get("kind") == "intervention"]
    if iv:
        out.append(_heatmap(iv, "Interventions: fraction of the organism's behaviour removed / created "
                                "(random: norm-matched controls)", -1.0, 1.0, "fraction"))
    return out


@dataclass
class OrganismRow(PanelRow):
    """One method x organism cell (`organisms.jsonl`)."""

    PANEL: ClassVar[str] = "organisms"
    organism: str
    kind: str
    method: str
    value: float | None
    extra: dict[str, Any] = field(default_factory=dict)


ORGANISMS = register_panel(Panel(
    "organisms", "Model organisms: which method finds the planted mechanism", "organisms.jsonl",
    ("organism", "kind", "method", "value"),
    "Methods x organisms with a known, planted mechanism: cosine of each locate method's direction "
    "with the ground truth, and the effect of each intervention, against norm-matched random directions.",
    render=organisms_figures, row=OrganismRow))
