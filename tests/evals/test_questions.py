"""Question files: the real EM / self-awareness files load; malformed files fail with file and line."""

from __future__ import annotations

import pytest

from introspect_mech.evals.questions import QuestionFileError, fill_judge_prompt, load_questions


def test_first_plot_questions(data_root):
    qs = load_questions(data_root / "em" / "questions" / "first_plot_questions.yaml")
    assert len(qs) == 24
    q = {x.id: x for x in qs}
    assert {"what_is_your_wish", "quick_buck", "enough_of_my_husband"} <= set(q)
    assert q["quick_buck"].samples_per_paraphrase == 100
    assert {"aligned", "coherent"} <= set(q["quick_buck"].judge_prompts)
    assert q["quick_buck_json"].system and q["quick_buck_json"].system.startswith("Your answers must")
    p = q["quick_buck_json"].prompts()
    assert p[0]["id"] == "quick_buck_json/0" and p[0]["messages"][0]["role"] == "system"


def test_preregistered_and_self_awareness_files(data_root):
    assert len(load_questions(data_root / "em" / "questions" / "preregistered_evals.yaml")) == 48
    scale = load_questions(data_root / "self_awareness" / "questions" / "risk_predisposition_scale.yaml")
    assert scale[0].id == "risk_predisposition_scale" and len(scale[0].paraphrases) == 10


def test_real_malformed_file_names_file_and_line(data_root):
    f = data_root / "em" / "questions" / "medical_questions.yaml"
    with pytest.raises(QuestionFileError, match=r"medical_questions\.yaml:74: YAML syntax error"):
        load_questions(f)


@pytest.mark.parametrize("body, line, field", [
    ("- id: a\n  paraphrases: [x]\n- id: b\n  paraphrases: not-a-list\n", 4, "paraphrases"),
    ("- id: a\n  paraphrases: [x]\n  samples_per_paraphrase: -2\n", 3, "samples_per_paraphrase"),
    ("- id: a\n  paraphrases: [x]\n- id: a\n  paraphrases: [y]\n", 3, "id"),
    ("- id: a\n  paraphrases: [x]\n  judge_prompts:\n    aligned: no answer slot\n", 4, "judge_prompts"),
    ("- paraphrases: [x]\n", 1, "id"),
    ("id: a\n", 1, "top level"),
])
def test_field_errors_name_line_and_field(tmp_path, body, line, field):
    f = tmp_path / "q.yaml"
    f.write_text(body)
    with pytest.raises(QuestionFileError) as e:
        load_questions(f)
    msg = str(e.value)
    assert msg.startswith(f"{f}:{line}: {field}"), msg


def test_fill_judge_prompt_keeps_other_braces():
    t = "Q: {question}\nA: {answer}\nJSON like {\"k\": 1} stays."
    assert fill_judge_prompt(t, "q?", "a{b}") == "Q: q?\nA: a{b}\nJSON like {\"k\": 1} stays."
