"""Mechanism figures: steering sweeps, probes by layer, cosine heatmaps, SAE model diffs, token highlights."""

from __future__ import annotations

import html
from typing import Any, Sequence

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from .figures import PALETTE, _layout, _ordered, mean_over_seeds
from .style import control_style

Row = dict[str, Any]


def steering_sweep_figure(rows: Sequence[Row]) -> go.Figure:
    """Steering sweep: alpha on x; EM metric (left) and coherence (right) on y; one trace per
    (direction, layer); each random-direction control in its own grey/brown colour and dash pattern.
    Seeds are averaged, min-max shown. Rows whose `coherence` is None draw no coherence curve (so a
    coherence measured once per condition is drawn once, not under every metric).

    Rows: `{"direction", "layer", "alpha", "metric", "coherence"?, "seed"?, "metric_name"?,
    "coherence_name"?}`.

    Args:
        rows: the rows above.

    Returns:
        A plotly figure.
    """
    has_coh = any(r.get("coherence") is not None for r in rows)
    label = (rows[0].get("metric_name") if rows else None) or "EM metric"
    coh_label = (rows[0].get("coherence_name") if rows else None) or "coherence"
    fig = make_subplots(rows=1, cols=2 if has_coh else 1, horizontal_spacing=0.14,
                        subplot_titles=(label, coh_label) if has_coh else None)
    cols = [("metric", 1)] + ([("coherence", 2)] if has_coh else [])
    series = _ordered((r["direction"], r["layer"]) for r in rows)
    n_random = n_dir = 0
    for d, layer in series:
        sel = [r for r in rows if r["direction"] == d and r["layer"] == layer]
        is_random = "random" in str(d)
        line = control_style(n_random) if is_random else {"color": PALETTE[n_dir % len(PALETTE)], "dash": "solid"}
        n_random, n_dir = n_random + is_random, n_dir + (not is_random)
        for value, col in cols:
            pts = sorted(mean_over_seeds(sel, ("alpha",), value), key=lambda p: p["alpha"])
            if not pts:
                continue
            spread = any(p["n_seeds"] > 1 for p in pts)
            fig.add_scatter(
                name=f"{d} L{layer}", legendgroup=f"{d} L{layer}", showlegend=col == 1,
                x=[p["alpha"] for p in pts], y=[p[value] for p in pts], mode="lines+markers", line=line,
                error_y=dict(type="data", symmetric=False, array=[p["max"] - p[value] for p in pts],
                             arrayminus=[p[value] - p["min"] for p in pts]) if spread else None,
                row=1, col=col,
            )
    fig.update_xaxes(title_text="alpha (steering coefficient)")
    if not has_coh:  # with two panels their subplot titles name the y axes
        fig.update_yaxes(title_text=label, row=1, col=1)
    return _layout(fig, f"Steering sweep: {label} vs alpha (random controls dashed / dotted)", height=460)


def probe_layer_figure(rows: Sequence[Row]) -> go.Figure:
    """Probe accuracy and AUROC by layer, one trace per probe.

    Rows: `{"probe", "layer", "accuracy", "auroc"?, "accuracy_std"?}`.

    Args:
        rows: the rows above.

    Returns:
        A plotly figure.
    """
    has_auc = any(r.get("auroc") is not None for r in rows)
    fig = make_subplots(rows=1, cols=2 if has_auc else 1, horizontal_spacing=0.12,
                        subplot_titles=("accuracy (cross-validated)", "AUROC") if has_auc else None)
    for i, p in enumerate(_ordered(r["probe"] for r in rows)):
        sel = sorted((r for r in rows if r["probe"] == p), key=lambda r: r["layer"])
        color = PALETTE[i % len(PALETTE)]
        std = [r.get("accuracy_std") for r in sel]
        fig.add_scatter(name=str(p), legendgroup=str(p), x=[r["layer"] for r in sel], y=[r["accuracy"] for r in sel],
                        mode="lines+markers", line=dict(color=color),
                        error_y=dict(type="data", array=std) if all(s is not None for s in std) else None,
                        row=1, col=1)
        if has_auc:
            fig.add_scatter(name=str(p), legendgroup=str(p), showlegend=False, x=[r["layer"] for r in sel],
                            y=[r.get("auroc") for r in sel], mode="lines+markers", line=dict(color=color), row=1, col=2)
    fig.update_xaxes(title_text="layer")
    fig.update_yaxes(range=[0, 1.02])
    return _layout(fig, "Linear probes by layer")


