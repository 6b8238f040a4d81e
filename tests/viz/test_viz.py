"""viz: figure functions and export_dashboard on synthetic run directories (real files, real HTML)."""

from __future__ import annotations

import json
import re

import plotly.graph_objects as go
import pytest
from _viz_synthetic import make_synthetic_run

from introspect_mech import viz
from introspect_mech.studies import register_panels
from introspect_mech.viz.dashboard import DashboardError, load_panels, panels

register_panels()  # the studies' own panels (injected thoughts, CAFT, organisms) render in these dashboards too


def test_em_rate_figure_bars_and_asymmetric_cis():
    rows = [{"model": "base", "question": "overall", "rate": 0.1, "ci_lo": 0.05, "ci_hi": 0.2, "n": 10},
            {"model": "base", "question": "wish", "rate": 0.3, "ci_lo": 0.2, "ci_hi": 0.35, "n": 10},
            {"model": "ft", "question": "wish", "rate": 0.5, "ci_lo": 0.4, "ci_hi": 0.7, "n": 10}]
    fig = viz.em_rate_figure(rows)
    assert [t.name for t in fig.data] == ["base", "ft"]
    base = fig.data[0]
    assert list(base.x) == ["wish", "overall"]  # "overall" drawn last
    assert list(base.y) == [0.3, 0.1]
    assert list(base.error_y.array) == pytest.approx([0.05, 0.1])
    assert list(base.error_y.arrayminus) == pytest.approx([0.1, 0.05])


def test_figures_without_cis_have_no_error_bars():
    fig = viz.em_rate_figure([{"model": "a", "question": "q", "rate": 0.2}])
    assert fig.data[0].error_y.array is None


def test_steering_sweep_averages_seeds_and_marks_random():
    rows = [{"direction": d, "layer": 3, "alpha": a, "seed": s, "metric": a + s if d == "persona" else a / 4 + s,
             "coherence": 1.0} for d in ("persona", "random") for a in (0, 4) for s in (0, 2)]
    fig = viz.steering_sweep_figure(rows)
    metric = [t for t in fig.data if t.xaxis == "x"]
    assert [t.name for t in metric] == ["persona L3", "random L3"]
    assert list(metric[0].y) == [1.0, 5.0]  # mean over seeds 0 and 2
    assert list(metric[0].error_y.array) == [1.0, 1.0]
    assert metric[1].line.dash == "dash"
    # metric per series; the two coherence curves are identical, so the style draws one, named after both
    assert [t.name for t in fig.data if t.xaxis == "x2"] == ["persona L3 = random L3"]


def test_probe_cosine_sae_and_tokens():
    rows = [{"probe": "p", "layer": L, "accuracy": 0.5 + L / 10, "auroc": 0.6} for L in (2, 0, 1)]
    fig = viz.probe_layer_figure(rows)
    assert list(fig.data[0].x) == [0, 1, 2] and len(fig.data) == 2
    hm = viz.cosine_heatmap([[1, 0.5], [0.5, 1]], ["a", "b"])
    assert hm.data[0].zmin == -1 and list(hm.data[0].y) == ["a", "b"]
    t = viz.sae_diff_table([{"latent": 7, "delta": -0.2, "url": "https://x/7"}, {"latent": 3, "delta": 0.5}])
    cells = t.data[0].cells.values
    assert cells[0][0] == "3" and '<a href="https://x/7">7</a>' == cells[0][1]  # sorted by |delta|
    h = viz.token_highlight_html(["<b>", " x"], [1.0, -0.5])
    assert "&lt;b&gt;" in h and "<b>" not in h
    assert "rgba(214,39,40,1.00)" in h and "rgba(31,119,180,0.50)" in h
    with pytest.raises(ValueError, match="2 tokens but 1"):
        viz.token_highlight_html(["a", "b"], [1.0])


def test_self_report_self_prediction_loss():
    fig = viz.self_report_scatter([{"model": "m", "behaviour": 0.2, "self_report": 0.8}])
    assert fig.data[0].x == (0.2,) and fig.data[-1].name == "report = behaviour"
    sp = viz.self_prediction_figure([{"task": "t", "kind": "self", "accuracy": 0.6, "mode_baseline": 0.3},
                                     {"task": "t", "kind": "cross", "accuracy": 0.4}])
    assert [d.name for d in sp.data] == ["self-prediction", "cross-prediction", "mode baseline"]
    lc = viz.loss_curves({"run": [{"step": 1, "loss": 2.0, "lr": 1e-3}, {"step": 2, "loss": 1.0, "lr": 1e-3}]})
    assert list(lc.data[0].y) == [2.0, 1.0] and lc.data[1].visible is None and lc.data[1].yaxis == "y2"
    assert all(isinstance(f, go.Figure) for f in (fig, sp, lc))


