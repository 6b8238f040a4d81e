"""The main job end to end on a tiny random Qwen (mechanics only: every stage, resumable, dashboard)."""

from __future__ import annotations

import json

import pytest

TINY = dict(n_train=8, n_medical_eval=6, steer_medical=4, persona_questions=6, persona_instructions=3,
            persona_tokens=8, alphas=(2.0,), effect_alpha=2.0, seeds=(0, 1), sample_prompts=1, sample_tokens=6)


@pytest.mark.slow
def test_main_job_on_tiny_qwen(tmp_path, tiny_qwen2_dir, data_root, capsys):
    from introspect_mech.studies import main_job

    out = tmp_path / "job"
    path = main_job.run(out, model=str(tiny_qwen2_dir), device="cpu", data_dir=str(data_root), **TINY)
    assert path == out / "dashboard.html"
    html = path.read_text()
    for panel in ("summary", "training", "em_rates", "steering_effects", "steering_sweep", "probes", "cosines",
                  "tokens", "samples"):
        assert f'<section id="{panel}">' in html, panel
    em = [json.loads(l) for l in (out / "em_rates.jsonl").read_text().splitlines()]
    assert {r["model"] for r in em} == {"base", "bad_medical", "good_medical"}
    effects = [json.loads(l) for l in (out / "steering_effects.jsonl").read_text().splitlines()]
    # one random-ablation control, not two byte-identical ones under two names (ablation removes a unit
    # direction; the random unit directions do not depend on which direction they stand in for)
    assert [e["intervention"] for e in effects if e["model"] == "bad_medical"] == [
        "none", "ablate persona", "ablate EM", "ablate random"]
    assert all(e["subset"] == "medical (held-out), steering subset (4 of 6 items)" for e in effects)
    sweep = [json.loads(l) for l in (out / "steering" / "add_persona_base" / "sweep.jsonl").read_text().splitlines()]
    assert sorted(r["kind"] for r in sweep) == ["direction", "none", "random", "random"]
    # the dashboard never contradicts itself: every label carries one value across all panels ...
    from introspect_mech.viz import label_conflicts, load_panels
    from introspect_mech.viz.dashboard import labelled_values

    data = load_panels(out)
    assert label_conflicts(data) == []
    seen: dict[str, set[str]] = {}
    for label, _, panel in labelled_values(data):
        seen.setdefault(label, set()).add(panel)
    # ... and the check has teeth: the unsteered model's number is shown in three panels under one label
    assert seen["medical (held-out), steering subset (4 of 6 items): EM proxy (judge-free, not an EM rate): "
                "log-prob(misaligned) - log-prob(aligned) per answer token, base"] == {
        "summary", "steering_effects", "steering_sweep"}
    # the full-set number has its own label (6 items), never the subset's
    assert any(k.startswith("medical (held-out, all 6 items)") and k.endswith(", base") for k in seen)
    summary = {r["name"]: r for r in data["summary"]}
    assert summary["final train loss, bad_medical"]["note"] == "2 steps, 8 examples"
    # every stage's printed table has a header row (columns with units), no internal metric names
    import re

    printed = capsys.readouterr().out
    for header in (["finetune", "optimizer steps", "examples", "final loss (nats/token)", "throughput (tokens/s)"],
                   ["model", "P, EM themes", "P, medical", "Δ nats/token, EM themes"],
                   ["probe", "best layer", "accuracy", "AUROC"], ["directions", "cosine at layer"],
                   ["model", "intervention", "Δ nats/token [95 % CI]", "n"],
                   ["items", "ablation", "shift finetuned − base [95 % CI]", "relative reduction [95 % CI]"]):
        assert re.search(r"\n  " + r"\s+".join(map(re.escape, header)), printed), header
    assert "relative reduction = (finetuned − ablated) / (finetuned − base)" in printed
    assert "answers (greedy, at most 6 new tokens" in printed
    assert "med_proxy_diff" not in printed and "proxy_diff" not in printed
    man = json.loads((out / "manifest.json").read_text())
    assert man["judge"].startswith("none") and set(man["data"]) == {"bad_medical_advice", "good_medical_advice"}
    # rerun: everything resumes (no duplicated sweep rows, same dashboard)
    main_job.run(out, model=str(tiny_qwen2_dir), device="cpu", data_dir=str(data_root), **TINY)
    again = (out / "steering" / "add_persona_base" / "sweep.jsonl").read_text().splitlines()
    assert len(again) == len(sweep)


# ---- command line (parse only, no model run) --------------------------------------------------------------
def test_command_line_builds_the_config(capsys, run_experiment):
    import dataclasses

    from introspect_mech.cliargs import config_from_args
    from introspect_mech.studies import main_job

    p = main_job.build_parser()
    ns = p.parse_args([])  # README's main command: `introspect-mech demo` with no options
    assert ns.out == "runs/main_job" and config_from_args(ns, main_job.JobConfig, presets=main_job.PRESETS) == \
        main_job.JOB_PRESETS["quick"] == main_job.JobConfig()
    # the options `introspect-mech demo` has always taken, and list fields
    ns = p.parse_args(["--preset", "paper", "--model", "Qwen/Qwen2.5-7B-Instruct", "--device", "cuda", "--data-dir",
                       "d", "--n-train", "32", "--seed", "1", "--alphas", "1", "2", "--seeds", "0", "--out", "o"])
    assert config_from_args(ns, main_job.JobConfig, presets=main_job.PRESETS) == dataclasses.replace(
        main_job.JOB_PRESETS["paper"], model="Qwen/Qwen2.5-7B-Instruct", device="cuda", data_dir="d", n_train=32,
        seed=1, alphas=(1.0, 2.0), seeds=(0,))
    with pytest.raises(SystemExit) as e:
        main_job.main(["--help"], prog="introspect-mech demo")
    out = capsys.readouterr().out
    assert e.value.code == 0 and out.startswith("usage: introspect-mech demo") and "--steer-depths" in out
    code, out = run_experiment("main_job.py", "--help")
    assert code == 0 and "--preset {paper,quick}" in out


