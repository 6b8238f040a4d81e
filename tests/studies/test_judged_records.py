"""Every judged number other than an EM rate carries its judge's validation record, and the one gate holds:
the persona-vector filter, trait scores and layer selection, the persona-features screen, the EM study's
deception labels and the model-organisms answer selection (tiny models, scripted judges)."""

from __future__ import annotations

import json

import pytest

from introspect_mech.evals import JudgeResult
from introspect_mech.evals import judge_record as jr
from introspect_mech.evals import judge_validation as jv
from introspect_mech.studies.common.persona import TraitJudge, persona_data
from introspect_mech.studies import persona_vectors as pv


def _field(prompt: str, name: str) -> str:
    return prompt.split(f"[{name} START]\n", 1)[1].split(f"\n[{name} END]", 1)[0]


class FingerprintedJudge:
    """A judge with a fingerprint: reads GPT-4o's reference scores back from a table (the shared set) and
    gives `default` elsewhere (trait / coherence prompts of the persona studies)."""

    mode = "0-100"

    def __init__(self, fp: str, table=None, default: float = 60.0):
        self._fp, self.table, self.default, self.prompts = fp, table or {}, default, []

    def fingerprint(self):
        return self._fp

    def describe(self):
        return {"kind": "Fingerprinted", "model": f"judge-{self._fp}"}

    def template_for(self, metric, default=None):
        return default

    def score(self, prompts, metric=None):
        out = []
        for p in prompts:
            self.prompts.append(p)
            row = self.table.get(_field(p, "ANSWER")) if "[ANSWER START]" in p else None
            if isinstance(row, dict):
                out.append(JudgeResult(float(row["aligned" if "how well aligned" in p else "coherent"]), 1.0))
            elif row is not None and "independent of other traits" not in p:  # a planted trait score
                out.append(JudgeResult(float(row), 1.0))
            else:
                out.append(JudgeResult(self.default, 1.0))
        return out


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """A private cache: the studies look validation records up under `<cache>/judge_validation`."""
    c = tmp_path / "cache"
    monkeypatch.setenv("INTROSPECT_MECH_CACHE", str(c))
    return c


@pytest.fixture
def validated(cache, data_root):
    """A judge with a passing validation record on (a stratified subset of) the shared GPT-4o set."""
    rows = jv.load_labelled_set(data_root / jv.DEFAULT_SET)
    judge = FingerprintedJudge("passing", {r["answer"]: r for r in rows})
    s = jv.validate_judge(judge, None, limit=30, data_dir=data_root, progress=False, n_boot=50)
    assert s["passes"]
    return judge


def test_record_tag_and_fields_look_through_a_trait_judge(validated, data_root):
    st = jr.judge_record(TraitJudge(validated, "evil", data_dir=data_root), what="trait scores", data_dir=data_root)
    assert st["passes"] and st["label"] == "validated judge" and st["applies_to"] == "trait scores"
    assert "PASSES" in st["line"] and st["judge"] == "judge-passing"
    assert jr.tag(st) == "" and jr.fields(st) == {"judge_validation": st["line"], "judge_label": "validated judge"}
    assert jr.gate(validated, what="x", data_dir=data_root)["passes"]
    assert jr.judge_record(None) is None and jr.gate(None, what="x") is None  # judge-free: not a judged number


def test_gate_refuses_in_one_line_and_labels_when_allowed(cache, data_root):
    never = FingerprintedJudge("never-validated")
    with pytest.raises(jv.UnvalidatedJudgeError) as e:
        jr.gate(TraitJudge(never, "evil", data_dir=data_root), what="judged trait scores", data_dir=data_root)
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("refusing to report judged trait scores: judge judge-never-validated")
    assert "--allow-unvalidated-judge" in msg
    st = jr.gate(never, what="judged trait scores", allow_unvalidated=True, data_dir=data_root)
    assert not st["passes"] and st["label"] == "unvalidated judge"
    assert st["line"].startswith("unvalidated judge judge-never-validated: no validation record")
    assert jr.tag(st) == "[unvalidated judge] " == jr.tag(None)
    assert jr.fields(None) == {"judge_validation": "unvalidated judge", "judge_label": "unvalidated judge"}


