"""One figure style for every plotly figure of the package (`style(fig, title)`), applied last.

What it guarantees (and `tests/viz/test_layout_browser.py` checks in headless Chromium at two widths):

- margins grow to fit tick labels, axis titles, colour bars and the legend (plotly's automargin);
- long titles, subplot titles and axis titles are wrapped at word boundaries, and the top margin is
  sized so the figure title never overlaps a subplot title or the plot;
- the legend sits below the plot, anchored to the figure's bottom edge (never over the x-axis title);
- traces drawn on the same axes with identical data are merged into one trace naming both, so no
  line hides under an identical one;
- bars have an outline in their own colour, so a bar at exactly 0 shows as a line (a measured 0),
  not as missing data;
- heat maps always show a colour bar.

Controls (random directions, per seed or per metric) get `control_style(k)`: a grey-to-brown colour
and a dash pattern of their own, so two controls are told apart, and apart from the directions.
"""

from __future__ import annotations

import json
import textwrap
from typing import Any

import plotly.graph_objects as go

PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf", "#bcbd22")
CONTROL_COLORS = ("#7f7f7f", "#a0785a", "#4d4d4d", "#b5a642", "#9e9ac8")
CONTROL_DASHES = ("dash", "dot", "dashdot", "longdash", "longdashdot")
RANDOM_COLOR = CONTROL_COLORS[0]
TITLE_CHARS = 80  # figure titles wrap here (fits a 700 px wide figure at 15 px)
AXIS_CHARS = 48  # axis titles wrap here
SUBPLOT_CHARS = 32  # subplot titles wrap here (half of a 700 px wide figure)


def control_style(k: int) -> dict[str, Any]:
    """Line style of the k-th control (random direction, seed, ...): its own colour and dash.

    Args:
        k: the control's index (0, 1, ...).

    Returns:
        A plotly `line` dict `{"color", "dash"}`.
    """
    return {"color": CONTROL_COLORS[k % len(CONTROL_COLORS)], "dash": CONTROL_DASHES[k % len(CONTROL_DASHES)]}


def wrap(text: str, width: int) -> str:
    """Wrap plain text at word boundaries with plotly's `<br>` (existing `<br>`s are kept).

    Args:
        text: the text.
        width: the most characters per line.

    Returns:
        The wrapped text.
    """
    lines = []
    for part in str(text).split("<br>"):
        lines += textwrap.wrap(part, width=width, break_long_words=False, break_on_hyphens=False) or [""]
    return "<br>".join(lines)


def _lines(text: str | None) -> int:
    return 0 if not text else str(text).count("<br>") + 1


def _same(a: Any, b: Any) -> bool:
    return json.dumps(a, sort_keys=True, default=str) == json.dumps(b, sort_keys=True, default=str)


def merge_identical_traces(fig: go.Figure) -> go.Figure:
    """Merge traces that would be drawn exactly on top of each other (same type, axes, x and y):
    the first keeps its style and is renamed "a = b", the others are removed. Bars are merged only
    when the figure overlays them (grouped or stacked bars sit side by side / on top of each other).

    Args:
        fig: the figure (changed in place).

    Returns:
        The figure.
    """
    keep: list[Any] = []
    for t in fig.data:
        x, y = getattr(t, "x", None), getattr(t, "y", None)
        overlaid = t.type == "bar" and fig.layout.barmode == "overlay"
        if x is None or y is None or not (t.type in ("scatter", "scattergl") or overlaid):
            keep.append(t)
            continue
        axes = (getattr(t, "xaxis", None) or "x", getattr(t, "yaxis", None) or "y")
        twin = next((k for k in keep if k.type == t.type and getattr(k, "x", None) is not None
                     and ((getattr(k, "xaxis", None) or "x"), (getattr(k, "yaxis", None) or "y")) == axes
                     and _same(list(k.x), list(x)) and _same(list(k.y), list(y))
                     and (k.visible if k.visible is not None else True) == (t.visible if t.visible is not None else True)),
                    None)
        if twin is None:
            keep.append(t)
            continue
        if t.name and t.name not in str(twin.name).split(" = "):
            twin.name = f"{twin.name} = {t.name}"
        if t.showlegend is not False:
            twin.showlegend = None if twin.showlegend is False and t.showlegend is None else twin.showlegend
    if len(keep) != len(fig.data):
        fig.data = tuple(keep)
    return fig


def style(fig: go.Figure, title: str, height: int | None = None) -> go.Figure:
    """Apply the package's figure style (see the module docstring) and the title.

    Args:
        fig: the figure (changed in place).
        title: the figure title (wrapped).
        height: the figure height in px (default 420; the title's and legend's lines are added).

    Returns:
        The figure.
    """
    merge_identical_traces(fig)
    title = wrap(title, TITLE_CHARS)
    sub = [a for a in (fig.layout.annotations or ()) if a.yref == "paper" and a.y is not None and a.y >= 0.99]
    if len(sub) == 1 and str(title).startswith(str(sub[0].text)):  # a lone subplot title repeating the title
        fig.layout.annotations = [a for a in fig.layout.annotations if a is not sub[0]]
        sub = []
    for a in sub:  # subplot titles (make_subplots puts them just above each plot)
        a.text = wrap(a.text, SUBPLOT_CHARS)
    sub_lines = max((_lines(a.text) for a in sub), default=0)
    top = 22 + 24 * _lines(title) + (18 * sub_lines + 6 if sub_lines else 10)
    for ax in [k for k in fig.layout if k.startswith(("xaxis", "yaxis"))]:
        axis = fig.layout[ax]
        axis.automargin = True
        if axis.title and axis.title.text:
            axis.title.text = wrap(axis.title.text, AXIS_CHARS)
    for t in fig.data:
        if t.type == "bar":  # a bar at 0 is drawn as a line in its own colour, not as nothing
            color = t.marker.color if isinstance(t.marker.color, str) else None
            t.marker.line = dict(width=2, color=color or "#444444")
        if t.type == "heatmap" and t.showscale is None and not any(
                u.type == "heatmap" and u.showscale is not None for u in fig.data):
            t.showscale = True  # (figures that choose which heat map shows the shared scale keep their choice)
    n_legend = sum(1 for t in fig.data if getattr(t, "showlegend", False) is not False and t.name)
    legend_rows = 0 if n_legend <= 1 and not fig.layout.showlegend else -(-n_legend // 3)
    h = (height or 420) + 24 * (_lines(title) - 1) + 20 * legend_rows
    fig.update_layout(
        title=dict(text=title, x=0.01, xanchor="left", y=1, yref="container", yanchor="top", pad=dict(t=18),
                   font=dict(size=15)),
        template="plotly_white", height=h, margin=dict(l=10, r=10, t=top, b=10, autoexpand=True),
        legend=dict(orientation="h", x=0, xanchor="left", y=0, yref="container", yanchor="bottom"),
        font=dict(size=12),
    )
    return fig
