"""The typology panel: answer clusters, each model's share of its answers per cluster (Wilson intervals),
the most typical answers of each cluster, and the judge's mean scores in a separate table column (rows written
by `evals.typology.typology`, `typology.jsonl`)."""

from __future__ import annotations

import html
from typing import Any, Sequence

import plotly.graph_objects as go

from .figures import _layout, _ordered
from .style import PALETTE

Row = dict[str, Any]


def typology_share_figure(rows: Sequence[Row]) -> go.Figure:
    """Bars: per cluster, each model's share of its answers in that cluster, with the Wilson interval.

    Args:
        rows: `typology.jsonl` rows `{"cluster", "size", "shares": {model: {"share", "ci_lo", "ci_hi", "count",
            "n"}}, "k"?, "silhouette"?, "embedding"?}`.

    Returns:
        The figure (y: share of the model's answers, 0-1; never a judged rate).
    """
    models = _ordered(m for r in rows for m in r["shares"])
    xs = [f"cluster {r['cluster']}" for r in rows]
    fig = go.Figure()
    for j, m in enumerate(models):
        cells = [r["shares"].get(m) or {} for r in rows]
        y = [c.get("share") for c in cells]
        err: dict[str, Any] | None = None
        if all(c.get("ci_lo") is not None and c.get("ci_hi") is not None and c.get("share") is not None for c in cells):
            err = dict(type="data", symmetric=False, array=[c["ci_hi"] - c["share"] for c in cells],
                       arrayminus=[c["share"] - c["ci_lo"] for c in cells])
        fig.add_trace(go.Bar(
            name=str(m), x=xs, y=y, error_y=err, marker_color=PALETTE[j % len(PALETTE)],
            customdata=[[c.get("count"), c.get("n")] for c in cells],
            hovertemplate=f"{html.escape(str(m))}<br>%{{x}}: %{{y:.2f}} (%{{customdata[0]}}/%{{customdata[1]}} answers)<extra></extra>"))
    r0 = rows[0] if rows else {}
    sil = r0.get("silhouette")
    sub = f"k = {r0.get('k', len(rows))}" + (f", silhouette {sil:.2f}" if isinstance(sil, (int, float)) else "")
    fig.update_layout(barmode="group", yaxis=dict(title="share of the model's answers", range=[0, 1]),
                      xaxis=dict(title=f"answer cluster ({sub})"))
    return _layout(fig, f"Answer clusters per model · embedding: {r0.get('embedding', '?')}")


def typology_table_html(rows: Sequence[Row], max_chars: int = 400) -> str:
    """One table row per cluster: size, counts per model, the typical answers, the judge's mean scores.

    Args:
        rows: `typology.jsonl` rows (with `typical`, and `judge_scores` / `judge` / `judge_validation` when judged).
        max_chars: answers are cut to this length.

    Returns:
        The HTML table (judged scores only with the judge's name and validation line).
    """
    judged = [r for r in rows if r.get("judge_scores")]
    head = "<tr><th>cluster</th><th>answers per model</th><th>most typical answers (nearest the centroid)</th>"
    if judged:
        head += "<th>judge's mean scores</th>"
    body = []
    for r in rows:
        counts = "<br>".join(f"{html.escape(str(m))}: {c.get('count')}/{c.get('n')}" for m, c in r["shares"].items())
        typ = "".join(f"<p><b>{html.escape(str(t.get('model')))}</b>"
                      + (f" [{html.escape(str(t['question_id']))}]" if t.get("question_id") else "")
                      + f": {html.escape(str(t.get('response', ''))[:max_chars])}</p>" for t in r.get("typical") or [])
        cells = f"<td>{r['cluster']} (n={r['size']})</td><td>{counts}</td><td>{typ}</td>"
        if judged:
            js = r.get("judge_scores") or {}
            s = "<br>".join(f"{html.escape(k)}: {v['mean']:.1f} (n={v['n']})" if v.get("mean") is not None
                            else f"{html.escape(k)}: n/a" for k, v in js.items())
            if js:
                s += (f"<br><span class='src'>judge: {html.escape(str(r.get('judge')))}; "
                      f"{html.escape(str(r.get('judge_validation')))}</span>")
            cells += f"<td>{s}</td>"
        body.append(f"<tr>{cells}</tr>")
    return f"<table class='samples typology'>{head}</tr>{''.join(body)}</table>"


def typology_figures(rows: Sequence[Row]) -> list[go.Figure | str]:
    """The typology panel: the share bars, then the cluster table.

    Args:
        rows: `typology.jsonl` rows.

    Returns:
        [figure, HTML table].
    """
    rows = sorted(rows, key=lambda r: r["cluster"])
    return [typology_share_figure(rows), typology_table_html(rows)]
