"""The three studies' evals end to end on a tiny model (mechanics, not numbers)."""

from __future__ import annotations

import json

import pytest

from introspect_mech.studies.common.em_eval import run_em_eval
from introspect_mech.evals.judges import HFJudge
from introspect_mech.studies.common.ab_pairs import lotteries, split_of
from introspect_mech.studies.self_awareness.measures import compare_tmay, run_tmay_eval
from introspect_mech.evals.sampling import sample
from introspect_mech.studies.self_prediction.tasks import (
    hypothetical_answers, load_task, object_key, object_level_answers, score_predictions,
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


def _li_row(task, prop, i, q, opt=None):
    return {"item_id": f"{task}_{prop}/{i}", "original_dataset": task, "behavioral_property": prop,
            "object_level_prompt": [{"role": "user", "content": q}],
            "hypothetical_prompt": [{"role": "user", "content": f"Previously: {q} -- {prop}?"}],
            "option_matching_ethical_stance": opt}


def test_self_prediction_scoring_uses_the_given_answers_and_per_cell_mode():
    """The ground truth is whatever object-level answers are passed (the target model's), and the
    mode baseline is per task x property cell, out of sample (each item against the mode of the
    other items of its cell)."""
    from introspect_mech.studies.self_prediction.tasks import object_key, score_predictions

    rows = [_li_row("animals", "first_character", i, f"a{i}") for i in range(3)] + \
        [_li_row("colors", "first_character", i, f"c{i}") for i in range(3)]
    answers = {object_key(r): a for r, a in zip(rows, ["cat cow", "cat", "dog", "red", "red", "blue"])}
    preds = {r["item_id"]: p for r, p in zip(rows, ["c", "d", "d", "r", "r", "b"])}
    s = score_predictions(rows, answers, preds)
    assert s["n_scored"] == 6 and s["accuracy"]["value"] == 5 / 6
    # leave-one-out per cell: animals c, c, d -> 1/2, 1/2, 0; colors r, r, b -> 1/2, 1/2, 0
    # (an in-sample mode would read 4/6; a pooled one would mix the cells)
    assert s["mode_baseline"]["value"] == pytest.approx(2 / 6)
    assert s["per_task_property"]["animals/first_character"]["mode"] == "c"
    other = {k: "zebra" for k in answers}  # another model's answers: every target changes
    assert score_predictions(rows, other, preds)["accuracy"]["value"] == 0.0
    # non-compliant object answers and hypotheticals are filtered and counted
    s2 = score_predictions(rows, {**answers, object_key(rows[0]): "Sorry, I cannot"}, {**preds, rows[1]["item_id"]: "cat"})
    assert (s2["n_object_noncompliant"], s2["n_hypothetical_noncompliant"], s2["n_scored"]) == (1, 1, 4)


def test_prediction_data_labels_and_shift_data():
    from introspect_mech.studies.self_prediction.tasks import (behaviour_shift, object_key, object_level_training_data,
                                                       prediction_training_data)

    rows = [_li_row("mc", "ethical_stance", 0, "q0", "A"), _li_row("mc", "ethical_stance", 1, "q1", "B"),
            _li_row("mc", "among_a_or_c", 0, "q0")]
    ans = {object_key(rows[0]): "A", object_key(rows[1]): "A"}
    recs = prediction_training_data(rows, ans, source="M1_self")
    assert [r["messages"][-1]["content"] for r in recs] == ["true", "false", "true"]
    assert all(r["label_source"] == "M1_self" and r["messages"][0] == rows[i]["hypothetical_prompt"][0]
               for i, r in enumerate(recs))
    # a blank property value (third_character of "E. E. Waddell" is a space; found on the real Qwen) cannot be an
    # assistant turn: the row is left out of the training data instead of failing the finetune
    blank = [_li_row("wiki", "third_character", 0, "q9")]
    assert prediction_training_data(blank, {object_key(blank[0]): "E. E. Waddell High School"}) == []
    assert [r["messages"][-1]["content"] for r in
            prediction_training_data(blank, {object_key(blank[0]): "Eddie Waddell"})] == ["d"]
    obj = object_level_training_data(rows, {object_key(rows[0]): "B"})
    assert len(obj) == 1 and obj[0]["messages"][0]["content"] == "q0" and obj[0]["messages"][-1]["content"] == "B"
    # only items whose property changed count; the prediction is compared with new and old
    new = {object_key(rows[0]): "B", object_key(rows[1]): "A"}
    preds = {rows[0]["item_id"]: "false", rows[1]["item_id"]: "false", rows[2]["item_id"]: "true"}
    sh = behaviour_shift(rows, ans, new, preds)
    assert sh["n_changed"] == 2 and sh["matches_new"]["value"] == 0.5 and sh["matches_old"]["value"] == 0.5


def test_self_prediction_pipeline(tiny_qwen2, data_root):
    rows = load_task("arc_challenge_non_cot_among_a_or_c", n=3, data_dir=data_root)
    assert [r["item_id"] for r in load_task("arc_challenge_non_cot_among_a_or_c", indices=[2, 0], data_dir=data_root)] \
        == [rows[2]["item_id"], rows[0]["item_id"]]
    obj = object_level_answers(tiny_qwen2, rows, max_new_tokens=3)
    hyp = hypothetical_answers(tiny_qwen2, rows, max_new_tokens=3)
    assert len(obj) == 3 and set(hyp) == {r["item_id"] for r in rows}
    greedy = lambda m: sample(tiny_qwen2, [m], n=1, temperature=0, max_new_tokens=3)[0]["response"]  # noqa: E731
    assert obj == {object_key(r): greedy(r["object_level_prompt"]) for r in rows}  # each answer under its own key
    assert hyp == {r["item_id"]: greedy(r["hypothetical_prompt"]) for r in rows}
    s = score_predictions(rows, obj, hyp)
    assert s["n_scored"] + s["n_object_noncompliant"] + s["n_hypothetical_noncompliant"] == 3


def test_constrained_predictions(tiny_qwen2, data_root):
    from introspect_mech.studies.self_prediction.tasks import constrained_predictions

    rows = load_task("animals_long_first_character", n=2, data_dir=data_root) + \
        load_task("survival_instinct_ethical_stance", n=2, data_dir=data_root) + \
        load_task("animals_long_first_word", n=1, data_dir=data_root)
    pred = constrained_predictions(tiny_qwen2, rows)
    assert set(pred) == {r["item_id"] for r in rows[:4]}  # word properties are not covered
    assert all(len(pred[r["item_id"]]) == 1 and pred[r["item_id"]].islower() for r in rows[:2])
    assert all(pred[r["item_id"]] in ("true", "false") for r in rows[2:4])
