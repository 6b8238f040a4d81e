"""`export_dashboard(run_dir, path)`: one self-contained offline HTML report of a run directory.

The report reads `run_dir/manifest.json` (shown at the top) and the result files below; each panel
appears only when its file exists and has rows. Row schemas (required fields; `?` = optional):

| file                      | panel                                  | row fields |
|---------------------------|----------------------------------------|------------|
| summary.jsonl             | Key numbers (table)                    | name, value, ci_lo?, ci_hi?, note? |
| **/train_log.jsonl        | Training loss (one curve per file)     | step, loss, lr?, tokens_per_s? |
| em_rates.jsonl            | EM metric per question, per model      | model, question, rate, ci_lo?, ci_hi?, n?, metric? |
| steering_effects.jsonl    | Interventions (add / ablate / random)  | model, intervention, metric, ci_lo?, ci_hi?, n?, metric_name? |
| steering_sweep.jsonl      | Steering sweep curves                  | direction, layer, alpha, metric, coherence?, seed?, metric_name? |
| probe_layers.jsonl        | Probe accuracy / AUROC by layer        | probe, layer, accuracy, auroc?, accuracy_std? |
| cosines.jsonl             | Cosine heatmaps (one per row)          | name, x_labels, matrix, y_labels? |
| sae_diff.jsonl            | SAE model-diff table + top examples    | latent, delta, base_mean?, finetuned_mean?, cos_direction?, steer_effect?, url?, examples? |
| token_activations.jsonl   | Token-level activation highlighting    | title, tokens, acts |
| samples.jsonl             | Model answers, side by side            | response, model?, prompt? (or messages, as evals.sample writes) |
| self_awareness.jsonl      | Self-report vs behaviour scatter       | model, behaviour, self_report, question?, *_lo?, *_hi? |
| self_prediction.jsonl     | Self-prediction vs baseline and cross  | task, kind, accuracy, ci_lo?, ci_hi?, mode_baseline? |
| typology.jsonl            | Answer clusters per model (viz.typology) | cluster, size, shares, typical?, judge_scores?, judge?, judge_validation?, k?, silhouette?, embedding? |

A study's own panels (a paper's figure: the injected-thought grid and self-report track of
`studies.introspection.panels`, the CAFT components of `studies.caft.panels`, the methods x organisms
heat maps of `studies.organisms.panels`) are declared in its package and join through `register_panel`.

`examples` in sae_diff rows is a list of `{"tokens": [...], "acts": [...], "text"?}`.

Any row may also carry `label` (the one name of the number it shows: the same label must never carry two
values anywhere in the dashboard; `label_conflicts` checks, and the page shows a warning when it fails),
`coherence_label` (the same for a sweep row's coherence), `subset` (which items were evaluated, shown
under the panel's title) and `note` (shown under the panel).
A malformed file fails with `DashboardError("file:line: ...")` before anything is written.
"""

from __future__ import annotations

import html
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import plotly.graph_objects as go

from . import figures as F
from . import mech as M
from ..runs import UnsafePathError, read_inside, write_text
from ..scrub import scrub_obj

Row = dict[str, Any]


class DashboardError(ValueError):
    """A run-directory file the dashboard cannot read; the message names file, line and field."""


@dataclass(frozen=True)
class Panel:
    """A dashboard panel: its key, title, the JSONL file it reads, the fields a row needs, and an explanation.

    The library's panels (`PANELS`) are drawn by `panel_figures`. A study's own panel (a paper's figure) is
    declared in the study's package with `render` (rows -> figures / HTML fragments), `numeric` (its plotted
    number fields) and `row` (its typed row class), and joins the dashboard through `register_panel`.
    """

    key: str
    title: str
    file: str
    required: tuple[str, ...]
    about: str
    render: Callable[[Sequence[Row]], list[Any]] | None = field(default=None, compare=False)
    numeric: tuple[str, ...] = ()
    row: type | None = field(default=None, compare=False)


