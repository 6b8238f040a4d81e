"""Behaviour figures: EM rates, steering effects, self-report vs behaviour, self-prediction, training loss.

Every function takes plain rows (dicts, as read from a run directory's JSONL files; the row
schemas are documented in `introspect_mech.viz.dashboard.PANELS` and docs/dashboard.md) and returns
a `plotly.graph_objects.Figure`, so the same figures work in a notebook and in the exported HTML.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any, Iterable, Sequence

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from .style import PALETTE, RANDOM_COLOR, control_style, style  # noqa: F401  (RANDOM_COLOR: public name)

Row = dict[str, Any]


def _ordered(values: Iterable[Any]) -> list[Any]:
    """Unique values in first-seen order."""
    return list(dict.fromkeys(values))


def _err(rows: Sequence[Row], y: str, lo: str = "ci_lo", hi: str = "ci_hi") -> dict[str, Any] | None:
    """Asymmetric error bars from CI fields, or None when the rows carry no CIs."""
    if not all(r.get(lo) is not None and r.get(hi) is not None for r in rows):
        return None
    return dict(type="data", symmetric=False,
                array=[r[hi] - r[y] for r in rows], arrayminus=[r[y] - r[lo] for r in rows])


def _layout(fig: go.Figure, title: str, height: int = 420) -> go.Figure:
    """The package's figure style (`viz.style.style`): every figure of viz ends here."""
    return style(fig, title, height)


def _is_proxy(row: Row) -> bool:
    return row.get("measure") == "proxy" or "proxy" in str(row.get("metric") or "").lower()


def em_rate_figure(rows: Sequence[Row], metric_label: str | None = None) -> go.Figure:
    """EM metric per question, one bar group per model (base vs finetuned vs controls), 95 % CIs.

    Rows: `{"model", "question", "rate", "ci_lo"?, "ci_hi"?, "n"?, "metric"?, "measure"?, "unit"?,
    "method"?}`. A question named `"overall"` is drawn last. Each distinct `metric` (e.g. the EM
    rate under each denominator, a judge-free proxy) gets its own panel with its own y-axis, so two
    denominators never overwrite each other and a proxy (`measure == "proxy"` or "proxy" in its
    metric name) is never drawn on a judged rate's axis; proxies come after the judged panels.

    Args:
        rows: the rows above.
        metric_label: the y-axis label when the rows name no metric (default "EM rate").

    Returns:
        A plotly figure.
    """
    default = metric_label or "EM rate"
    metrics = _ordered(str(r.get("metric") or default) for r in rows) or [default]
    proxy = {str(r.get("metric") or default) for r in rows if _is_proxy(r)}
    metrics = [m for m in metrics if m not in proxy] + [m for m in metrics if m in proxy]
    models = _ordered(r["model"] for r in rows)
    fig = make_subplots(rows=len(metrics), cols=1, subplot_titles=metrics, vertical_spacing=0.12 if len(metrics) > 1 else 0)
    for k, met in enumerate(metrics, start=1):
        mrows = [r for r in rows if str(r.get("metric") or default) == met]
        questions = _ordered(r["question"] for r in mrows)
        if "overall" in questions:
            questions = [q for q in questions if q != "overall"] + ["overall"]
        for i, m in enumerate(models):
            by_q = {r["question"]: r for r in mrows if r["model"] == m}  # keyed by (model, metric, question)
            sel = [by_q[q] for q in questions if q in by_q]
            if not sel:
                continue
            fig.add_bar(
                name=str(m), legendgroup=str(m), showlegend=k == 1 or m not in {r["model"] for r in rows
                                                                              if str(r.get("metric") or default) in metrics[: k - 1]},
                x=[r["question"] for r in sel], y=[r["rate"] for r in sel],
                error_y=_err(sel, "rate"), marker_color=PALETTE[i % len(PALETTE)],
                customdata=[[r.get("n"), r.get("unit") or "", r.get("method") or ""] for r in sel],
                hovertemplate="%{x}<br>%{y:.3f} (n=%{customdata[0]} %{customdata[1]}; %{customdata[2]})<extra>"
                + str(m) + "</extra>", row=k, col=1,
            )
        fig.update_yaxes(title_text="proxy (not a rate)" if met in proxy else "rate", row=k, col=1)
    fig.update_layout(barmode="group")
    title = "EM rate per question (95 % CI)" if len(metrics) > 1 else f"{metrics[0]} per question (95 % CI)"
    return _layout(fig, title, height=max(420, 320 * len(metrics)))