def test_export_dashboard_full(tmp_path):
    run = make_synthetic_run(tmp_path / "run")
    # a checkpoint's copy of train_log must not add a curve
    (run / "finetunes/bad/checkpoints/step_0001").mkdir(parents=True)
    (run / "finetunes/bad/checkpoints/step_0001/train_log.jsonl").write_text('{"step": 1, "loss": 9}\n')
    out = viz.export_dashboard(run, tmp_path / "out" / "dash.html")
    text = out.read_text()
    assert out.stat().st_size > 3_000_000  # plotly.js inlined
    assert not re.search(r"<script[^>]+src=", text), "must not load scripts from anywhere"
    for p in panels():
        assert f'<section id="{p.key}">' in text, p.key
    assert "synthetic test run" in text and "ab12ab12" in text and "none (judge-free)" in text
    assert text.index('id="manifest"') < text.index('<section id="summary">')
    assert text.count('class="plotly-graph-div"') == 9 + 4 + 1 + 2 + 1  # + introspection (4) + self-report track (1) + organisms (2) + typology (1)
    data = load_panels(run)
    assert sorted(data["training"]) == ["finetunes/bad", "finetunes/good"]


def test_panels_only_when_data_exists(tmp_path):
    run = make_synthetic_run(tmp_path / "run", panels={"probes", "tokens"})
    (run / "em_rates.jsonl").write_text("")  # empty file: no panel
    text = viz.render_html(run)
    present = set(re.findall(r'<section id="([a-z_]+)">', text))
    assert present == {"manifest", "probes", "tokens"}
    empty = tmp_path / "empty"
    empty.mkdir()
    assert "No result files found" in viz.render_html(empty)


def test_malformed_files_name_file_line_field(tmp_path):
    run = make_synthetic_run(tmp_path / "run", panels={"probes"})
    f = run / "probe_layers.jsonl"
    lines = f.read_text().splitlines()
    lines[2] = json.dumps({"probe": "p", "layer": 2})
    f.write_text("\n".join(lines) + "\n")
    with pytest.raises(DashboardError, match=r"probe_layers\.jsonl:3: missing field 'accuracy'"):
        viz.export_dashboard(run, tmp_path / "d.html")
    assert not (tmp_path / "d.html").exists()
    f.write_text('{"probe": "p", "layer": 0, "accuracy": 1}\n{oops\n')
    with pytest.raises(DashboardError, match=r"probe_layers\.jsonl:2: invalid JSON"):
        viz.render_html(run)
    f.write_text("[1, 2]\n")
    with pytest.raises(DashboardError, match=r":1: expected a JSON object"):
        viz.render_html(run)
    with pytest.raises(DashboardError, match="not a run directory"):
        viz.render_html(tmp_path / "missing")


def test_one_label_one_value(tmp_path):
    from introspect_mech.viz import label_conflicts, load_panels, render_html

    run = make_synthetic_run(tmp_path / "run", panels={"summary", "steering_effects"})
    lab = "medical: Δ, base"
    (run / "summary.jsonl").write_text(json.dumps({"name": lab, "value": -0.6716}) + "\n")
    rows = [json.loads(x) for x in (run / "steering_effects.jsonl").read_text().splitlines()]
    rows[0]["label"] = lab
    rows[0]["metric"] = -0.6716
    (run / "steering_effects.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert label_conflicts(load_panels(run)) == []  # the same value under one label in two panels is fine
    rows[0]["metric"] = -0.6825
    (run / "steering_effects.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert label_conflicts(load_panels(run)) == [f"{lab}: -0.6716 (summary) vs -0.6825 (steering_effects)"]
    assert "give one label two values" in render_html(run)  # and the page says so at the top


def test_figure_style():
    from introspect_mech.viz import control_style

    assert control_style(0) != control_style(1) and control_style(0)["dash"] != "solid"
    # a question at 0 for every model is drawn (an outline in the bar's colour), not left empty
    fig = viz.em_rate_figure([{"model": m, "question": "q", "rate": 0.0} for m in ("a", "b")])
    assert all(t.marker.line.width >= 1 and t.marker.line.color == t.marker.color for t in fig.data)
    # two random controls get two styles; long titles wrap at word boundaries
    eff = viz.steering_effect_figure([{"model": "m", "intervention": iv, "metric": 0.1, "metric_name": "x " * 60}
                                      for iv in ("none", "add random", "ablate random")])
    colours = [t.marker.color for t in eff.data]
    assert len(set(colours)) == 3 and "<br>" in eff.layout.title.text and "<br>" in eff.layout.yaxis.title.text
    assert all(len(line) <= 80 for line in eff.layout.title.text.split("<br>"))
    # heat maps carry a colour bar; token highlights carry their colour scale
    assert viz.cosine_heatmap([[1.0]], ["a"]).data[0].showscale is True
    assert 'class="tok-scale"' in viz.token_highlight_html(["a"], [0.5]) and "+0.5" in viz.token_highlight_html(["a"], [0.5])


def test_answers_are_shown_whole():
    from introspect_mech.viz.mech import samples_table_html

    html = samples_table_html([{"model": "m", "prompt": "p", "response": "Take two pills and a gla",
                                "finished": False, "max_new_tokens": 6},
                               {"model": "m", "prompt": "q", "response": "Done.", "finished": True}])
    assert "Take two pills and a …" in html and "gla" not in html and "Done." in html
    assert "Answers end at 6 new tokens" in html
    long = samples_table_html([{"model": "m", "prompt": "p", "response": "word " * 500}], max_chars=100)
    assert "word …" in long and "wor …" not in long