PANELS: tuple[Panel, ...] = (
    Panel("summary", "Key numbers", "summary.jsonl", ("name", "value"),
          "Headline measurements of this run, as printed by the job that produced it."),
    Panel("training", "Training loss", "train_log.jsonl", ("step", "loss"),
          "Loss on assistant tokens per optimizer step for every finetune in the run directory, and the "
          "learning-rate schedule below it (one line when the finetunes share it)."),
    Panel("em_rates", "Emergent misalignment per question", "em_rates.jsonl", ("model", "question", "rate"),
          "The EM metric per evaluation question for the base model, the finetunes and their controls."),
    Panel("steering_effects", "Interventions: creating and removing the behaviour", "steering_effects.jsonl",
          ("model", "intervention", "metric"),
          "Adding the direction to the base model and ablating it in the finetune, against "
          "random directions (hatched, control colours)."),
    Panel("steering_sweep", "Steering sweep", "steering_sweep.jsonl", ("direction", "layer", "alpha", "metric"),
          "The EM metric (and coherence) as the steering coefficient grows, per layer; random "
          "directions of the same norm dashed or dotted, one style each."),
    Panel("probes", "Linear probes by layer", "probe_layers.jsonl", ("probe", "layer", "accuracy"),
          "Cross-validated logistic-regression probes on the residual stream after each decoder block."),
    Panel("cosines", "Cosine similarity between directions", "cosines.jsonl", ("name", "x_labels", "matrix"),
          "Cosines between per-layer directions (persona, EM, random controls)."),
    Panel("sae", "SAE features: model diff", "sae_diff.jsonl", ("latent", "delta"),
          "SAE latents ranked by the change in mean activation between the base and the finetuned "
          "model; links open the latent's page where the SAE release has one."),
    Panel("tokens", "Token-level activations", "token_activations.jsonl", ("title", "tokens", "acts"),
          "Per-token projection (or latent activation) on the colour scale shown above each text: red "
          "positive, blue negative, white 0. Hover a token for its value."),
    Panel("samples", "What the models say", "samples.jsonl", ("response",),
          "Answers of each model to the same prompts (greedy unless the producing job says otherwise)."),
    Panel("self_awareness", "Behavioural self-awareness", "self_awareness.jsonl",
          ("model", "behaviour", "self_report"),
          "What each model says about itself against what it does."),
    Panel("self_prediction", "Introspective self-prediction", "self_prediction.jsonl", ("task", "kind", "accuracy"),
          "Accuracy of predicting a property of one's own object-level answer, vs the mode baseline "
          "and vs another model trained on the same model's labels (cross-prediction)."),
    Panel("typology", "Typology of answers", "typology.jsonl", ("cluster", "size", "shares"),
          "Every answer embedded (the embedding is named) and clustered (k-means, k by silhouette): each model's "
          "share of its answers per cluster with Wilson intervals, the answers nearest each centroid, and the "
          "judge's mean scores per cluster (named judge and validation) in the table, never on the share axis."),
)
PANEL_FILES = {p.key: p.file for p in PANELS}
_REGISTERED: dict[str, Panel] = {}  # the studies' own panels (`register_panel`), in registration order


def register_panel(panel: Panel) -> Panel:
    """Add a study's own panel to every dashboard rendered in this process (its package calls this on import;
    `introspect_mech.studies.register_panels()` imports them all, as `introspect-mech dashboard` does).

    Args:
        panel: the panel, with its `render` function.

    Returns:
        The panel.
    """
    if panel.render is None:
        raise ValueError(f"panel {panel.key!r}: a registered panel needs its render function")
    if panel.key in PANEL_FILES or _REGISTERED.get(panel.key, panel) != panel:
        raise ValueError(f"panel {panel.key!r} is already declared")
    _REGISTERED[panel.key] = panel
    return panel


def panels() -> tuple[Panel, ...]:
    """Every panel a dashboard can show now: the library's `PANELS`, then the registered ones.

    Returns:
        The panels, in page order.
    """
    return PANELS + tuple(_REGISTERED.values())


def panel(key: str) -> Panel:
    """The panel of a key (library or registered).

    Args:
        key: the `Panel.key`.

    Returns:
        The panel; a KeyError names the known keys.
    """
    for p in panels():
        if p.key == key:
            return p
    raise KeyError(f"no dashboard panel {key!r}; panels: {', '.join(p.key for p in panels())}")
# fields a panel plots as numbers: a string, bool or object there is a one-line error naming file, line and field
NUMERIC_FIELDS: dict[str, tuple[str, ...]] = {
    "training": ("step", "loss", "lr"), "em_rates": ("rate",), "steering_sweep": ("alpha",),
    "probes": ("accuracy", "auroc"), "sae": ("latent", "delta"), "self_prediction": ("accuracy",),
    "typology": ("cluster", "size"),
}