def cosine_heatmap(matrix: Sequence[Sequence[float]], x_labels: Sequence[str], y_labels: Sequence[str] | None = None,
                   title: str = "Cosine similarity") -> go.Figure:
    """Heatmap of cosines between directions (e.g. per-layer persona vs EM direction), range [-1, 1].

    Args:
        matrix: the cosines, `[len(y_labels), len(x_labels)]`.
        x_labels: column labels.
        y_labels: row labels (default: `x_labels`).
        title: the title.

    Returns:
        A plotly figure.
    """
    y_labels = list(y_labels) if y_labels is not None else list(x_labels)
    text = [[f"{v:.2f}" if v is not None else "" for v in row] for row in matrix]
    fig = go.Figure(go.Heatmap(z=[list(r) for r in matrix], x=[str(x) for x in x_labels], y=[str(y) for y in y_labels],
                               zmin=-1, zmax=1, colorscale="RdBu", reversescale=True, text=text,
                               showscale=True, colorbar=dict(title=dict(text="cosine")),
                               texttemplate="%{text}" if len(x_labels) * len(y_labels) <= 400 else None,
                               hovertemplate="%{y} · %{x}: %{z:.3f}<extra></extra>"))
    fig.update_yaxes(autorange="reversed")
    return _layout(fig, title, height=max(320, 40 + 22 * len(y_labels)))


def sae_diff_table(rows: Sequence[Row], top: int = 20) -> go.Figure:
    """SAE model-diff table: latents ranked by the change in mean activation (finetuned − base),
    with their cosine to the EM/persona direction, steering effect and a link (e.g. Neuronpedia).

    Rows: `{"latent", "delta", "base_mean"?, "finetuned_mean"?, "cos_direction"?, "steer_effect"?, "url"?}`.

    Args:
        rows: the rows above.
        top: rows shown.

    Returns:
        A plotly table figure.
    """
    rows = sorted(rows, key=lambda r: -abs(r["delta"]))[:top]

    def fmt(v: Any) -> str:
        return "" if v is None else (f"{v:+.4f}" if isinstance(v, float) else str(v))

    def link(r: Row) -> str:
        return f'<a href="{html.escape(r["url"])}">{r["latent"]}</a>' if r.get("url") else str(r["latent"])

    cols = [("latent", link), ("Δ mean act", lambda r: fmt(r["delta"])),
            ("base mean", lambda r: fmt(r.get("base_mean"))), ("finetuned mean", lambda r: fmt(r.get("finetuned_mean"))),
            ("cos to direction", lambda r: fmt(r.get("cos_direction"))),
            ("steering effect", lambda r: fmt(r.get("steer_effect")))]
    cols = [c for c in cols if any(c[1](r) != "" for r in rows)]
    fig = go.Figure(go.Table(
        header=dict(values=[f"<b>{c[0]}</b>" for c in cols], fill_color="#e8eef7", align="left"),
        cells=dict(values=[[c[1](r) for r in rows] for c in cols], align="left", height=24),
    ))
    _layout(fig, f"SAE model diff: top {len(rows)} latents by |Δ|", height=90 + 30 * (len(rows) + 1))
    fig.update_layout(margin=dict(l=20, r=20, t=50, b=10))
    return fig


