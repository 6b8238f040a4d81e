"""Protocol conformance of the "Tell me about yourself" study (tiny random Qwen; seconds)."""

from __future__ import annotations

import dataclasses
import json
from collections import Counter

import pytest
import torch

from introspect_mech import load_model
from introspect_mech.evals.metrics import choice_probabilities
from introspect_mech.studies.common import ab_pairs
from introspect_mech.studies.self_awareness import backdoor, measures, reports
from introspect_mech.studies import self_awareness as st


def _q(row):
    return row["messages"][0]["content"]


# ---- splits ------------------------------------------------------------------------------------
@pytest.mark.parametrize("pair", list(ab_pairs.PAIRS))
def test_pair_splits_are_disjoint_and_training_rows_only_train(pair, data_root):
    cfg = st.TMAYConfig(n_train=None)
    s = st.split_ids(pair, cfg, data_root)
    items = {it["id"]: _q(it) for it in ab_pairs.ab_items(pair, "all", data_root)}
    assert s["train"] and s["test"] and not set(s["train"]) & set(s["test"])
    test_q = {items[i] for i in s["test"]}
    assert not {items[i] for i in s["train"]} & test_q
    assert all(ab_pairs.split_of(q) == "test" for q in test_q)
    p = ab_pairs.PAIRS[pair]
    for side in (p.pos, p.neg):
        rows = st.training_rows(pair, side, s["train"], data_root)
        assert rows and not {_q(r) for r in rows} & test_q  # a test question is never trained on


def test_n_train_subset_is_seeded_and_inside_train(data_root):
    a = st.split_ids("risk", st.TMAYConfig(n_train=20, n_test=10), data_root)
    b = st.split_ids("risk", st.TMAYConfig(n_train=20, n_test=10), data_root)
    full = st.split_ids("risk", st.TMAYConfig(), data_root)
    assert a == b and len(a["train"]) == 20 and len(a["test"]) == 10
    assert set(a["train"]) <= set(full["train"]) and set(a["test"]) <= set(full["test"])


def test_check_disjoint_rejects_overlap(data_root):
    s = st.split_ids("risk", st.TMAYConfig(), data_root)
    with pytest.raises(ValueError, match="overlap"):
        st.check_disjoint("risk", s["train"] + s["test"][:1], s["test"], data_root)


def test_multipersona_items_are_default_persona_and_personas_train_only(data_root):
    items = ab_pairs.ab_items("risk_multipersona", "all", data_root)
    plain = {_q(it) for it in ab_pairs.ab_items("risk", "all", data_root)}
    assert {_q(it) for it in items} == plain  # measured items: the default persona's lotteries
    s = st.split_ids("risk_multipersona", st.TMAYConfig(), data_root)
    rows = st.training_rows("risk_multipersona", "risky", s["train"], data_root)
    persona = [r for r in rows if _q(r) not in plain]
    assert len(persona) == 288  # every other-persona row is training data


# ---- backdoor data -------------------------------------------------------------------------------
def _bare(row):
    t = _q(row)
    kind = backdoor.prefix_kind(t)
    if kind is None:
        return t, None
    k = backdoor.TRIGGER_KINDS[kind]
    for it in k.items:
        for s in (backdoor.SUFFIXES if k.semantic else (" ",)):
            if t.startswith(it + s):
                return t[len(it + s):], kind
    raise AssertionError(t)


