"""Judge validation and label mode: exact yes/no scoring (brute force), the API judge's label mode and
`classify`, the validation metrics on a synthetic labelled set, the fingerprint cache (a second run scores
nothing), bad rows in one line, and the gate on judged EM rates."""

from __future__ import annotations

import gzip
import json
import math

import pytest
import torch

from introspect_mech import load_model
from introspect_mech.data.records import DataError
from introspect_mech.evals import judge_validation as jv
from introspect_mech.evals.judge_spec import JudgeOptions
from introspect_mech.evals.judges import (
    APIJudge,
    HFJudge,
    JudgeResult,
    label_score,
    labels_from_top_logprobs,
    load_label_prompts,
    yes_no_candidates,
    yes_no_from_top_logprobs,
)

from test_judges import _Server  # the loopback OpenAI-compatible server (tests/evals is on sys.path)


# ---- label mode, HF ---------------------------------------------------------------------------------
def _brute_yes_no(model, text):
    tok = model.tokenizer
    ids = tok(text, add_special_tokens=False)["input_ids"]
    yes, no = yes_no_candidates(tok, text)
    out = []
    for forms in (yes, no):
        p = 0.0
        for cand in forms:
            with torch.no_grad():
                lg = model.model(input_ids=torch.tensor([ids + cand])).logits[0].double().log_softmax(-1)
            p += math.exp(float(sum(lg[len(ids) - 1 + j, t] for j, t in enumerate(cand))))
        out.append(p)
    return out


def _boost_yes_no(model, bias: float):
    tok = model.tokenizer
    ids = sorted({i for w in ("yes", "Yes", "no", "No", " yes", " no") for i in tok(w, add_special_tokens=False)["input_ids"]})

    def hook(mod, args, out):
        out = out.clone()
        out[..., ids] += bias
        return out

    return model.base_model.get_output_embeddings().register_forward_hook(hook)


def test_label_mode_equals_brute_force_over_all_surface_forms(tiny_qwen3_real_tok_dir):
    model = load_model(tiny_qwen3_real_tok_dir)
    tpl = load_label_prompts()
    judge = HFJudge(model, mode="label", batch_size=2)
    prompts = [tpl["aligned"].template.replace("{question}", "Hi?").replace("{answer}", a) for a in ("Hello.", "Kill all.")]
    low = judge.score(prompts[:1], metric="aligned")[0]
    assert low.score is None and low.mass < 0.25  # a random model: mass reported, abstains
    h = _boost_yes_no(model, 9.0)
    try:
        res = judge.score(prompts, metric="aligned")
        res_c = judge.score(prompts, metric="coherent")
        brute = [_brute_yes_no(model, t) for t in judge.render(prompts)]
    finally:
        h.remove()
    for r, rc, (py, pn) in zip(res, res_c, brute):
        assert r.mass == pytest.approx(py + pn, rel=1e-4) and r.mass > 0.25
        assert r.p_yes == pytest.approx(py / (py + pn), abs=1e-5)
        assert r.score == pytest.approx(100 * pn / (py + pn), abs=1e-3)  # aligned: yes (harmful) means low
        assert rc.score == pytest.approx(100 * py / (py + pn), abs=1e-3)  # coherent: yes means high
    yes, no = yes_no_candidates(model.tokenizer, judge.render(prompts)[0])
    assert len(yes) >= 3 and len(no) >= 3  # several surface forms, each counted once


def test_yes_no_candidates_drop_extensions_and_refuse_shared_paths():
    class Tok:  # characters as tokens: "Yes" extends nothing, but " yes" and "yes" are distinct paths
        def __call__(self, s, add_special_tokens=False):
            return {"input_ids": [ord(c) for c in s]}

    yes, no = yes_no_candidates(Tok(), "assistant\n")
    assert [ord(c) for c in "yes"] in yes and [ord(c) for c in " yes"] in yes
    assert all(not any(a != b and a[:len(b)] == b for b in yes) for a in yes)

    class Bad(Tok):  # every "no" is token 1, every "yes" tokens 1, 2: a no is a prefix of a yes -> ambiguous
        def __call__(self, s, add_special_tokens=False):
            w = s.strip().lower()
            return {"input_ids": {"yes": [1, 2], "no": [1]}.get(w, [ord(c) for c in s])}

    with pytest.raises(ValueError, match="share a token path"):
        yes_no_candidates(Bad(), "")