def token_highlight_html(tokens: Sequence[str], acts: Sequence[float], title: str | None = None,
                         scale: float | None = None) -> str:
    """Token-level activation highlighting as an HTML snippet: red for positive, blue for negative,
    opacity proportional to |activation| / scale (default: the max |activation| in the example).
    Hovering a token shows its value.

    Args:
        tokens: the token strings.
        acts: one activation per token.
        title: a heading.
        scale: the |activation| of full opacity.

    Returns:
        The HTML snippet.
    """
    if len(tokens) != len(acts):
        raise ValueError(f"token_highlight_html: {len(tokens)} tokens but {len(acts)} activations")
    scale = scale or max((abs(a) for a in acts), default=1.0) or 1.0
    spans = []
    for tok, a in zip(tokens, acts):
        alpha = min(1.0, abs(a) / scale)
        rgb = "214,39,40" if a >= 0 else "31,119,180"
        spans.append(f'<span class="tok" title="{a:+.3f}" style="background:rgba({rgb},{alpha:.2f})">'
                     f"{html.escape(tok).replace(chr(10), '↵<br>')}</span>")
    head = f'<div class="tok-title">{html.escape(title)}</div>' if title else ""
    return (f'<div class="tok-example">{head}{colour_scale_html(scale)}'
            f'<div class="tok-text">{"".join(spans)}</div></div>')


def colour_scale_html(scale: float) -> str:
    """The colour scale of `token_highlight_html`: blue −scale, white 0, red +scale.

    Args:
        scale: the |activation| of full opacity.

    Returns:
        An HTML snippet (a gradient bar with its end and middle values).
    """
    return ('<div class="tok-scale" title="colour scale of the highlighted tokens">'
            f'<span class="tok-scale-lo">{-scale:+.3g}</span>'
            '<span class="tok-scale-bar" style="background:linear-gradient(to right,rgba(31,119,180,1),'
            'rgba(255,255,255,1),rgba(214,39,40,1))"></span>'
            f'<span class="tok-scale-hi">{scale:+.3g}</span><span class="tok-scale-mid">(0 = white; hover a token for its value)</span></div>')


def _whole_words(s: str, max_chars: int, stopped: bool) -> str:
    """`s` cut at a word boundary before `max_chars`, or (when generation `stopped` at its token limit)
    without the last, possibly partial, word; both marked with an ellipsis."""
    if len(s) > max_chars:
        cut = s[:max_chars]
        return (cut[: cut.rfind(" ")] if " " in cut else cut).rstrip() + " …"
    if stopped and " " in s.strip():
        return s.rstrip()[: s.rstrip().rfind(" ")].rstrip() + " …"
    return s


def samples_table_html(rows: Sequence[Row], max_chars: int = 2000) -> str:
    """Model answers side by side: one table row per prompt, one column per model; answers wrap.

    Args:
        rows: `{"model", "prompt", "response", "finished"?, "max_new_tokens"?}` rows (`finished` as
            `evals.sample` writes it): an answer that stopped at its token limit (`finished` False) ends
            at its last whole word, marked "…"; `max_new_tokens` is stated above the table.
        max_chars: answers longer than this end at the last whole word before it, marked "…".

    Returns:
        The HTML table.
    """
    models = _ordered(r["model"] for r in rows)
    prompts = _ordered(r["prompt"] for r in rows)
    cell = {(r["model"], r["prompt"]): r for r in rows}
    limits = _ordered(r["max_new_tokens"] for r in rows if r.get("max_new_tokens"))

    def txt(s: str, stopped: bool = False) -> str:
        return html.escape(_whole_words(s, max_chars, stopped)).replace("\n", "<br>")

    def answer(r: Row | None) -> str:
        if r is None:
            return ""
        s = str(r["response"])
        if not s.strip():
            return "<i>(empty answer)</i>"
        # an answer that used its whole token budget (`finished` False) may stop mid-word: whole words only
        return txt(s, r.get("finished") is False)

    head = "".join(f"<th>{html.escape(str(m))}</th>" for m in models)
    body = "".join(
        f"<tr><th>{txt(p)}</th>" + "".join(f"<td>{answer(cell.get((m, p)))}</td>" for m in models) + "</tr>"
        for p in prompts)
    note = (f'<p class="about">Answers end at {", ".join(map(str, limits))} new tokens; an answer that reached '
            "the limit ends with its last whole word and “…”.</p>") if limits else ""
    return f'{note}<table class="samples"><tr><th>prompt</th>{head}</tr>{body}</table>'