def read_rows(path: Path, required: Sequence[str] = (), *, root: str | os.PathLike | None = None,
              numeric: Sequence[str] = ()) -> list[Row]:
    """Read a JSONL results file, checking each row is an object with the `required` fields.

    Args:
        path: the JSONL file.
        required: fields every row must have.
        root: the run directory the file must be inside (a symlink pointing out of it is refused).
        numeric: fields that must be numbers (or null) where present.

    Returns:
        The rows.

    Raises:
        DashboardError: naming the file, line and field.
    """
    import io
    import math
    import numbers


    try:
        raw = read_inside(path, root if root is not None else Path(path).parent)
    except UnsafePathError as e:
        raise DashboardError(str(e)) from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        bad_line = raw[:e.start].count(b"\n") + 1
        raise DashboardError(f"{path}:{bad_line}: not UTF-8 text") from None
    rows = []
    with io.StringIO(text) as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise DashboardError(f"{path}:{lineno}: invalid JSON ({e.msg})") from None
            if not isinstance(row, dict):
                raise DashboardError(f"{path}:{lineno}: expected a JSON object, got {type(row).__name__}")
            missing = [k for k in required if k not in row]
            if missing:
                raise DashboardError(f"{path}:{lineno}: missing field {missing[0]!r} (needs {', '.join(required)})")
            for k in numeric:
                v = row.get(k)
                if v is not None and (isinstance(v, bool) or not isinstance(v, numbers.Real)
                                      or math.isinf(float(v))):
                    raise DashboardError(f"{path}:{lineno}: {k}: expected a finite number, got {json.dumps(v)[:40]}")
            rows.append(row)
    return rows


def _train_logs(run_dir: Path) -> dict[str, list[Row]]:
    out = {}
    for p in sorted(run_dir.rglob("train_log.jsonl")):
        if "checkpoints" in p.relative_to(run_dir).parts:
            continue
        rows = [r for r in read_rows(p, root=run_dir, numeric=NUMERIC_FIELDS["training"])
                if r.get("loss") is not None and r.get("step") is not None]
        if rows:
            label = str(p.parent.relative_to(run_dir)) if p.parent != run_dir else "train"
            out[label] = rows
    return out


def load_panels(run_dir: str | os.PathLike) -> dict[str, Any]:
    """Read every panel's data that exists in `run_dir` (validated).

    Args:
        run_dir: a run directory.

    Returns:
        `{Panel.key: data}` for the panels whose files exist.
    """
    run_dir = Path(run_dir)
    data: dict[str, Any] = {}
    for p in panels():
        if p.key == "training":
            logs = _train_logs(run_dir)
            if logs:
                data[p.key] = logs
            continue
        f = run_dir / p.file
        if f.exists() or f.is_symlink():
            rows = read_rows(f, p.required, root=run_dir, numeric=NUMERIC_FIELDS.get(p.key, p.numeric))
            if rows:
                data[p.key] = rows
    return data


# ---- one label, one value ------------------------------------------------------------------------
VALUE_FIELDS = {"summary": "value", "em_rates": "rate", "steering_effects": "metric", "steering_sweep": "metric"}


def labelled_values(data: dict[str, Any]) -> list[tuple[str, str, str]]:
    """Every labelled number of a dashboard, as displayed: (label, value to 4 significant digits, panel).

    Labels: a key-numbers row's `name`; any other row's `label` (its panel's value field, see
    `VALUE_FIELDS`) and `coherence_label` (its `coherence`).

    Args:
        data: `load_panels(run_dir)`.

    Returns:
        The triples, in panel order.
    """
    out = []
    for key, rows in data.items():
        if not isinstance(rows, list):
            continue
        for r in rows:
            label = r.get("name") if key == "summary" else r.get("label")
            v = r.get(VALUE_FIELDS.get(key, "value"))
            if label is not None and isinstance(v, (int, float)) and not isinstance(v, bool):
                out.append((str(label), f"{v:.4g}", key))
            if r.get("coherence_label") is not None and isinstance(r.get("coherence"), (int, float)):
                out.append((str(r["coherence_label"]), f"{r['coherence']:.4g}", key))
    return out