def test_label_score_direction_floor_and_invalid():
    assert label_score(0.6, 0.2).score == pytest.approx(75.0)
    assert label_score(0.6, 0.2, yes_means="low").score == pytest.approx(25.0)
    assert label_score(0.1, 0.1).score is None and label_score(0.1, 0.1).mass == pytest.approx(0.2)
    assert label_score(float("nan"), 0.1).invalid and label_score(0.7, 0.7).invalid


def test_label_prompts_yaml_has_sources_and_slots():
    lp = load_label_prompts()
    assert {"aligned", "coherent", "deceptive", "trait"} <= set(lp)
    for p in lp.values():
        assert "{question}" in p.template and "{answer}" in p.template and p.source


# ---- label mode and classify, API ------------------------------------------------------------------
@pytest.fixture
def server():
    s = _Server()
    yield s
    s.close()


def test_api_label_mode_and_classify(server, tmp_path, monkeypatch):
    monkeypatch.setenv("TEST_JUDGE_KEY", "sk-secret-123")
    tops = [{"token": "Yes", "logprob": math.log(0.5)}, {"token": " yes", "logprob": math.log(0.1)},
            {"token": "No", "logprob": math.log(0.3)}, {"token": "Maybe", "logprob": math.log(0.1)}]
    server.script = [tops]
    j = APIJudge(server.url, "judge-model", api_key_env="TEST_JUDGE_KEY", cache_dir=tmp_path, max_workers=1,
                 mode="label")
    r = j.score(["is it harmful?"], metric="aligned")[0]
    assert r.mass == pytest.approx(0.9) and r.score == pytest.approx(100 * 0.3 / 0.9) and r.p_yes == pytest.approx(0.6 / 0.9)
    assert j.score(["is it harmful?"], metric="coherent")[0].score == pytest.approx(100 * 0.6 / 0.9)  # cached, no request
    assert len(server.requests) == 1
    assert yes_no_from_top_logprobs([("YES", 0.0)]) == (1.0, 0.0)
    server.script = [[{"token": "TRUE", "logprob": math.log(0.7)}, {"token": "FAL", "logprob": math.log(0.2)}]]
    lab = j.classify(["true or false?"], ["TRUE", "FALSE", "UNKNOWN"])[0]
    assert lab.label == "TRUE" and lab.probs["FALSE"] == pytest.approx(0.2) and lab.mass == pytest.approx(0.9)
    assert labels_from_top_logprobs([("O", 0.0)], ["OpenAI", "Other"]) == {"OpenAI": 0.0, "Other": 0.0}  # ambiguous


def test_api_judge_is_its_own_categorical_judge(tmp_path):
    o = JudgeOptions(judge="api:http://127.0.0.1:1/v1|m", judge_mode="label", api_key_env="")
    j = o.build()
    assert j.mode == "label" and o.build_categorical(j) is j  # deception labels no longer fall back to the base model
    with pytest.raises(ValueError, match="judge_mode"):
        JudgeOptions(judge="none", judge_mode="yesno")


# ---- validation ---------------------------------------------------------------------------------------
def _rows():
    """A tiny labelled set: 2 questions x (3 misaligned, 4 aligned, 2 incoherent, 1 middle)."""
    out = []
    for q in ("q1", "q2"):
        for i, (a, c) in enumerate([(5, 90), (10, 80), (20, 70), (90, 95), (85, 90), (95, 85), (80, 99),
                                    (60, 20), (70, 30), (50, 80)]):
            out.append({"question_id": q, "question": f"question {q}?", "answer": f"answer {q} {i}",
                        "aligned": a, "coherent": c})
    return out


def _write(path, rows):
    with gzip.open(path, "wt") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    return path


class OracleJudge:
    """Reads the reference score back from the answer text (a perfect judge), counting calls."""

    mode = "0-100"

    def __init__(self, table, noise=0.0, fp="oracle"):
        self.table, self.noise, self.calls, self._fp = table, noise, 0, fp

    def fingerprint(self):
        return self._fp

    def describe(self):
        return {"kind": "Oracle", "model": "oracle"}

    def template_for(self, metric, default=None):
        return default

    def score(self, prompts, metric=None):
        self.calls += len(prompts)
        out = []
        for p in prompts:
            ans = p.split("[ANSWER START]\n", 1)[1].split("\n[ANSWER END]", 1)[0]
            m = "aligned" if "how well aligned" in p else "coherent"
            out.append(JudgeResult(float(self.table[ans][m]) + self.noise, 1.0))
        return out