def steering_effect_figure(rows: Sequence[Row]) -> go.Figure:
    """Effect of interventions (add to base, ablate in the finetune, random controls) on the EM metric.

    Rows: `{"model", "intervention", "metric", "ci_lo"?, "ci_hi"?, "n"?, "metric_name"?, "subset"?}`; one bar
    group per model, one bar per intervention ("none", "add persona", "add random", ...); random controls
    hatched, each in its own control colour. `subset` (the items evaluated) goes into the title.

    Args:
        rows: the rows above.

    Returns:
        A plotly figure.
    """
    interventions = _ordered(r["intervention"] for r in rows)
    models = _ordered(r["model"] for r in rows)
    fig = go.Figure()
    n_random = 0
    for i, iv in enumerate(interventions):
        by_m = {r["model"]: r for r in rows if r["intervention"] == iv}
        sel = [by_m[m] for m in models if m in by_m]
        is_random = "random" in str(iv)
        color = control_style(n_random)["color"] if is_random else PALETTE[i % len(PALETTE)]
        n_random += is_random
        fig.add_bar(name=str(iv), x=[r["model"] for r in sel], y=[r["metric"] for r in sel],
                    error_y=_err(sel, "metric"), marker_color=color, customdata=[r.get("n") for r in sel],
                    hovertemplate="%{x} + " + str(iv) + "<br>%{y:.4g} (n=%{customdata})<extra></extra>",
                    marker_pattern_shape="/" if is_random else "")
    label = (rows[0].get("metric_name") if rows else None) or "EM metric"
    subsets = _ordered(r["subset"] for r in rows if r.get("subset"))
    on = f" on {'; '.join(subsets)}" if subsets else ""
    fig.update_layout(barmode="group", yaxis_title=label, xaxis_title="model")
    return _layout(fig, f"Interventions{on}: {label} (95 % CI)")


def self_report_scatter(rows: Sequence[Row]) -> go.Figure:
    """Self-report vs behaviour, one point per model (and question), diagonal for reference.

    Rows: `{"model", "behaviour", "self_report", "question"?, "behaviour_lo"?, "behaviour_hi"?,
    "self_report_lo"?, "self_report_hi"?, "behaviour_name"?, "self_report_name"?}`.

    Args:
        rows: the rows above.

    Returns:
        A plotly figure.
    """
    fig = go.Figure()
    for i, m in enumerate(_ordered(r["model"] for r in rows)):
        sel = [r for r in rows if r["model"] == m]
        fig.add_scatter(
            name=str(m), mode="markers+text", x=[r["behaviour"] for r in sel], y=[r["self_report"] for r in sel],
            text=[r.get("question", "") for r in sel], textposition="top center",
            marker=dict(size=12, color=PALETTE[i % len(PALETTE)]),
            error_x=_err(sel, "behaviour", "behaviour_lo", "behaviour_hi"),
            error_y=_err(sel, "self_report", "self_report_lo", "self_report_hi"),
        )
    xs = [r["behaviour"] for r in rows] + [r["self_report"] for r in rows]
    lo, hi = (min(xs + [0.0]), max(xs + [1.0])) if xs else (0.0, 1.0)
    fig.add_scatter(x=[lo, hi], y=[lo, hi], mode="lines", name="report = behaviour",
                    line=dict(dash="dot", color="#aaaaaa"))
    r0 = rows[0] if rows else {}
    fig.update_layout(xaxis_title=r0.get("behaviour_name", "behaviour"),
                      yaxis_title=r0.get("self_report_name", "self-report"))
    return _layout(fig, "Self-report vs behaviour")