def label_conflicts(data: dict[str, Any]) -> list[str]:
    """Labels that carry two different values in one dashboard (each a one-line description).

    Args:
        data: `load_panels(run_dir)`.

    Returns:
        `"label: 0.1 (summary) vs 0.2 (steering_effects)"` per conflicting label; [] when consistent.
    """
    seen: dict[str, dict[str, str]] = {}
    for label, v, panel in labelled_values(data):
        seen.setdefault(label, {}).setdefault(v, panel)
    return [f"{label}: " + " vs ".join(f"{v} ({panel})" for v, panel in vals.items())
            for label, vals in seen.items() if len(vals) > 1]


# ---- HTML ------------------------------------------------------------------------------------
def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, (dict, list)):
        s = json.dumps(v, default=str)
        return s if len(s) < 160 else s[:157] + "..."
    return str(v)


def _flatten(d: dict[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    out = []
    for k, v in d.items():
        if isinstance(v, dict) and v and len(json.dumps(v, default=str)) > 160:
            out += _flatten(v, f"{prefix}{k}.")
        else:
            out.append((f"{prefix}{k}", v))
    return out


MANIFEST_FIRST = ("title", "model", "base_model", "adapter", "adapters", "data", "datasets", "judge", "seed", "seeds")
MANIFEST_ALSO = ("stage", "created", "finished", "wall_time_s", "python", "platform", "packages")


def manifest_html(manifest: dict[str, Any]) -> str:
    """The manifest section at the top of the dashboard.

    Args:
        manifest: the run's `manifest.json` ({} when there is none).

    Returns:
        An HTML `<section>`: model, adapters, data hashes, judge, seeds first; the other scalar
        fields, and the full JSON (collapsed), below.
    """
    # the provenance a reader needs first; everything else (configs, stage settings) is in the full JSON
    keys = [k for k in MANIFEST_FIRST + MANIFEST_ALSO if k in manifest]
    keys += [k for k in manifest if k not in keys and not isinstance(manifest[k], (dict, list))]
    rows = []
    for k in keys:
        if k == "packages" and isinstance(manifest[k], dict):
            pk = ", ".join(f"{n} {v}" for n, v in manifest[k].items() if v)
            rows.append(f"<tr><th>packages</th><td>{html.escape(pk)}</td></tr>")
            continue
        for name, v in (_flatten({k: manifest[k]}) if isinstance(manifest[k], dict) else [(k, manifest[k])]):
            rows.append(f"<tr><th>{html.escape(name)}</th><td>{html.escape(_fmt(v))}</td></tr>")
    if not rows:
        rows = ["<tr><td>(no manifest.json in this run directory)</td></tr>"]
    full = html.escape(json.dumps(manifest, indent=2, default=str))
    return (f'<section id="manifest"><h2>Manifest</h2><table class="kv">{"".join(rows)}</table>'
            f"<details><summary>full manifest.json</summary><pre>{full}</pre></details></section>")


def summary_html(rows: Sequence[Row]) -> str:
    """The key-numbers table.

    Args:
        rows: `summary.jsonl` rows `{"name", "value", "ci_lo"?, "ci_hi"?, "note"?}`.

    Returns:
        An HTML table, one row per measure (with its 95 % CI when given).
    """
    body = []
    for r in rows:
        ci = f" [{_fmt(r['ci_lo'])}, {_fmt(r['ci_hi'])}]" if r.get("ci_lo") is not None and r.get("ci_hi") is not None else ""
        value = "—" if r["value"] is None else _fmt(r["value"])  # not measured (the note says why)
        body.append(f"<tr><th>{html.escape(str(r['name']))}</th><td>{html.escape(value + ci)}</td>"
                    f"<td class='note'>{html.escape(str(r.get('note', '')))}</td></tr>")
    return f'<table class="kv summary"><tr><th>measure</th><th>value [95 % CI]</th><th>note</th></tr>{"".join(body)}</table>'


def panel_figures(key: str, data: Any) -> list[go.Figure | str]:
    """Figures (or HTML snippets) for one panel's data.

    Args:
        key: the panel key (a `Panel.key` of `panels()`).
        data: the panel's rows, as read from its JSONL file.

    Returns:
        Plotly figures and/or HTML strings, in display order.

    Raises:
        KeyError: an unknown panel key.
    """
    if key == "summary":
        return [summary_html(data)]
    if key == "training":
        return [F.loss_curves(data)]
    if key == "em_rates":
        return [F.em_rate_figure(data)]
    if key == "steering_effects":
        return [F.steering_effect_figure(data)]
    if key == "steering_sweep":
        return [M.steering_sweep_figure(data)]
    if key == "probes":
        return [M.probe_layer_figure(data)]
    if key == "cosines":
        return [M.cosine_heatmap(r["matrix"], r["x_labels"], r.get("y_labels"), title=str(r["name"])) for r in data]
    if key == "sae":
        out: list[go.Figure | str] = [M.sae_diff_table(data)]
        for r in sorted(data, key=lambda r: -abs(r["delta"]))[:5]:
            for j, ex in enumerate(r.get("examples") or []):
                acts = ex.get("acts", ex.get("activations"))  # sae.model_diff writes "activations"
                out.append(M.token_highlight_html(ex["tokens"], acts, title=f"latent {r['latent']} · example {j + 1}"))
        return out
    if key == "tokens":
        return [M.token_highlight_html(r["tokens"], r["acts"], title=str(r["title"])) for r in data]
    if key == "samples":  # also accepts evals.sample's rows (prompt_id, messages, response)
        rows = [{"model": r.get("model", "model"), "response": r["response"], "finished": r.get("finished"),
                 "max_new_tokens": r.get("max_new_tokens"),
                 "prompt": r.get("prompt") or next((m["content"] for m in reversed(r.get("messages") or [])
                                                    if m.get("role") == "user"), str(r.get("prompt_id", "")))}
                for r in data]
        return [M.samples_table_html(rows[:60])]
    if key == "self_awareness":
        return [F.self_report_scatter(data)]
    if key == "self_prediction":
        return [F.self_prediction_figure(data)]
    if key in _REGISTERED:
        return list(_REGISTERED[key].render(data))  # type: ignore[misc]
    if key == "typology":
        from .typology import typology_figures
        return typology_figures(data)
    raise KeyError(key)


CSS = """
body{font-family:system-ui,-apple-system,'Segoe UI',Roboto,sans-serif;margin:0;background:#f6f7f9;color:#1d2330}
header{background:#1d2330;color:#fff;padding:18px 28px}header h1{margin:0;font-size:22px}
header .sub{opacity:.75;font-size:13px;margin-top:4px}nav{padding:8px 28px;background:#e8eef7;font-size:13px}
nav a{margin-right:14px;color:#1f4e99;text-decoration:none}main{padding:8px 28px 40px}
section{background:#fff;border-radius:8px;padding:14px 18px;margin:14px 0;box-shadow:0 1px 3px rgba(0,0,0,.08)}
h2{font-size:17px;margin:0 0 4px}.about{color:#555;font-size:13px;margin:0 0 8px}.src{color:#888;font-size:11px}
table.kv{border-collapse:collapse;font-size:13px;width:100%}table.kv th{text-align:left;padding:3px 10px 3px 0;
white-space:nowrap;vertical-align:top;color:#333;width:1%}table.kv td{padding:3px 6px;vertical-align:top;font-family:ui-monospace,monospace;
word-break:break-all}table.summary th{white-space:normal;width:42%}table.summary td{white-space:nowrap;width:22%}
table.summary td.note{font-family:inherit;color:#666;word-break:normal;white-space:normal;width:auto}
pre{font-size:11px;max-height:360px;overflow:auto;background:#f3f3f3;padding:8px}
.tok-example{margin:8px 0;font-size:13px}.tok-title{font-weight:600;font-size:12px;color:#444;margin-bottom:2px}
.tok-text{font-family:ui-monospace,monospace;line-height:1.8;white-space:pre-wrap;overflow-wrap:anywhere}
.tok{border-radius:2px;padding:1px 0}.tok-scale{display:flex;align-items:center;gap:6px;font-size:11px;color:#555;margin:2px 0}
.tok-scale-bar{display:inline-block;width:160px;height:10px;border:1px solid #ccc}.subset{color:#1d2330;font-size:13px;margin:0 0 6px}
.conflict{background:#fde8e8;border:1px solid #b00;color:#600}
#js-errors{color:#b00;font-family:monospace}
table.samples{border-collapse:collapse;font-size:12px;width:100%}table.samples th,table.samples td{border:1px solid #e2e5ea;
padding:6px;vertical-align:top;text-align:left}table.samples tr th:first-child{width:18%;font-weight:600}
"""
def render_html(run_dir: str | os.PathLike, title: str | None = None) -> str:
    """The dashboard HTML for `run_dir` as a string (see `export_dashboard`).

    Args:
        run_dir: a run directory.
        title: page title (default: the directory name).

    Returns:
        The HTML.
    """
    from plotly.offline import get_plotlyjs

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise DashboardError(f"{run_dir}: not a run directory")

    mpath = run_dir / "manifest.json"
    try:
        manifest = json.loads(read_inside(mpath, run_dir)) if mpath.exists() or mpath.is_symlink() else {}
    except json.JSONDecodeError as e:
        raise DashboardError(f"{mpath}:{e.lineno}: invalid JSON ({e.msg})") from None
    except (UnsafePathError, UnicodeDecodeError) as e:
        raise DashboardError(f"{mpath}: {e}") from None
    if not isinstance(manifest, dict):
        raise DashboardError(f"{mpath}: expected a JSON object, got {type(manifest).__name__}")
    manifest = scrub_obj(manifest)  # a manifest written by another tool may hold a key: never shown
    data = load_panels(run_dir)
    title = title or manifest.get("title") or f"introspect_mech run: {run_dir.name}"
    sections, nav, n_fig = [], [], 0
    for p in panels():
        if p.key not in data:
            continue
        parts = []
        for item in panel_figures(p.key, data[p.key]):
            if isinstance(item, str):
                parts.append(item)
            else:
                n_fig += 1
                parts.append(item.to_html(full_html=False, include_plotlyjs=False, div_id=f"fig-{p.key}-{n_fig}",
                                          config={"displaylogo": False, "responsive": True}))
        src = "train_log.jsonl files: " + ", ".join(data[p.key]) if p.key == "training" else p.file
        rows = data[p.key] if isinstance(data[p.key], list) else []
        subsets = list(dict.fromkeys(str(r["subset"]) for r in rows if r.get("subset")))
        notes = list(dict.fromkeys(str(r["note"]) for r in rows if r.get("note"))) if p.key != "summary" else []
        extra = "".join(f'<p class="subset">{html.escape(t)}</p>' for t in
                        ([f"Evaluated on: {'; '.join(subsets)}."] if subsets else []) + [f"Note: {n}." for n in notes])
        nav.append(f'<a href="#{p.key}">{html.escape(p.title)}</a>')
        sections.append(f'<section id="{p.key}"><h2>{html.escape(p.title)}</h2><p class="about">{html.escape(p.about)}'
                        f' <span class="src">({html.escape(src)})</span></p>{extra}{"".join(parts)}</section>')
    if not sections:
        sections.append("<section><p>No result files found in this run directory "
                        f"(expected any of: {', '.join(p.file for p in panels())}).</p></section>")
    conflicts = label_conflicts(data)
    if conflicts:
        sections.insert(0, '<section class="conflict"><h2>These files give one label two values</h2><ul>'
                        + "".join(f"<li>{html.escape(c)}</li>" for c in conflicts) + "</ul></section>")
    sub = f"{run_dir.resolve()} · exported {time.strftime('%Y-%m-%d %H:%M:%S')} · {len(sections)} panels"
    return (
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
        f"<title>{html.escape(title)}</title><style>{CSS}</style>"
        f"<script type='text/javascript'>{get_plotlyjs()}</script></head><body>"
        f"<header><h1>{html.escape(title)}</h1><div class='sub'>{html.escape(sub)}</div></header>"
        f"<nav><a href='#manifest'>Manifest</a>{''.join(nav)}</nav><main>{manifest_html(manifest)}"
        f"{''.join(sections)}</main></body></html>"
    )


def export_dashboard(run_dir: str | os.PathLike, path: str | os.PathLike | None = None,
                     title: str | None = None) -> Path:
    """Write one self-contained offline HTML file of a run.

    plotly.js is inlined (no network access needed); the page shows the run's manifest and every
    panel whose data exists.

    Args:
        run_dir: a run directory.
        path: the HTML file (default: `run_dir/dashboard.html`).
        title: page title.

    Returns:
        The path written.
    """
    text = render_html(run_dir, title)
    out = Path(path) if path is not None else Path(run_dir) / "dashboard.html"

    return write_text(out, text)  # the one writer: no symlink followed, a temp file of its own, atomic
