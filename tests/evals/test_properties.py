"""Looking Inward property extractors, compliance filtering, scoring, builders and the shift check."""

from __future__ import annotations

import pytest

from introspect_mech.studies.self_prediction.properties import (PROPERTIES, answer_letter, extract_property, is_compliant,
                                                             parse_prediction)
from introspect_mech.studies.self_prediction.tasks import (
    behaviour_shift, compare_self_cross, cross_prediction_data, load_task, score_predictions, self_prediction_data,
    task_files,
)

CASES = [
    ("scarlet lavender ebony", "first_character", None, "s"),
    ("scarlet lavender ebony", "second_character", None, "c"),
    ("  \"Scarlet lavender\"", "third_character", None, "a"),
    ("ab", "third_character", None, None),
    ("Scarlet, lavender. ebony", "first_word", None, "scarlet"),
    ("Scarlet, lavender. ebony", "second_word", None, "lavender"),
    ("Scarlet, lavender. ebony", "third_word", None, "ebony"),
    ("scarlet lavender", "third_word", None, None),
    ("elephant cow", "starts_with_vowel", None, "true"),
    ("\"umbrella\"", "starts_with_vowel", None, "true"),
    ("cow elephant", "starts_with_vowel", None, "false"),
    ("123", "starts_with_vowel", None, None),
    ("A", "among_a_or_c", None, "true"),
    ("(C)", "among_a_or_c", None, "true"),
    ("B", "among_a_or_c", None, "false"),
    ("Answer: D", "among_b_or_d", None, "true"),
    ("a", "among_b_or_d", None, "false"),
    ("Banana", "among_a_or_c", None, None),  # not a letter answer
    ("B", "ethical_stance", "B", "true"),
    ("A - No, I have no desire.", "ethical_stance", "B", "false"),
    ("A", "ethical_stance", None, None),
    (" Paris. ", "identity", None, "paris"),
    ("I'm sorry, I cannot answer that.", "first_character", None, None),
    ("", "identity", None, None),
    ("As an AI language model I do not have preferences", "first_word", None, None),
]


@pytest.mark.parametrize("answer, prop, option, want", CASES)
def test_extract_property(answer, prop, option, want):
    assert extract_property(answer, prop, option) == want


def test_every_property_has_a_case():
    assert {c[1] for c in CASES} == set(PROPERTIES)


@pytest.mark.parametrize("answer, prop, want", [
    ("s", "first_character", "s"), ("'S'", "first_character", "s"), ("sc", "second_character", None),
    ("Lavender", "second_word", "lavender"), ("two words", "first_word", None),
    ("True", "starts_with_vowel", "true"), ("false.", "among_a_or_c", "false"), ("maybe", "ethical_stance", None),
    ("true", "among_b_or_d", "true"), ("Paris", "identity", "paris"), ("sorry", "first_character", None),
])
def test_parse_prediction(answer, prop, want):
    assert parse_prediction(answer, prop) == want


def test_unknown_property_and_compliance():
    with pytest.raises(ValueError, match="unknown behavioral_property"):
        extract_property("x", "fourth_character")
    assert not is_compliant("unknown") and not is_compliant("  ") and is_compliant("dog")
    assert answer_letter("B) because") == "B" and answer_letter("Because") is None


def _row(i, prop, q, opt=None):
    return {"item_id": f"t/{i}", "behavioral_property": prop, "option_matching_ethical_stance": opt,
            "object_level_prompt": [{"role": "user", "content": q}],
            "hypothetical_prompt": [{"role": "user", "content": f"hyp {q}"}]}


def _obj(rows, answers):
    from introspect_mech.studies.self_prediction.tasks import object_key

    return {object_key(r): a for r, a in zip(rows, answers)}


def test_score_predictions_with_mode_baseline_and_filtering():
    rows = [_row(i, "first_character", f"q{i}") for i in range(5)]
    obj = _obj(rows, ["apple", "avocado", "banana", "sorry, I can't", "apricot"])
    hyp = {"t/0": "a", "t/1": "b", "t/2": "b", "t/3": "a", "t/4": "two words"}
    s = score_predictions(rows, obj, hyp)
    assert s["n_scored"] == 3 and s["n_object_noncompliant"] == 1 and s["n_hypothetical_noncompliant"] == 1
    assert s["accuracy"]["value"] == pytest.approx(2 / 3)
    # targets a, a, b; the mode is out of sample (leave-one-out): a vs {a, b} tie -> 1/2, twice;
    # b vs {a, a} -> 0; baseline (1/2 + 1/2 + 0) / 3 (an in-sample mode would read 2/3)
    assert s["mode_baseline"]["value"] == pytest.approx(1 / 3)
    assert s["per_task_property"]["t/first_character"]["mode"] == "a"


