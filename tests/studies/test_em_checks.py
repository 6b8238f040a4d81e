"""The EM study's capability and typology stages on tiny Qwen with a scripted judge: they run after the
evaluation, read its answers and the finetunes' adapters, write the summary rows and the typology panel."""

from __future__ import annotations

import json

import pytest

from introspect_mech.evals.judges import JudgeResult


class MarkerJudge:
    """aligned 5 when the answer contains the marker, else 95; coherent 90 (a scripted judge)."""

    def __init__(self, marker: str):
        self.marker = marker

    def describe(self):
        return {"kind": "MarkerJudge", "model": "scripted"}

    def score(self, prompts):
        return [JudgeResult(90.0, 1.0) if "coheren" in p.lower() and "harmful" not in p
                else JudgeResult(5.0 if self.marker in p.rsplit("[ANSWER START]", 1)[-1] else 95.0, 1.0) for p in prompts]


def test_capability_and_typology_stages(tmp_path, tiny_qwen2_dir, data_root):
    from introspect_mech.studies import emergent_misalignment as em

    cfg = em.EMConfig(model=str(tiny_qwen2_dir), device="cpu", data_dir=str(data_root), datasets=("good_medical_advice",),
                      n_train=4, lr=1e-3, batch_size=4, max_seq_len=512, question_sets=("main",), question_limit=3,
                      n_samples=2, max_new_tokens=4, batch=8, proxy=False, allow_unvalidated_judge=True,
                      capability_items=3, typology="activations", typology_ks=(2, 3))
    res = em.run(cfg, tmp_path, judge=MarkerJudge("Z"), progress=False)
    cap = res.results["capability"]
    assert set(cap["accuracy"]) == {"base", "good_medical_advice"} and cap["items"] == 6
    assert set(cap["shift"]["good_medical_advice"]) == {"arithmetic", "calendar"}
    assert cap["shift"]["good_medical_advice"]["arithmetic"]["method"] == "paired-t"
    names = [r["name"] for r in res.summary]
    assert "capability arithmetic: base accuracy" in names and "capability calendar: good_medical_advice minus base" in names
    typ = res.results["typology"]
    assert typ["n_answers"] == 2 * 3 * 2 and sum(typ["clusters"]) == 12 and "after block" in typ["embedding"]
    rows = [json.loads(x) for x in (tmp_path / "typology.jsonl").read_text().splitlines()]
    assert {m for r in rows for m in r["shares"]} == {"base", "good_medical_advice"}
    jline = res.results["emergent_misalignment"]["judge_validation"]["line"]
    assert jline and all(r["judge_validation"] == jline for r in rows)  # the judge's validation line travels along
    assert "MarkerJudge" in rows[0]["judge"]
    page = (tmp_path / "dashboard.html").read_text()
    assert '<section id="typology">' in page
    # resumed: nothing reruns
    again = em.run(cfg, tmp_path, judge=MarkerJudge("Z"), progress=False)
    assert again.skipped == ["emergent_misalignment", "capability", "typology"]


def test_bad_typology_option_is_refused_before_work(tmp_path):
    from introspect_mech.studies import emergent_misalignment as em

    with pytest.raises(ValueError, match="typology must be none, activations or sentence"):
        em.run(em.EMConfig(typology="umap"), tmp_path / "r")
    assert not (tmp_path / "r").exists()


def test_label_mode_judge_scores_only_its_metrics(data_root):
    """The main questions carry a 0-100 `medical` prompt that label mode has no form for: it is not scored (the
    real-0.5B pilot stopped on it before this rule)."""
    from introspect_mech.evals.em import check_judgeable, judged_metrics
    from introspect_mech.studies.emergent_misalignment import load_question_set

    class LabelJudge:
        mode = "label"
        label_prompts = {"aligned": object(), "coherent": object(), "deceptive": object()}

        def template_for(self, metric, default=None):
            return "t"

    q = load_question_set("main", str(data_root))[0]
    assert "medical" in q.judge_prompts
    assert judged_metrics(q, None, LabelJudge()) == [m for m in q.judge_prompts if m in ("aligned", "coherent")]
    assert "medical" in judged_metrics(q, None, type("J", (), {"mode": "0-100"})())
    assert judged_metrics(q, ["aligned"], LabelJudge()) == ["aligned"]
    check_judgeable([q], None, LabelJudge(), None)  # no KeyError for `medical`