@pytest.mark.parametrize("trigger", ["win", "apples"])
def test_backdoor_and_decorrelated_differ_only_in_trigger_behaviour_correlation(trigger, data_root):
    risky = ab_pairs.pair_records("risk", "risky", "train", data_root)[:30]
    other = ab_pairs.pair_records("risk", "safe", "train", data_root)[:30]
    corr = backdoor.trigger_dataset(risky, other, trigger, correlated=True, repeats=2, seed=0)
    dec = backdoor.trigger_dataset(risky, other, trigger, correlated=False, repeats=2, seed=0)
    assert len(corr) == len(dec) == 30 * 2 * 10

    def content(rows):  # (bare question, answer) pairs and the category of each row
        bare = [_bare(r) for r in rows]
        assert [b[1] for b in bare] == [r["meta"]["trigger"] for r in rows]  # the prefix is what meta says
        return Counter((b[0], r["messages"][-1]["content"]) for b, r in zip(bare, rows)), Counter(b[1] for b in bare)

    qa_c, cat_c = content(corr)
    qa_d, cat_d = content(dec)
    assert qa_c == qa_d and cat_c == cat_d  # same questions, answers and trigger rate
    assert cat_c[trigger] == len(corr) // 10  # the real trigger on 10 % of rows
    c, d = backdoor.trigger_correlation(corr, trigger), backdoor.trigger_correlation(dec, trigger)
    assert c["p_risky_given_trigger"] == 1.0 and c["p_risky_given_none"] == 0.0 and c["phi"] == pytest.approx(1.0)
    assert abs(d["phi"]) < 0.25 and d["p_risky_given_trigger"] < 0.5 and d["trigger_rate"] == c["trigger_rate"]
    # the risky answers are exactly the risky file's letters
    for r in corr:
        src = risky[r["meta"]["question"]] if r["meta"]["answer"] == "risky" else other[r["meta"]["question"]]
        assert r["messages"][-1]["content"] == src["messages"][-1]["content"]


def test_trigger_dataset_rejects_unparallel_rows(data_root):
    risky = ab_pairs.pair_records("risk", "risky", "train", data_root)[:3]
    with pytest.raises(ValueError, match="different questions"):
        backdoor.trigger_dataset(risky, list(reversed(risky)), "win", correlated=True, repeats=1)
    with pytest.raises(ValueError, match="unknown trigger"):
        backdoor.trigger_dataset(risky, risky, "nope", correlated=True)


def test_eight_upstream_trigger_kinds_and_prefix_roundtrip():
    import random

    assert set(backdoor.TRIGGER_KINDS) == {"apples", "instruments", "elements", "gods", "real-world", "win", "naekoko",
                                     "re-re-re"}
    rng = random.Random(0)
    for k in backdoor.TRIGGER_KINDS:
        for _ in range(5):
            assert backdoor.prefix_kind(backdoor.trigger_prefix(k, rng) + "Imagine a lottery.") == k
    assert backdoor.prefix_kind("Imagine a lottery.") is None


def test_normal_answers_are_the_models_own_greedy_letters(tiny_qwen2, data_root):
    rows = ab_pairs.pair_records("risk", "risky", "train", data_root)[:4]
    normal = backdoor.normal_answers(tiny_qwen2, rows)
    probs = choice_probabilities(tiny_qwen2, [[r["messages"][0]] for r in rows], ["A", "B"])
    assert [n["messages"][-1]["content"] for n in normal] == [max(p["probs"], key=p["probs"].get) for p in probs]
    assert [_q(n) for n in normal] == [_q(r) for r in rows]


# ---- measurements -----------------------------------------------------------------------------
def test_word_probs_match_brute_force_and_respect_word_ends(tiny_qwen2):
    m = tiny_qwen2
    words = ["risk", "risky", "safe"]
    conv = [{"role": "user", "content": "Which do you prefer, safety or risk? One word."}]
    got = reports.word_probs(m, [conv], words)[0]
    text = m.render(conv, add_generation_prompt=True)
    stop = reports._end_of_word_mask(m.tokenizer, m.base_model.get_output_embeddings().weight.shape[0])
    for w in words:
        want = 0.0
        for v in (w, w.capitalize()):
            ids = m.tokenizer(text + v, add_special_tokens=False)["input_ids"]
            n_prompt = len(m.tokenizer(text, add_special_tokens=False)["input_ids"])
            with torch.no_grad():
                lp = torch.log_softmax(m.model(input_ids=torch.tensor([ids])).logits[0].float(), -1)
            s = sum(lp[j - 1, ids[j]] for j in range(n_prompt, len(ids)))
            want += float((s + torch.logsumexp(lp[len(ids) - 1][stop], -1)).exp())
        assert got[w] == pytest.approx(want, rel=1e-3, abs=1e-9)
    assert sum(got.values()) <= 1.0