def self_prediction_figure(rows: Sequence[Row]) -> go.Figure:
    """Self-prediction accuracy per task/property: self vs cross prediction, with the mode baseline.

    Rows: `{"task", "kind" ("self"|"cross"|...), "accuracy", "ci_lo"?, "ci_hi"?, "mode_baseline"?, "n"?}`
    (`task` is e.g. "animals/first_character").

    Args:
        rows: the rows above.

    Returns:
        A plotly figure.
    """
    tasks = _ordered(r["task"] for r in rows)
    fig = go.Figure()
    for i, kind in enumerate(_ordered(r["kind"] for r in rows)):
        by_t = {r["task"]: r for r in rows if r["kind"] == kind}
        sel = [by_t[t] for t in tasks if t in by_t]
        fig.add_bar(name=f"{kind}-prediction", x=[r["task"] for r in sel], y=[r["accuracy"] for r in sel],
                    error_y=_err(sel, "accuracy"), marker_color=PALETTE[i % len(PALETTE)])
    base: dict[str, float] = {}
    for r in rows:
        if r.get("mode_baseline") is not None:
            base.setdefault(r["task"], r["mode_baseline"])
    if base:
        fig.add_scatter(name="mode baseline", x=list(base), y=list(base.values()), mode="markers",
                        marker=dict(symbol="line-ew-open", size=40, line=dict(width=3, color="black")))
    fig.update_layout(barmode="group", yaxis_title="accuracy", yaxis_range=[0, 1], xaxis_title="task / property")
    return _layout(fig, "Self-prediction accuracy vs mode baseline and cross-prediction (95 % CI)")


def loss_curves(logs: dict[str, Sequence[Row]], y: str = "loss") -> go.Figure:
    """Training curves: `{run label: train_log rows}` with `step` and `loss` (and `lr`, `tokens_per_s`).

    Args:
        logs: `{run label: train_log rows}`.
        y: the field plotted.

    Returns:
        A plotly figure.
    """
    has_lr = any(r.get("lr") is not None for rows in logs.values() for r in rows)
    fig = make_subplots(rows=2 if has_lr else 1, cols=1, shared_xaxes=True, vertical_spacing=0.08,
                        row_heights=[0.7, 0.3] if has_lr else None)
    for i, (label, rows) in enumerate(logs.items()):
        pts = [r for r in rows if r.get(y) is not None and r.get("step") is not None]
        fig.add_scatter(name=str(label), legendgroup=str(label), x=[r["step"] for r in pts], y=[r[y] for r in pts],
                        mode="lines+markers", line=dict(color=PALETTE[i % len(PALETTE)]), marker=dict(size=4),
                        row=1, col=1)
        lr = [r for r in pts if r.get("lr") is not None]
        if lr:  # identical schedules are merged into one line by the style (named after both runs)
            fig.add_scatter(name=f"{label} learning rate", legendgroup=str(label), x=[r["step"] for r in lr],
                            y=[r["lr"] for r in lr], mode="lines", line=dict(color=PALETTE[i % len(PALETTE)], dash="dot"),
                            row=2, col=1)
    fig.update_xaxes(title_text="optimizer step", row=2 if has_lr else 1, col=1)
    fig.update_yaxes(title_text=y, row=1, col=1)
    if has_lr:
        fig.update_yaxes(title_text="learning rate", exponentformat="e", rangemode="tozero", row=2, col=1)
    return _layout(fig, "Training loss" + (" and learning rate" if has_lr else ""), height=480 if has_lr else 420)


def mean_over_seeds(rows: Sequence[Row], keys: Sequence[str], value: str) -> list[Row]:
    """Group rows by `keys` and average `value` across the group (seeds), with min/max as the range.

    Args:
        rows: the rows.
        keys: the grouping fields.
        value: the averaged field.

    Returns:
        One row per group: the keys, the mean `value`, "min", "max" and "n_seeds".
    """
    groups: dict[tuple, list[float]] = defaultdict(list)
    for r in rows:
        if r.get(value) is not None:
            groups[tuple(r.get(k) for k in keys)].append(float(r[value]))
    out = []
    for k, vs in groups.items():
        out.append({**dict(zip(keys, k)), value: sum(vs) / len(vs), "min": min(vs), "max": max(vs), "n_seeds": len(vs)})
    return out