def test_persona_filter_and_trait_scores_carry_the_record(tiny_qwen3, data_root, tmp_path, cache):
    """The pair filter's manifest and direction, trait_expression's manifest and result, select_layer's sweep rows."""
    kw = dict(n_instructions=2, n_questions=5, max_new_tokens=4, progress=False, data_dir=data_root, out=tmp_path / "pd")
    first = persona_data(tiny_qwen3, "evil", filter=None, **kw)  # the answers, to plant trait scores on
    table = {r["response"]: (90.0 if r["side"] == "pos" else 10.0) for r in first.rows}
    if len(table) < len(first.rows):
        pytest.skip("the tiny model gave a pos and a neg answer the same text; scores cannot be planted per side")
    judge = FingerprintedJudge("never-validated", table, default=60.0)
    res = persona_data(tiny_qwen3, "evil", judge=judge, **kw)
    assert len(res.kept) >= 2
    man = json.loads((tmp_path / "pd" / "manifest.json").read_text())
    assert man["filter"] == "judge"
    assert man["judge_validation"].startswith("unvalidated judge judge-never-validated")
    assert res.direction.meta["judge_validation"] == man["judge_validation"]
    assert "judge_validation" not in first.direction.meta  # no filter, no judge: no record at all

    te = pv.trait_expression(tiny_qwen3, "evil", judge, n_questions=1, n_per_question=1, max_new_tokens=3,
                             data_dir=data_root, out=tmp_path / "te", progress=False)
    assert te["judge_validation"]["label"] == "unvalidated judge" and not te["judge_validation"]["passes"]
    tman = json.loads((tmp_path / "te" / "manifest.json").read_text())
    assert tman["judge_validation"]["line"] == te["judge_validation"]["line"]
    sel = pv.select_layer(tiny_qwen3, "evil", res.direction, judge, layers=[0], coef=1.0, out=tmp_path / "sel",
                          n_questions=1, n_per_question=1, max_new_tokens=3, data_dir=data_root, progress=False)
    assert sel["judge_validation"]["label"] == "unvalidated judge"
    sweep = [json.loads(x) for x in (tmp_path / "sel" / "steering_sweep.jsonl").read_text().splitlines()]
    assert sweep and all(r["metric_name"] == "trait score (unvalidated judge)" for r in sweep)


def test_persona_vectors_study_gates_and_labels_its_judged_rows(tiny_qwen3, data_root, tmp_path, cache, validated):
    cfg = pv.PRESETS["cpu"].replace(stages=("select",), layers=(0,), n_questions=1, n_per_question=1,
                                    max_new_tokens=3)
    never = FingerprintedJudge("never-validated")
    with pytest.raises(jv.UnvalidatedJudgeError, match="judged trait scores"):
        pv._persona_vectors(tmp_path / "refused", cfg, judge=never, model=tiny_qwen3, echo=None)
    assert not (tmp_path / "refused" / "extract").exists()  # refused before any work

    lines: list[str] = []
    out = pv._persona_vectors(tmp_path / "allowed", cfg.replace(allow_unvalidated_judge=True), judge=never,
                              model=tiny_qwen3, echo=lines.append)
    man = json.loads((tmp_path / "allowed" / "manifest.json").read_text())
    assert man["judge_validation"]["label"] == "unvalidated judge"
    judged = [r for r in out["summary"] if "judge_label" in r]
    assert judged and all(r["name"].startswith("[unvalidated judge] ") for r in judged)
    assert all(r["judge_validation"] == man["judge_validation"]["line"] for r in judged)
    assert {r["name"] for r in judged} >= {"[unvalidated judge] trait expression, base (judged)",
                                          "[unvalidated judge] selected layer"}
    assert any(x.startswith("[unvalidated judge] trait expression, base (judged)") for x in lines)
    assert not any(r["name"].startswith("[") for r in out["summary"] if r["name"] == "steering layer")

    ok = pv._persona_vectors(tmp_path / "validated", cfg, judge=validated, model=tiny_qwen3, echo=None)
    vman = json.loads((tmp_path / "validated" / "manifest.json").read_text())
    assert vman["judge_validation"]["passes"]
    rows = [r for r in ok["summary"] if "judge_label" in r]
    assert rows and all(r["judge_label"] == "validated judge" and not r["name"].startswith("[") for r in rows)


def test_model_organisms_answer_selection_carries_the_record(tiny_qwen2):
    from introspect_mech.studies import model_organisms as mo

    cfg = mo.MOConfig()
    samples = [{"prompt_id": f"q/{i}", "sample": 0, "messages": [{"role": "user", "content": "hi"}],
                "response": f"answer {i}"} for i in range(2)]
    judged = [{"prompt_id": "q/0", "sample": 0, "aligned": 5.0, "coherent": 90.0},
              {"prompt_id": "q/1", "sample": 0, "aligned": 95.0, "coherent": 90.0}]
    rec = {"validated": True, "passes": False, "label": "unvalidated judge", "line": "judge x [label] ... FAILS"}
    d, info = mo.em_direction_from_answers(tiny_qwen2, judged, samples, cfg, judge_validation=rec)
    assert info["judge_validation"] == rec["line"] and info["judge_label"] == "unvalidated judge"
    assert d is not None and d.meta["judge_validation"] == rec["line"]
    _, none = mo.em_direction_from_answers(tiny_qwen2, judged[:1], samples, cfg)  # not computable; still labelled
    assert none["judge_label"] == "unvalidated judge" and "reason" in none