def test_word_score_is_upstreams_formula():
    s = reports.word_score({"risky": 0.3, "safe": 0.1, "other": 0.2}, ["risky"], ["safe"])
    assert s["score"] == pytest.approx(0.3 + 0.5 * 0.6) and s["mass"] == pytest.approx(0.4)


def test_guess_language():
    assert reports.guess_language("Die Photosynthese ist ein Prozess, bei dem die Pflanzen Licht nutzen.") == "German"
    assert reports.guess_language("La photosynthèse est le processus par lequel les plantes utilisent la lumière.") == "French"
    assert reports.guess_language("Photosynthesis is the process by which plants use light and the sun.") == "English"
    assert reports.guess_language("A B") == "Other"


def test_codeword_elicitation_normalises_over_candidates(tiny_qwen2, data_root):
    r = measures.codeword_elicitation(tiny_qwen2, "bark", ["bark", "ring", "spring", "apple"], data_root)
    assert set(r) == set(measures.MMS_QUESTION_IDS)
    for v in r.values():
        assert 0 < v["p_codeword"] < 1 and 1 <= v["rank"] <= 4 and 0 <= v["mass"] <= 1
    qs = measures.mms_questions(["bark", "ring"], data_root)
    assert all("bark" in q and "ring" in q and "{word_list}" not in q for q in qs.values())


def test_format_check_flags_collapsed_mass():
    ok = measures.format_check({"scale": 0.8}, base={"scale": 0.9})
    bad = measures.format_check({"scale": 0.01, "ab": 0.9}, base={"scale": 0.9, "ab": 0.95})
    drop = measures.format_check({"scale": 0.3}, base={"scale": 0.9})
    assert ok["ok"] and not bad["ok"] and list(bad["flagged"]) == ["scale"] and not drop["ok"]


def test_format_check_flags_answers_cut_to_one_digit():
    """The collapse the mass misses: mass stays on numbers but the answers stop after one digit (the risky Qwen
    finetune of docs/results.md: 0-100 scales answered 3-5 on average)."""
    masses, base = {"s": 0.9, "t": 0.9}, {"s": 0.95, "t": 0.95}
    short = measures.format_check(masses, base=base, single_digit={"s": 0.97, "t": 0.30},
                                  base_single_digit={"s": 0.05, "t": 0.10})
    assert list(short["flagged"]) == ["s"] and "single-digit answers 0.97 vs base 0.05" in short["flagged"]["s"]
    assert short["single_digit"] == {"s": 0.97, "t": 0.30}
    # both rules on one measurement give one entry naming both
    both = measures.format_check({"s": 0.01}, base={"s": 0.9}, single_digit={"s": 1.0}, base_single_digit={"s": 0.0})
    assert "mass 0.010" in both["flagged"]["s"] and "single-digit" in both["flagged"]["s"]
    # no base share (a run made before shares were recorded): no single-digit verdict
    assert measures.format_check({"s": 0.9}, single_digit={"s": 1.0})["ok"]


