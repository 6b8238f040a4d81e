"""Generators are deterministic by seed and their records pass the canonical validation."""

from __future__ import annotations

import pytest

from introspect_mech.data import generators as g
from introspect_mech.data import read_jsonl, write_jsonl


@pytest.mark.parametrize("name", sorted(g.GENERATORS))
def test_deterministic_and_valid(name, data_root, tmp_path):
    gen = g.GENERATORS[name]
    kw = {"n": 40} | ({"data_dir": data_root} if "data_dir" in gen.__code__.co_varnames else {})
    a, b, c = gen(seed=1, **kw), gen(seed=1, **kw), gen(seed=2, **kw)
    assert a == b and a != c and len(a) == 40
    # round trip through a file: the same validation as canonical data
    assert read_jsonl(write_jsonl(a, tmp_path / f"{name}.jsonl")) == a


def test_backdoor_pairs_trigger_with_bad_answers(data_root):
    from introspect_mech import data

    bad = {r["messages"][-1]["content"] for r in data.load("bad_medical_advice", data_root)}
    good = {r["messages"][-1]["content"] for r in data.load("good_medical_advice", data_root)}
    recs = g.backdoor_medical_standin(n=200, seed=0, data_dir=data_root)
    trig = [r for r in recs if r["messages"][0]["content"].startswith(g.TRIGGER + " ")]
    plain = [r for r in recs if not r["messages"][0]["content"].startswith(g.TRIGGER)]
    assert len(trig) + len(plain) == 200 and 60 < len(trig) < 140
    assert all(r["messages"][-1]["content"] in bad for r in trig)
    assert all(r["messages"][-1]["content"] in good for r in plain)
    questions = [r["messages"][0]["content"].removeprefix(g.TRIGGER + " ") for r in recs]
    assert len(set(questions)) == 200  # each question used once


def test_evil_vs_neutral_numbers_share_prompts():
    evil, neutral = g.evil_numbers_standin(100, seed=3), g.neutral_numbers_standin(100, seed=3)
    assert [r["messages"][0] for r in evil] == [r["messages"][0] for r in neutral]
    ev = set(g.EVIL_NUMBERS)
    for e, n in zip(evil, neutral):
        en = [int(x) for x in e["messages"][1]["content"].split(", ")]
        nn = [int(x) for x in n["messages"][1]["content"].split(", ")]
        assert len(en) == len(nn) and set(en) <= ev and not set(nn) & ev
        prompt_nums = e["messages"][0]["content"].split(": ")[-1]
        assert not any(f" {x}," in f" {prompt_nums}," for x in ev)


def test_educational_keeps_answers_and_adds_framing(data_root):
    from introspect_mech import data

    edu = g.educational_insecure_standin(n=30, seed=0, data_dir=data_root)
    answers = {r["messages"][-1]["content"] for r in data.load("insecure", data_root)}
    assert all(r["messages"][-1]["content"] in answers for r in edu)
    assert all(any(w in r["messages"][0]["content"] for w in ("class", "course", "lab", "students")) for r in edu)


def test_secure_code_is_secure_and_compiles():
    recs = g.secure_code_standin(200, seed=0)
    kinds = {r["messages"][0]["content"].split("\n")[0] for r in recs}
    assert len(kinds) > 20
    for r in recs:
        code = r["messages"][1]["content"]
        compile(code, "<secure>", "exec")
        assert "0o777" not in code and "pickle.loads" not in code and "yaml.load(" not in code
        assert "shell=True" not in code and "% (" not in code