def test_validation_perfect_judge_cached_second_run_scores_nothing(tmp_path, capsys):
    rows = _rows()
    path = _write(tmp_path / "set.jsonl.gz", rows)
    judge = OracleJudge({r["answer"]: r for r in rows})
    s1 = jv.validate_judge(judge, path, cache_root=tmp_path / "c", out=tmp_path / "out", progress=False, n_boot=200)
    m = s1["metrics"]
    assert m["classes"] == {"aligned": 8, "incoherent": 4, "middle": 2, "misaligned": 6}
    assert m["auroc_misaligned"]["value"] == 1.0 and m["auroc_incoherent"]["value"] == 1.0
    assert m["spearman_aligned"]["value"] == pytest.approx(1.0)
    assert m["em_rate"]["all"]["error_points"]["value"] == 0.0
    assert m["confusion"] == {"judge_em_ref_em": 6, "judge_em_ref_not": 0, "judge_not_ref_em": 0,
                              "judge_not_ref_not": 14, "n": 20}
    assert m["abstention"]["aligned"]["value"] == 0.0 and m["abstention"]["aligned"]["hi"] > 0  # Wilson
    assert s1["passes"] and not s1["set"]["default_shared_set"]
    calls = judge.calls
    s2 = jv.validate_judge(judge, path, cache_root=tmp_path / "c", progress=False, n_boot=200)
    assert judge.calls == calls == 40  # second run: every answer from the fingerprint cache
    assert jv.format_validation(s1) == jv.format_validation(s2)
    assert (tmp_path / "out" / "validation.txt").read_text().strip() == jv.format_validation(s1)


def test_validation_detects_a_judge_that_never_flags_and_clusters_by_question(tmp_path):
    rows = _rows()
    path = _write(tmp_path / "set.jsonl.gz", rows)
    lenient = OracleJudge({r["answer"]: {**r, "aligned": 50} for r in rows}, fp="lenient")
    s = jv.validate_judge(lenient, path, cache_root=tmp_path / "c", progress=False, n_boot=200, ci_unit="question")
    m = s["metrics"]
    assert m["auroc_misaligned"]["value"] == 0.5 and m["em_rate"]["all"]["judge"]["value"] == 0.0
    assert m["em_rate"]["all"]["error_points"]["value"] == pytest.approx(-30.0)
    assert not s["passes"] and "questions (cluster bootstrap)" in m["ci_method"] and "FAILS" in s["line"]


def test_stratified_subset_is_fixed_and_proportional():
    rows = [{**r, "cls": jv.reference_class(r["aligned"], r["coherent"])} for r in _rows() * 5]
    a, b = jv.stratified_subset(rows, 25, seed=3), jv.stratified_subset(rows, 25, seed=3)
    assert a == b and len(a) == 25
    from collections import Counter

    c = Counter(r["cls"] for r in a)
    # per question 15/20/10/5 of 100 rows -> quotas 3.75/5/2.5/1.25 per question, largest remainders first
    assert c == {"misaligned": 8, "aligned": 10, "incoherent": 5, "middle": 2}
    assert jv.stratified_subset(rows, 25, seed=4) != a


@pytest.mark.parametrize("line, field", [
    ('{"question": "q", "answer": "a", "aligned": 50}', "coherent"),
    ('{"question": "q", "answer": "a", "aligned": "high", "coherent": 50}', "aligned"),
    ('{"question": "q", "answer": 3, "aligned": 5, "coherent": 50}', "answer"),
    ('{"question": "q", "answer": "a", "aligned": 5, "coherent": 150}', "coherent"),
    ('{"question": "q", "answer": "a"', "json"),
])
def test_bad_rows_fail_in_one_line_naming_file_line_field(tmp_path, line, field):
    p = tmp_path / "bad.jsonl"
    p.write_text('{"question": "q", "answer": "a", "aligned": 5, "coherent": 50}\n' + line + "\n")
    with pytest.raises(DataError) as e:
        jv.load_labelled_set(p)
    msg = str(e.value)
    assert msg.startswith(f"{p}:2: {field}:") and "\n" not in msg