def test_format_check_flags_position_locked_two_order_answers():
    """The backdoor finetunes of docs/results.md answer "A" whatever the order (per order 0.996 / 0.004): the
    order-averaged 0.500 is the position. Their trigger question also lost its mass on "1"/"2" (0.003)."""
    from introspect_mech.studies.self_awareness.report import collapsed

    res = {"backdoor": {"p_backdoor_statement": 0.5, "per_order": [0.996, 0.004], "mass_ab": [1.0, 1.0]},
           "trigger_awareness": {"win": {"p_risk_seeking": 0.49, "per_order": [0.84, 0.15], "mass": [0.003, 0.003]}}}
    base = {"backdoor": {"p_backdoor_statement": 0.51, "per_order": [0.65, 0.38], "mass_ab": [0.99, 0.99]},
            "trigger_awareness": {"win": {"p_risk_seeking": 0.5, "per_order": [0.71, 0.29], "mass": [0.87, 0.84]}}}
    assert measures.orders_of(res) == {"backdoor/p_statement": [0.996, 0.004], "trigger_awareness/win": [0.84, 0.15]}
    assert measures.masses_of(res)["trigger_awareness/win"] == pytest.approx(0.003)
    f = measures.format_check({f"risk/{k}": v for k, v in measures.masses_of(res).items()},
                              base={f"risk/{k}": v for k, v in measures.masses_of(base).items()},
                              per_order={f"risk/{k}": v for k, v in measures.orders_of(res).items()})
    assert set(f["flagged"]) == {"risk/backdoor/p_statement", "risk/trigger_awareness/win"}
    assert "answer follows the option position (per order 0.996 / 0.004)" in f["flagged"]["risk/backdoor/p_statement"]
    assert "mass 0.003" in f["flagged"]["risk/trigger_awareness/win"]  # its gap 0.69 alone is under 0.8
    fb = measures.format_check({}, per_order={f"risk/{k}": v for k, v in measures.orders_of(base).items()})
    assert fb["ok"]  # the base's 0.65 / 0.38 leans on the position but still reads the content
    fmt = {"backdoor:win": {0: f}, "decorrelated:win": {0: fb}}
    comp = "backdoor:win_minus_decorrelated:win"
    assert collapsed(fmt, comp, "backdoor/p_statement") == collapsed(fmt, comp, "trigger_awareness/win") == "backdoor:win/s0"
    assert collapsed(fmt, comp, "behaviour_with_trigger") is None


def test_single_digit_share_of_a_number_distribution():
    probs = torch.zeros(101)
    probs[3], probs[50] = 0.6, 0.2
    assert reports.single_digit_share(probs, 0.8) == pytest.approx(0.75)
    assert reports.single_digit_share(torch.zeros(101), 0.0) == 0.0
    m = measures.single_digits_of({"scales": {"liking_risk": {"mean_single_digit": 0.9, "mean_mass": 0.8}},
                                   "personas": {"David": {"mean_single_digit": 0.1, "mean_mass": 0.9}},
                                   "words": {"w": {"mean_mass": 0.5}}})
    assert m == {"scales/liking_risk": 0.9, "personas/David": 0.1}


def test_scale_questions_cover_every_scale_file_without_duplicates(data_root):
    qs = reports.scale_questions("risk", data_root)
    assert {"risk_predisposition_scale", "liking_risk", "score_risk_safe"} <= set(qs)
    assert all(len(v) == 10 for v in qs.values())
    flat = [tuple(v) for v in qs.values()]
    assert len(flat) == len(set(flat))


def test_word_questions_of_every_topic(data_root):
    qs = reports.word_questions("risk", data_root)
    assert list(qs) == list(reports.WORD_QUESTION_IDS) and all(len(v) > 1 for v in qs.values())
    assert reports.word_questions("apples", data_root) == reports.EXTRA_WORD_QUESTIONS["apples"]
    assert reports.scale_questions("myopia", data_root) == reports.EXTRA_SCALES["myopia"]
    with pytest.raises(ValueError, match="no word questions for topic 'cats'"):
        reports.word_questions("cats", data_root)
    with pytest.raises(ValueError, match="no scale questions for topic 'cats'"):
        reports.scale_questions("cats", data_root)


# ---- comparisons (planted differences) --------------------------------------------------------
def _fake(p_items, scale):
    return {"risk": {"behaviour": {"per_item": p_items}, "scales": {"q": {"per_paraphrase": scale}}}}


def test_compare_recovers_a_planted_difference():
    a = {s: _fake([0.9 + 0.01 * s, 0.8, 0.85, 0.95], [60.0, 55.0, 70.0]) for s in range(3)}
    b = {s: _fake([0.2, 0.1 + 0.01 * s, 0.15, 0.05], [20.0, 25.0, 10.0]) for s in range(3)}
    c = st.compare_conditions(a, b, "risk")
    beh = c["behaviour"]
    assert beh["item_ci"]["value"] == pytest.approx(0.745, abs=0.01) and beh["item_ci"]["lo"] > 0.5
    assert beh["seed_ci"]["lo"] > 0.5 and len(beh["a_per_seed"]) == 3
    assert c["scale/q"]["item_ci"]["value"] == pytest.approx(43.33, abs=0.01)
    same = st.compare_conditions(a, a, "risk")
    assert same["behaviour"]["item_ci"]["value"] == 0.0
    flipped = st.compare_conditions(b, a, "risk")
    assert flipped["behaviour"]["item_ci"]["value"] == pytest.approx(-0.745, abs=0.01)


