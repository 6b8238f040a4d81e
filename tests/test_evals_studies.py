"""The three studies' evals end to end on a tiny model (mechanics, not numbers)."""

from __future__ import annotations

import json

import pytest

from introspect_mech.evals.em import run_em_eval
from introspect_mech.evals.judges import HFJudge
from introspect_mech.evals.self_awareness import compare_tmay, lotteries, run_tmay_eval, split_of
from introspect_mech.evals.self_prediction import (
    hypothetical_answers, load_task, object_level_answers, score_predictions,
)


def test_em_eval_runs_and_resumes(tiny_qwen2, tmp_path, data_root):
    kw = dict(judge=HFJudge(tiny_qwen2, min_mass=0.0), question_ids=["quick_buck", "dinner_party"], n=2,
              max_new_tokens=4, batch_size=4, judge_free=False, progress=False)
    res = run_em_eval(tiny_qwen2, tmp_path, **kw)
    rep = res["report"]
    assert set(rep["per_question"]) == {"quick_buck", "dinner_party"} and rep["overall"]["n"] == 4
    judged = [json.loads(x) for x in (tmp_path / "judged.jsonl").read_text().splitlines()]
    assert len(judged) == 4 and all(0 <= r["aligned"] <= 100 and 0 <= r["aligned_mass"] <= 1 for r in judged)
    man = json.loads((tmp_path / "manifest.json").read_text())
    assert man["judge"]["kind"] == "HFJudge" and man["questions"]["sha256"]
    run_em_eval(tiny_qwen2, tmp_path, **kw)  # rerun: nothing duplicated
    assert len((tmp_path / "samples.jsonl").read_text().splitlines()) == 4
    assert len((tmp_path / "judged.jsonl").read_text().splitlines()) == 4


def test_em_eval_unknown_question_fails_before_work(tiny_qwen2, tmp_path, data_root):
    with pytest.raises(ValueError, match="unknown question ids"):
        run_em_eval(tiny_qwen2, tmp_path, question_ids=["nope"], judge_free=False)
    assert not (tmp_path / "samples.jsonl").exists()


def test_lottery_split_is_disjoint_and_labelled(data_root):
    test, train = lotteries("test", data_root), lotteries("train", data_root)
    assert len(test) + len(train) == 288 and 40 < len(test) < 110
    assert not {t["messages"][0]["content"] for t in test} & {t["messages"][0]["content"] for t in train}
    assert all({t["risky"], t["safe"]} == {"A", "B"} for t in test)
    assert all(split_of(t["messages"][0]["content"]) == "test" for t in test)


def test_tmay_eval_measures_held_out_lotteries(tiny_qwen2, tmp_path, data_root):
    res = run_tmay_eval(tiny_qwen2, tmp_path, n_lotteries=3, n_words=1, data_dir=data_root)
    man = json.loads((tmp_path / "manifest.json").read_text())
    assert man["split"] == "test" and all(split_of(q["messages"][0]["content"]) == "test"
                                           for q in lotteries("test", data_root) if q["id"] in man["test_ids"])
    assert len(man["test_ids"]) == 3 and len(res["behaviour"]["per_item"]) == 3
    assert all(0 <= v["mean_mass"] <= 1 for v in res["scales"].values())
    # the comparison of a result with a shifted copy recovers the shift (paired over lotteries)
    shifted = json.loads(json.dumps(res))
    shifted["behaviour"]["per_item"] = [p + 0.25 for p in res["behaviour"]["per_item"]]
    cmp = compare_tmay(shifted, res)
    assert cmp["risky_minus_safe"]["p_risky"]["value"] == pytest.approx(0.25)


def test_self_prediction_pipeline(tiny_qwen2, data_root):
    rows = load_task("arc_challenge_non_cot_among_a_or_c", n=3, data_dir=data_root)
    obj = object_level_answers(tiny_qwen2, rows, max_new_tokens=3)
    hyp = hypothetical_answers(tiny_qwen2, rows, max_new_tokens=3)
    assert len(obj) == 3 and set(hyp) == {r["item_id"] for r in rows}
    s = score_predictions(rows, obj, hyp)
    assert s["n_scored"] + s["n_object_noncompliant"] + s["n_hypothetical_noncompliant"] == 3


def test_constrained_predictions(tiny_qwen2, data_root):
    from introspect_mech.evals.self_prediction import constrained_predictions

    rows = load_task("animals_long_first_character", n=2, data_dir=data_root) + \
        load_task("survival_instinct_ethical_stance", n=2, data_dir=data_root) + \
        load_task("animals_long_first_word", n=1, data_dir=data_root)
    pred = constrained_predictions(tiny_qwen2, rows)
    assert set(pred) == {r["item_id"] for r in rows[:4]}  # word properties are not covered
    assert all(len(pred[r["item_id"]]) == 1 and pred[r["item_id"]].islower() for r in rows[:2])
    assert all(pred[r["item_id"]] in ("true", "false") for r in rows[2:4])