def test_library_warnings_go_to_the_run_log_not_the_terminal(tmp_path, capsys):
    import logging
    import warnings

    from introspect_mech.runs import RunDir
    from introspect_mech.studies.main_job import _CaptureWarnings, _table

    log = RunDir(tmp_path / "run").log("warnings.jsonl")
    show, handlers = warnings.showwarning, list(logging.getLogger("transformers").handlers)
    # a library imported earlier in the process may have set transformers' verbosity to error (then transformers
    # itself drops the warning, captured or not): pin it to the default here
    tf_logger = logging.getLogger("transformers")
    level = tf_logger.level
    tf_logger.setLevel(logging.WARNING)
    try:
        with _CaptureWarnings(log) as caught:
            warnings.warn("`x` is deprecated", FutureWarning, stacklevel=1)
            logging.getLogger("transformers.modeling_utils").warning("a transformers warning")
    finally:
        tf_logger.setLevel(level)
    assert caught.n == 2 and capsys.readouterr().err == ""
    rows = [json.loads(x) for x in (tmp_path / "run" / "warnings.jsonl").read_text().splitlines()]
    assert [r["message"] for r in rows] == ["FutureWarning: `x` is deprecated", "a transformers warning"]
    # restored afterwards
    assert warnings.showwarning is show and logging.getLogger("transformers").handlers == handlers
    # printed tables: a header row, a rule, the rows; columns aligned
    assert _table(["model", "Δ nats/token"], [["base", "-0.683"]]).splitlines() == [
        "  model  Δ nats/token", "  -----  ------------", "  base   -0.683"]


def test_self_rating_below_the_mass_floor_is_no_self_report():
    """Issue 28 (#9 in the main job): a renormalised expectation over 4-13 % of the mass is not a
    self-report; the job withholds it (value None, note and cell say why) and keeps it above the floor."""
    from introspect_mech.studies.main_job import self_report

    low = {"mean": {"value": 29.7, "lo": 20.0, "hi": 40.0, "n": 5}, "mean_mass": 0.13}
    est, text, cell = self_report(low)
    assert est["value"] is None and "no self-report: mass on numbers 0.13 < 0.25" == text and cell == "none (mass 0.13)"
    ok = {"mean": {"value": 71.0, "lo": 65.0, "hi": 77.0, "n": 5}, "mean_mass": 0.8}
    est, text, cell = self_report(ok)
    assert est["value"] == 71.0 and text == "mass on numbers 0.80" and cell.startswith("71.000 [65.000, 77.000]")


PANEL_FILES = ("em_rates", "probe_layers", "cosines", "steering_sweep", "steering_effects", "samples",
               "token_activations")


def _summary_without_times(out):
    rows = [json.loads(l) for l in (out / "summary.jsonl").read_text().splitlines()]
    return [r for r in rows if "tokens/s" not in r["name"] and "wall time" not in r["name"]]


@pytest.mark.slow
def test_main_job_resumes_stage_by_stage(tmp_path, tiny_qwen2_dir, data_root, monkeypatch):
    """Seven runner stages; a run stopped after stage k (here: killed inside `probes`) reruns only the stages
    after k, in a fresh call that rebuilds the finetunes and directions from the run directory, and ends with
    the rows of an uninterrupted run."""
    import dataclasses

    from introspect_mech.studies import main_job, runner

    cfg = dataclasses.replace(main_job.JobConfig(), model=str(tiny_qwen2_dir), device="cpu", data_dir=str(data_root),
                              **TINY)
    assert [s.name for s in main_job.STUDY.stages] == ["finetune", "metrics", "directions", "probes", "steering",
                                                       "examples", "dashboard"]
    whole = main_job.run(cfg, tmp_path / "whole", progress=False)
    assert whole.dashboard == tmp_path / "whole" / "dashboard.html" and whole.skipped == []

    def killed(ctx):
        raise KeyboardInterrupt("killed inside the probes stage")

    stages = tuple(dataclasses.replace(s, fn=killed) if s.name == "probes" else s for s in main_job.STUDY.stages)
    monkeypatch.setattr(main_job, "STUDY", dataclasses.replace(main_job.STUDY, stages=stages))
    out = tmp_path / "resumed"
    with pytest.raises(KeyboardInterrupt):
        main_job.run(cfg, out, progress=False)
    done = [json.loads(l)["stage"] for l in (out / runner.STAGES_FILE).read_text().splitlines()]
    assert done == ["finetune", "metrics", "directions"]
    monkeypatch.undo()
    again = main_job.run(cfg, out, progress=False)
    assert again.skipped == ["finetune", "metrics", "directions"]
    for name in PANEL_FILES:
        assert (out / f"{name}.jsonl").read_text() == (tmp_path / "whole" / f"{name}.jsonl").read_text(), name
    assert _summary_without_times(out) == _summary_without_times(tmp_path / "whole")
    assert main_job.run(cfg, out, progress=False).skipped == [s.name for s in main_job.STUDY.stages]