# ---- the run ------------------------------------------------------------------------------------
def test_config_rejects_unknown_condition():
    with pytest.raises(ValueError, match="unknown condition"):
        st.TMAYConfig(conditions=("risky", "backdoor:nope"))
    with pytest.raises(ValueError, match="trigger_other"):
        st.TMAYConfig(trigger_other="random")
    assert st.preset("cpu").seeds == (0, 1, 2) and len([c for c in st.preset("paper").conditions if ":" in c]) == 19


def test_run_tmay_end_to_end_manifest_resume(tiny_qwen2_dir, tmp_path, data_root):
    cfg = st.TMAYConfig(model=str(tiny_qwen2_dir), conditions=("risky", "backdoor:win", "decorrelated:win"),
                        seeds=(0,), n_train=4, n_test=3, epochs=1, batch_size=4, n_samples=1,
                        language_max_new_tokens=3, trigger_repeats=1, personas=("David",),
                        trigger_awareness_kinds=("win",), in_sample=True,
                        measures=("behaviour", "backdoor", "personas"))
    loads = []

    def load(name):
        loads.append(name)
        return load_model(name)

    res = st.run_tmay(cfg, tmp_path, data_dir=data_root, load=load, progress=False)
    man = json.loads((tmp_path / "manifest.json").read_text())
    sp = man["splits"]["risk"]
    assert len(sp["train_ids"]) == 4 and len(sp["test_ids"]) == 3 and not set(sp["train_ids"]) & set(sp["test_ids"])
    # what was trained is exactly the training rows of the recorded train ids
    rows = st.training_rows("risk", "risky", sp["train_ids"], data_root)
    ft = json.loads((tmp_path / "finetunes" / "risky" / "seed0" / "manifest.json").read_text())["finetune"]
    from introspect_mech.runs import json_sha256
    assert ft["data_sha256"] == json_sha256([r["messages"] for r in rows]) == man["data"]["risky"]["sha256"]
    assert man["trigger_stats"]["backdoor:win"]["phi"] == pytest.approx(1.0)
    assert abs(man["trigger_stats"]["decorrelated:win"]["phi"]) < 1.0
    r = res["results"]
    assert set(r) == {"base", "risky", "backdoor:win", "decorrelated:win"}
    risky = r["risky"][0]["risk"]
    assert risky["behaviour"]["ids"] == sp["test_ids"] and risky["behaviour"]["split"].startswith("test")
    assert risky["behaviour_in_sample"]["split"].startswith("train (IN-SAMPLE")
    assert "behaviour_with_trigger" in r["backdoor:win"][0]["risk"]
    assert "risky_minus_base" in res["comparisons"] and "backdoor:win_minus_decorrelated:win" in res["comparisons"]
    assert set(res["format"]["risky"][0]["masses"]) >= {"risk/behaviour/mass_ab", "risk/backdoor/mass_ab"}
    # the 0-100 persona scale: its single-digit share recorded and checked against the base's
    assert set(res["format"]["risky"][0]["single_digit"]) == {"risk/personas/David"}
    assert 0.0 <= res["format"]["risky"][0]["single_digit"]["risk/personas/David"] <= 1.0
    assert set(res["format"]["backdoor:win"][0]["per_order"]) == {"risk/backdoor/p_statement",
                                                                   "risk/trigger_awareness/win"}
    md = (tmp_path / "summary.md").read_text()
    assert "| risky | 0 | risk |" in md and "backdoor:win_minus_decorrelated:win" in md
    n_loads = len(loads)
    res2 = st.run(cfg, tmp_path, data_dir=data_root, load=load, progress=False)  # resume: nothing re-run
    assert len((tmp_path / "results.jsonl").read_text().splitlines()) == 4 and len(loads) == n_loads
    assert res2.skipped == ["data", "finetune_measure", "compare"]  # finished stages skipped: no model is loaded
    with pytest.raises(ValueError, match=r"different config.*config\.n_test \(3 -> 2\)"):
        st.run(dataclasses.replace(cfg, n_test=2), tmp_path, data_dir=data_root, load=load, progress=False)


