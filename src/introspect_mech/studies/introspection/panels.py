"""Introspection figures: injected-thought detection heat maps (layer x strength), coherence by
strength, and self-report vs internal state (projection on the persona direction, behaviour).

Rows are those written by the introspection study (`introspection_grid.jsonl`,
`self_report_track.jsonl`; schemas in `viz.dashboard.PANELS`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, ClassVar, Sequence

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from ...viz.dashboard import Panel, register_panel
from ...viz.figures import PALETTE, _layout, _ordered
from ...viz.rows import PanelRow

Row = dict[str, Any]


def _num(v: Any) -> float | None:
    return None if v is None or (isinstance(v, float) and math.isnan(v)) else float(v)


def detection_heatmaps(rows: Sequence[Row], value: str = "p_yes", condition: str = "concept") -> go.Figure:
    """One heat map per prompt variant: layer (y) x strength (x) -> `value` minus its no-injection control.

    Args:
        rows: `introspection_grid.jsonl` rows (`variant`, `layer`, `strength`, `condition`, the value
            and optionally `control_<value>`, subtracted when present).
        value: the row field shown ("p_yes", "claims", "top1", ...).
        condition: which rows: "concept" or "random" (rows without `condition` count as "concept").

    Returns:
        The figure.
    """
    rows = [r for r in rows if r.get("condition", "concept") == condition]
    variants = _ordered(r.get("variant", "") for r in rows) or [""]
    fig = make_subplots(rows=1, cols=len(variants), subplot_titles=[str(v) for v in variants], horizontal_spacing=0.12)
    grids = []
    for k, v in enumerate(variants):
        sel = [r for r in rows if r.get("variant", "") == v]
        layers = sorted({r["layer"] for r in sel})
        strengths = sorted({r["strength"] for r in sel})
        z, text = [], []
        for L in layers:
            zr, tr = [], []
            for s in strengths:
                r = next((x for x in sel if x["layer"] == L and x["strength"] == s), None)
                val = None if r is None else _num(r.get(value))
                ctl = None if r is None else _num(r.get(f"control_{value}"))
                d = None if val is None else (val - ctl if ctl is not None else val)
                zr.append(d)
                tr.append("" if d is None else f"{d:+.3f}")
            z.append(zr)
            text.append(tr)
        grids.append((k, z, text, strengths, layers))
    # one colour scale for all variants (shown once, on the right), symmetric around 0
    top = max([abs(x) for _, z, *_ in grids for zr in z for x in zr if x is not None] + [1e-9])
    for k, z, text, strengths, layers in grids:
        fig.add_heatmap(z=z, x=[f"{s:g}" for s in strengths], y=[f"L{L}" for L in layers], text=text,
                        texttemplate="%{text}", colorscale="RdBu", zmin=-top, zmax=top, showscale=k == len(variants) - 1,
                        colorbar=dict(title=dict(text="Δ")),
                        row=1, col=k + 1, hovertemplate="strength %{x}<br>%{y}<br>Δ %{z:.4f}<extra></extra>")
        fig.update_xaxes(title_text="injection strength (x raw concept vector)", row=1, col=k + 1)
    fig.update_yaxes(title_text="injection layer", row=1, col=1)
    what = {"p_yes": "P(yes)", "claims": "detection claims", "top1": "identification top-1"}.get(value, value)
    sub = " minus no-injection control" if any(f"control_{value}" in r for r in rows) else ""
    return _layout(fig, f"Injected thought ({condition}): {what}{sub}", height=380)


def identification_heatmaps(rows: Sequence[Row]) -> go.Figure:
    """Identification top-1 accuracy minus chance, layer x strength, per variant.

    Args:
        rows: `introspection_grid.jsonl` rows with `top1` and `chance_top1`.

    Returns:
        The figure (`detection_heatmaps` of top-1 with chance as the control).
    """
    rows = [dict(r, control_top1=r.get("chance_top1")) for r in rows]
    return detection_heatmaps(rows, value="top1", condition="concept")


def coherence_figure(rows: Sequence[Row]) -> go.Figure:
    """Coherence NLL (lower = more fluent) against strength, one line per layer; random dashed.

    Args:
        rows: `introspection_grid.jsonl` rows with `coherence_nll` (others are skipped) and
            `coherence_nll_base` (the strength-0 point).

    Returns:
        The figure.
    """
    fig = go.Figure()
    rows = [r for r in rows if r.get("coherence_nll") is not None]
    seen = set()
    for i, L in enumerate(sorted({r["layer"] for r in rows})):
        for cond, dash in (("concept", "solid"), ("random", "dash")):
            sel = sorted({(r["strength"], r["coherence_nll"]) for r in rows if r["layer"] == L and r["condition"] == cond})
            if not sel or (L, cond) in seen:
                continue
            seen.add((L, cond))
            fig.add_scatter(x=[0.0] + [s for s, _ in sel], y=[rows[0].get("coherence_nll_base")] + [v for _, v in sel],
                            mode="lines+markers", name=f"L{L} {cond}", line=dict(dash=dash, color=PALETTE[i % len(PALETTE)]))
    fig.update_layout(xaxis_title="injection strength", yaxis_title="reference NLL (nats/token)")
    return _layout(fig, "Coherence at each strength (no injection at strength 0)")


def self_report_track_figure(rows: Sequence[Row]) -> go.Figure:
    """Self-report against projection (left) and against behaviour (right), one colour per source.

    Args:
        rows: `self_report_track.jsonl` rows: `source` (steering strengths, finetune checkpoints),
            `self_report`, `projection`, `behaviour`, `x` (sort key) and `label` (strength / step).

    Returns:
        The figure.
    """
    fig = make_subplots(rows=1, cols=2, subplot_titles=["self-report vs projection on the direction",
                                                        "self-report vs behaviour"], horizontal_spacing=0.1)
    for i, src in enumerate(_ordered(r["source"] for r in rows)):
        sel = sorted([r for r in rows if r["source"] == src and r.get("self_report") is not None],
                     key=lambda r: r.get("x", 0))
        for col, xk in ((1, "projection"), (2, "behaviour")):
            fig.add_scatter(x=[r[xk] for r in sel], y=[r["self_report"] for r in sel], mode="markers+lines+text",
                            text=[str(r.get("label", "")) for r in sel], textposition="top center", name=str(src),
                            legendgroup=str(src), showlegend=col == 1,
                            marker=dict(size=10, color=PALETTE[i % len(PALETTE)]), row=1, col=col)
    fig.update_xaxes(title_text="projection of the self-report prompt on the direction", row=1, col=1)
    fig.update_xaxes(title_text="behaviour (misaligned - aligned nats/token; risk: P(risky))", row=1, col=2)
    fig.update_yaxes(title_text="self-report (expected 0-100: alignment / risk)", row=1, col=1)
    return _layout(fig, "Does the self-report track the internal state?", height=440)


def panel_figures(key: str, data: Sequence[Row]) -> list[go.Figure]:
    """The dashboard figures of the two introspection panels.

    Args:
        key: the panel: "introspection" or "self_report_track".
        data: the panel's rows.

    Returns:
        Detection (concept, random), identification and coherence figures, or the self-report figure.

    Raises:
        KeyError: another panel key.
    """
    if key == "introspection":
        return [detection_heatmaps(data, "p_yes", "concept"), detection_heatmaps(data, "p_yes", "random"),
                identification_heatmaps(data), coherence_figure(data)]
    if key == "self_report_track":
        return [self_report_track_figure(data)]
    raise KeyError(key)


@dataclass
class IntrospectionGridRow(PanelRow):
    """One cell of the injected-thought grid (`introspection_grid.jsonl`)."""

    PANEL: ClassVar[str] = "introspection"
    variant: str
    layer: int
    strength: float
    condition: str
    p_yes: float | None
    control_p_yes: float | None = None
    top1: float | None = None
    chance_top1: float | None = None
    coherence_nll: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class SelfReportTrackRow(PanelRow):
    """Self-report against projection and behaviour (`self_report_track.jsonl`)."""

    PANEL: ClassVar[str] = "self_report_track"
    source: str
    label: str
    self_report: float | None
    projection: float | None
    behaviour: float | None
    x: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)


INTROSPECTION = register_panel(Panel(
    "introspection", "Injected-thought introspection", "introspection_grid.jsonl",
    ("variant", "layer", "strength", "condition", "p_yes"),
    "P(yes) to 'Do you detect an injected thought?' with a concept vector (or a norm-matched random "
    "vector) injected, minus the no-injection control, by layer and strength; identification and coherence.",
    render=lambda rows: panel_figures("introspection", rows), numeric=("strength", "p_yes"), row=IntrospectionGridRow))
SELF_REPORT_TRACK = register_panel(Panel(
    "self_report_track", "Self-report vs internal state", "self_report_track.jsonl",
    ("source", "label", "self_report", "projection", "behaviour"),
    "Self-rated alignment against the projection on the persona direction and against behaviour, "
    "across steering strengths and finetune checkpoints.",
    render=lambda rows: panel_figures("self_report_track", rows), numeric=("self_report", "projection"),
    row=SelfReportTrackRow))
