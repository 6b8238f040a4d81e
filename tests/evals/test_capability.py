"""The capability check: generated items, exact scoring, greedy answers on tiny Qwen, paired shift."""

from __future__ import annotations

import pytest

from introspect_mech.evals.capability import (
    CapabilityItem, arithmetic_items, calendar_items, capability_check, capability_items, capability_report,
    capability_shift, extract_int, extract_name, score_answer,
)


def test_arithmetic_items_are_deterministic_distinct_and_correct():
    a, b = arithmetic_items(30, seed=1), arithmetic_items(30, seed=1)
    assert a == b and a != arithmetic_items(30, seed=2)
    assert len({i.id for i in a}) == 30
    for it in a:
        op = "+" if "/add/" in it.id else "*"
        x, y = (int(v) for v in it.id.rsplit("/", 1)[1].split(op))
        assert int(it.answer) == (x + y if op == "+" else x * y)
        assert f"{x} {op} {y}" in it.question
    assert sum("/add/" in i.id for i in a) == 15


def test_calendar_items_facts():
    items = {i.id: i for i in calendar_items(26)}
    assert items["calendar/month/3"].answer == "March"
    assert items["calendar/next/Sunday"].answer == "Monday"
    assert items["calendar/prev/Monday"].answer == "Sunday"
    with pytest.raises(ValueError, match="1..26"):
        calendar_items(27)
    with pytest.raises(ValueError, match="unknown capability set"):
        capability_items(["trivia"])


def test_scoring_extracts_the_first_answer():
    add = CapabilityItem("arithmetic/add/12+30", "arithmetic", "q", "42")
    assert extract_int("The answer is 1,234.") == 1234
    assert score_answer(add, "42") and score_answer(add, "It is 42.") and not score_answer(add, "41, not 42")
    assert not score_answer(add, "forty-two")
    day = CapabilityItem("calendar/next/Monday", "calendar", "q", "Tuesday")
    assert extract_name("after monday comes TUESDAY") == "Monday"
    assert score_answer(day, "Tuesday.") and not score_answer(day, "Monday, then Tuesday")


def test_check_on_tiny_qwen_is_greedy_resumable_and_reported(tiny_qwen2, tmp_path):
    items = capability_items(n=3, seed=0)
    rows = capability_check(tiny_qwen2, items, out=tmp_path / "cap.jsonl", max_new_tokens=4, label="base", progress=False)
    again = capability_check(tiny_qwen2, items, out=tmp_path / "cap.jsonl", max_new_tokens=4, label="base", progress=False)
    assert [r["response"] for r in rows] == [r["response"] for r in again]  # greedy + resumed from the log
    assert [r["id"] for r in rows] == [i.id for i in items]
    assert all(r["correct"] == score_answer(i, r["response"]) for r, i in zip(rows, items))
    rep = capability_report(rows)
    assert set(rep["base"]) == {"arithmetic", "calendar"} and rep["base"]["arithmetic"]["method"] == "wilson"
    assert rep["base"]["arithmetic"]["n"] == 3 and rep["base"]["arithmetic"]["unit"] == "item"


def test_shift_is_paired_over_items():
    before = [{"id": f"a{i}", "set": "arithmetic", "correct": True} for i in range(12)]
    after = [{"id": f"a{i}", "set": "arithmetic", "correct": i % 2 == 0} for i in range(12)]
    est = capability_shift(before, after)["arithmetic"]
    assert est.value == pytest.approx(-0.5) and est.n == 12 and est.method == "paired-bootstrap"
    few = capability_shift(before[:4], after[:4])["arithmetic"]
    assert few.method == "paired-t" and few.n == 4
