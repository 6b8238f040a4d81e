"""The end-to-end pilot of docs/qwen_runbook.md on the real Qwen2.5-Coder-0.5B-Instruct (slow): the EM study's
`qwen-cpu` preset at its smallest size -- two finetunes of 2 steps, 2 questions x 2 answers, a label-mode judge,
the capability check and the typology -- runs every stage and renders the dashboard with the typology panel."""

from __future__ import annotations

import dataclasses
import importlib.util
import json

import pytest


@pytest.mark.slow
def test_em_qwen_cpu_pilot(tmp_path):
    from introspect_mech import models as M

    spec = M.CHUNKED_GGUF["qwen2.5-coder-0.5b-instruct"]
    if importlib.util.find_spec(spec.module(spec.n_parts)) is None:
        pytest.skip(f"needs the real model: {spec.pip_command()}")
    from introspect_mech.evals.judge_spec import JudgeOptions
    from introspect_mech.studies import emergent_misalignment as em

    cfg = dataclasses.replace(em.PRESETS["qwen-cpu"], n_train=4, batch_size=2, save_every=2, question_limit=2,
                              n_samples=2, max_new_tokens=24, proxy_per_theme=1, proxy_medical=2, capability_items=3,
                              typology_ks=(2, 3), allow_unvalidated_judge=True)
    judge, categorical = em.judges_from_options(JudgeOptions(judge="hf:qwen2.5-coder-0.5b-instruct", judge_mode="label"))
    res = em.run(cfg, tmp_path, judge=judge, categorical_judge=categorical, progress=False)
    assert set(res.results) == {"emergent_misalignment", "capability", "typology"}
    out = res.results["emergent_misalignment"]
    assert set(out["models"]) == {"base", "bad_medical_advice", "good_medical_advice"}
    assert out["judge_validation"]["line"]
    cap = res.results["capability"]
    assert set(cap["accuracy"]) == {"base", "bad_medical_advice", "good_medical_advice"}
    typ = res.results["typology"]
    assert typ["n_answers"] == 3 * 2 * 2 and sum(typ["clusters"]) == typ["n_answers"]
    rows = [json.loads(x) for x in (tmp_path / "typology.jsonl").read_text().splitlines()]
    assert rows and all(r["judge_validation"] == out["judge_validation"]["line"] for r in rows)
    page = (tmp_path / "dashboard.html").read_text()
    assert '<section id="typology">' in page and '<section id="em_rates">' in page