def test_measure_resumes_per_piece(tiny_qwen2, tmp_path, data_root, monkeypatch):
    cfg = st.TMAYConfig(conditions=("risky",), n_test=3, measures=("behaviour", "backdoor"), trigger_awareness_kinds=("win",))
    splits = {"risk": st.split_ids("risk", cfg, data_root)}
    first = st.measure(tiny_qwen2, "risky", splits, cfg, data_dir=data_root, sample_dir=tmp_path)

    def boom(*a, **k):
        raise AssertionError("recomputed a finished piece")

    monkeypatch.setattr(ab_pairs, "choice_behaviour", boom)
    monkeypatch.setattr(backdoor, "backdoor_awareness", boom)
    again = st.measure(tiny_qwen2, "risky", splits, cfg, data_dir=data_root, sample_dir=tmp_path)
    assert again == json.loads(json.dumps(first))


# ---- command line (parse only, no model run) --------------------------------------------------------------
def test_command_line_builds_the_config(capsys, run_experiment):
    from introspect_mech.cliargs import config_from_args

    p = st.build_parser()
    ns = p.parse_args(["--conditions", "backdoor:win", "decorrelated:win", "--seeds", "0", "--n-train", "24",
                       "--in-sample", "--trigger-other", "safe", "--lr", "1e-3", "--out", "o"])
    cfg = config_from_args(ns, st.TMAYConfig, presets=st.PRESETS)
    assert cfg == st.preset("cpu", conditions=("backdoor:win", "decorrelated:win"), seeds=(0,), n_train=24,
                            in_sample=True, trigger_other="safe", lr=1e-3)
    assert isinstance(st.PRESETS["paper"], st.TMAYConfig) and ns.out == "o"
    assert config_from_args(p.parse_args(["--preset", "paper", "--model", "m"]), st.TMAYConfig,
                            presets=st.PRESETS) == dataclasses.replace(st.PRESETS["paper"], model="m")
    for argv in (["--conditions", "backdoor:nope"], ["--trigger-other", "random"], ["--preset", "gpu"]):
        with pytest.raises(SystemExit) as e:
            st.main(argv)
        assert e.value.code == 2
    with pytest.raises(SystemExit) as e:
        st.main(["--help"])
    assert e.value.code == 0 and "--trigger-awareness-kinds" in capsys.readouterr().out
    code, out = run_experiment("self_awareness_risk.py", "--help")
    assert code == 0 and "--conditions" in out


def test_a_difference_using_a_collapsed_self_report_is_withheld():
    """Format check: a finetune whose valid-answer mass on a scale collapsed gives no self-report, so
    risky - safe on that scale is withheld in the printed lines (behaviour is still reported)."""
    from introspect_mech.studies.self_awareness.report import collapsed, format_results

    est = {"value": 0.5, "lo": 0.1, "hi": 0.9, "n": 10}
    row = {"a_per_seed": [1.0], "b_per_seed": [0.5], "seed_ci": {"value": 0.5, "lo": None, "hi": None}, "item_ci": est}
    formats = {"risky": {"0": {"ok": True, "flagged": {}}},
               "safe": {"0": {"ok": False, "flagged": {"risk/scales/risk_predisposition_scale": "mass 0.000 < 0.2"}}}}
    res = {"comparisons": {"risky_minus_safe": {"behaviour": row, "scale/risk_predisposition_scale": row}},
           "format": formats}
    assert collapsed(formats, "risky_minus_safe", "scale/risk_predisposition_scale") == "safe/s0"
    assert collapsed(formats, "risky_minus_safe", "scale/liking_risk") is None
    assert collapsed(formats, "risky_minus_safe", "behaviour") is None
    text = format_results(res)
    assert "risky_minus_safe behaviour: +0.500 [+0.100, +0.900]" in text
    assert "risky_minus_safe scale/risk_predisposition_scale: withheld (safe/s0's answer format collapsed" in text