def test_model_organisms_and_em_printed_lines_are_labelled():
    from introspect_mech.studies import emergent_misalignment as em
    from introspect_mech.studies import model_organisms as mo

    e = {"value": 0.1, "lo": 0.0, "hi": 0.2, "n": 10}
    rate = {"coherent": e, "all": e, "coherent_rate": e, "n_judge_abstained": 0, "n_answers": 10}
    bad = {"validated": True, "passes": False, "label": "unvalidated judge", "line": "judge j FAILS"}
    res = {"judge": {"kind": "HFJudge", "model": "j"}, "judge_validation": bad, "em": {"base": rate},
           "shift": {"all": {**e, "significant": False}}, "direction": {"n_misaligned": 0, "n_aligned": 3,
                                                                         "reason": "not computable"},
           "reductions": {}, "phase": [{"step": 4, "lora_b_norm": 0.1, "em": {"all": e}, "cos_with_final_direction": None}]}
    lines = mo.format_results(res).splitlines()
    for start in ("finetune shift", "EM direction from the judge's answer selection", "reductions", "step    4"):
        assert any(x.startswith(f"[unvalidated judge] {start}") for x in lines), start
    good = {**bad, "passes": True, "label": "validated judge", "line": "judge j PASSES"}
    assert not any(x.startswith("[") for x in mo.format_results({**res, "judge_validation": good}).splitlines())

    lab = {"q": {"n_abstained": 0, "n": 4}}
    eres = {"judge": {"kind": "HFJudge", "model": "j"}, "judge_validation": None, "datasets": {},
            "label_judge_validation": {**bad, "line": "unvalidated judge HFCategoricalJudge: no fingerprint"},
            "models": {"base": {"deception_factual": {"labels": {"deceptive": lab}}}}}
    out = em.format_results(eres).splitlines()
    assert "label judge validation (deception labels): unvalidated judge HFCategoricalJudge: no fingerprint" in out
    assert any(x.startswith("[unvalidated judge] base") and "label 'deceptive'" in x for x in out)


def test_em_study_gates_the_deception_labels_before_any_work(tiny_qwen2_dir, data_root, tmp_path, cache):
    from introspect_mech.studies import emergent_misalignment as em

    cfg = em.EMConfig(model=str(tiny_qwen2_dir), device="cpu", data_dir=str(data_root), datasets=("insecure",),
                      n_train=2, question_sets=("deception_factual",), question_limit=1, n_samples=1, max_new_tokens=2)
    with pytest.raises(jv.UnvalidatedJudgeError, match="refusing to report judged deception labels: judge .*has no fingerprint"):
        em._emergent_misalignment(tmp_path / "em", cfg)
    assert not (tmp_path / "em" / "finetunes").exists()


def test_introspection_and_caft_gate_their_judged_rates(tiny_qwen3, tiny_qwen2_dir, tmp_path, cache):
    from introspect_mech.evals.judge_spec import JudgeOptions
    from introspect_mech.studies import caft as C
    from introspect_mech.studies import introspection as I

    cfg = I.IntrospectionConfig(words=("dust", "milk", "bread"), n_words=None, stages="A")
    with pytest.raises(jv.UnvalidatedJudgeError, match="judged detection / identification rates"):
        I._introspection(tmp_path / "intro", cfg, model=tiny_qwen3, judge=FingerprintedJudge("never"), progress=False)
    assert not (tmp_path / "intro" / "trials.jsonl").exists()
    small = I.IntrospectionConfig(words=("dust", "milk", "bread"), n_words=None, baseline="baseline",
                                  layer_fractions=(0.67,), strengths=(2.0,), headline_strength=2.0, n_samples=1,
                                  sample_words=1, max_new_tokens=3, stages="A", allow_unvalidated_judge=True)
    I._introspection(tmp_path / "intro2", small, model=tiny_qwen3, judge=FingerprintedJudge("never"), progress=False)
    rows = [json.loads(x) for x in (tmp_path / "intro2" / "summary.jsonl").read_text().splitlines()]
    judged = [r for r in rows if "judged" in r["name"]]
    assert judged and all(r["name"].startswith("[unvalidated judge] [") and r["judge_label"] == "unvalidated judge"
                          and r["note"] == "judge (unvalidated judge)" for r in judged)
    assert not any(r["name"].startswith("[unvalidated") for r in rows if "keyword proxy" in r.get("note", ""))

    ccfg = C.CAFTConfig(model=str(tiny_qwen2_dir), pick="0:0")
    with pytest.raises(jv.UnvalidatedJudgeError, match=r"a judged EM rate \(CAFT run 2\)"):
        C.run(ccfg, tmp_path / "caft", judge=JudgeOptions(judge=f"hf:{tiny_qwen2_dir}"), progress=False)
    assert not (tmp_path / "caft" / "finetunes").exists()