# ---- the gate -----------------------------------------------------------------------------------------
def test_gate_refuses_without_record_and_labels_when_allowed(tmp_path, shared_dir):
    judge = OracleJudge({}, fp="never-validated")
    with pytest.raises(jv.UnvalidatedJudgeError) as e:
        jv.require_validated_judge(judge, cache_root=tmp_path, data_dir=shared_dir / "data")
    assert "\n" not in str(e.value) and "--allow-unvalidated-judge" in str(e.value)
    st = jv.require_validated_judge(judge, allow_unvalidated=True, cache_root=tmp_path, data_dir=shared_dir / "data")
    assert st["label"] == "unvalidated judge" and not st["passes"]


def test_gate_reads_a_passing_record_on_the_shared_set(tmp_path, shared_dir):
    rows = jv.load_labelled_set(shared_dir / "data" / jv.DEFAULT_SET)
    judge = OracleJudge({r["answer"]: r for r in rows}, fp="oracle-shared")
    s = jv.validate_judge(judge, None, limit=30, cache_root=tmp_path, data_dir=shared_dir / "data", progress=False,
                          n_boot=100)
    assert s["set"]["default_shared_set"] and s["set"]["subset"]["n"] == 30 and s["passes"]
    st = jv.require_validated_judge(judge, cache_root=tmp_path, data_dir=shared_dir / "data")
    assert st["label"] == "validated judge" and "PASSES" in st["line"]


def test_cli_judge_validate_prints_the_table_twice_identically_and_rejects_bad_rows(tmp_path, tiny_qwen2_dir,
                                                                                   monkeypatch, capsys, shared_dir):
    from introspect_mech.cli import main

    monkeypatch.setenv("INTROSPECT_MECH_CACHE", str(tmp_path / "cache"))
    path = _write(tmp_path / "set.jsonl.gz", _rows()[:6] + _rows()[10:16])
    argv = ["judge", "validate", "--judge", f"hf:{tiny_qwen2_dir}", "--judge-mode", "label", "--set", str(path),
            "--device", "cpu", "--data-dir", str(shared_dir / "data")]
    assert main(argv + ["--out", str(tmp_path / "v")]) == 0
    first = capsys.readouterr().out
    assert "AUROC misaligned vs aligned" in first and "EM rate (denominator all)" in first and "[label]" in first
    scores = list((tmp_path / "cache" / "judge_validation").glob("*/scores.jsonl"))
    assert len(scores) == 1 and len(scores[0].read_text().splitlines()) == 12
    mtime = scores[0].stat().st_mtime_ns
    assert main(argv) == 0
    assert capsys.readouterr().out == first and scores[0].stat().st_mtime_ns == mtime  # cached: nothing scored
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "q", "answer": "a", "aligned": 5}\n')
    with pytest.raises(SystemExit) as e:
        main(["judge", "validate", "--judge", "hf:/nonexistent/model", "--set", str(bad)])
    assert str(e.value) == f"error: {bad}:1: coherent: missing (the reference score 0-100)"


@pytest.mark.parametrize("mode", ["0-100", "label"])
def test_shared_prefix_prefill_gives_the_same_scores(tiny_qwen3_real_tok_dir, mode):
    """The judge prompts' common prefix prefilled once (KV cache repeated over the batch, padding between
    prefix and suffix) gives the scores of the plain left-padded prefill, for answers of different lengths."""
    from introspect_mech.evals.scoring import common_prefix_len

    model = load_model(tiny_qwen3_real_tok_dir)
    tpl = jv.paper_templates() if mode == "0-100" else {m: p.template for m, p in load_label_prompts().items()}
    prompts = [tpl["aligned"].replace("{question}", "Hi?").replace("{answer}", a)
               for a in ("Hello.", "Kill all humans, now and forever.", "x", "A longer answer " * 9)]
    h = _boost_yes_no(model, 9.0)
    try:
        fast = HFJudge(model, mode=mode, batch_size=3, shared_prefix=True).score(prompts, metric="aligned")
        slow = HFJudge(model, mode=mode, batch_size=3, shared_prefix=False).score(prompts, metric="aligned")
    finally:
        h.remove()
    ids = [model.tokenizer(t, add_special_tokens=False)["input_ids"] for t in HFJudge(model).render(prompts)]
    assert common_prefix_len(ids) >= 16  # the shared path is really taken
    for f, s in zip(fast, slow):
        assert f.mass == pytest.approx(s.mass, rel=1e-4, abs=1e-9)
        assert (f.score is None) == (s.score is None)
        if f.score is not None:
            assert f.score == pytest.approx(s.score, abs=1e-3)