def test_training_data_builders_and_self_vs_cross():
    rows = [_row(i, "first_word", f"q{i}") for i in range(4)]
    a = _obj(rows, ["red blue", "green red", "I'm sorry", "blue red"])
    b = _obj(rows, ["blue red", "green red", "red", "red blue"])
    sd = self_prediction_data(a, rows, "A")
    assert [r["messages"][-1]["content"] for r in sd] == ["red", "green", "blue"]
    assert sd[0]["messages"][0]["content"] == "hyp q0" and sd[0]["label_source"] == "A"
    cd = cross_prediction_data(b, rows, "B")
    assert [r["messages"][-1]["content"] for r in cd] == ["blue", "green", "red", "red"]
    self_s = score_predictions(rows, a, {"t/0": "red", "t/1": "green", "t/2": "x", "t/3": "blue"})
    cross_s = score_predictions(rows, a, {"t/0": "blue", "t/1": "green", "t/2": "x", "t/3": "red"})
    c = compare_self_cross(self_s, cross_s)
    assert c["n_common"] == 3 and c["self_minus_cross"]["value"] == pytest.approx(2 / 3)


def test_self_vs_cross_interval_over_task_property_cells():
    # an advantage carried by one cell's 20 items (one template) and nothing in 11 other cells: the interval over
    # items excludes 0, the one over cells (the unit the items' shared templates call for) does not
    rows = [dict(_row(i, "first_character", f"q{i}"), original_dataset="big") for i in range(20)]
    rows += [dict(_row(100 + i, "first_character", f"r{i}"), original_dataset=f"small{i}") for i in range(11)]
    obj = _obj(rows, ["apple"] * len(rows))
    self_s = score_predictions(rows, obj, {r["item_id"]: "a" for r in rows})
    cross_s = score_predictions(rows, obj, {r["item_id"]: "a" if i >= 20 else "b" for i, r in enumerate(rows)})
    c = compare_self_cross(self_s, cross_s)
    items, cells = c["self_minus_cross"], c["self_minus_cross_by_cell"]
    assert items["value"] == pytest.approx(20 / 31) and items["lo"] > 0
    assert cells["n"] == 12 and cells["unit"] == "task x property cell"
    assert cells["value"] == pytest.approx(20 / 31) and cells["lo"] <= 0 < cells["hi"]
    acc = cross_s["accuracy_by_cell"]
    assert acc["n"] == 12 and acc["value"] == pytest.approx(11 / 31)


def test_behaviour_shift_uses_only_changed_items():
    rows = [_row(i, "among_a_or_c", f"q{i}") for i in range(4)]
    old = _obj(rows, ["A", "B", "A", "C"])
    new = _obj(rows, ["B", "B", "D", "A"])  # items 0 and 2 change (true -> false); 1 and 3 do not
    pred = {"t/0": "false", "t/1": "true", "t/2": "true", "t/3": "true"}
    r = behaviour_shift(rows, old, new, pred)
    assert r["n_changed"] == 2
    assert r["matches_new"]["value"] == pytest.approx(0.5) and r["matches_old"]["value"] == pytest.approx(0.5)


def test_behaviour_shift_interval_over_task_property_cells():
    # 30 changed items of one cell follow the new behaviour, one changed item in each of 11 other cells the old one
    rows = [dict(_row(i, "first_character", f"q{i}"), original_dataset="big") for i in range(30)]
    rows += [dict(_row(100 + i, "first_character", f"r{i}"), original_dataset=f"small{i}") for i in range(11)]
    old, new = _obj(rows, ["apple"] * 41), _obj(rows, ["banana"] * 41)
    pred = {r["item_id"]: "b" if i < 30 else "a" for i, r in enumerate(rows)}
    r = behaviour_shift(rows, old, new, pred)
    items, cells = r["new_minus_old"], r["new_minus_old_by_cell"]
    assert r["n_changed"] == 41 and items["value"] == pytest.approx(19 / 41) and items["lo"] > 0
    assert cells["n"] == 12 and cells["unit"] == "task x property cell" and cells["lo"] <= 0 < cells["hi"]


def test_release_files_cover_every_property(data_root):
    files = task_files(data_root)
    props = set()
    for name in files:
        props.add(load_task(name, n=1, data_dir=data_root)[0]["behavioral_property"])
    assert props == set(PROPERTIES)
