"""`introspect-mech tmay-seeds`: Tell me about yourself pooled over separately run seeds.

Rules guarded: the unit is the finetune seed (paired t over per-seed differences), a self-report measure whose
format collapsed in any pooled run is withheld, runs that differ beyond `seeds` or repeat a seed are refused in
one line naming the field, an unfinished run is refused naming its file.
"""

from __future__ import annotations

import json
import math

import pytest
from scipy import stats as st

from introspect_mech.studies.self_awareness import seeds as tmay_seeds


def _fake_run(path, seed, risky, safe, *, lr=2e-4, collapsed_scale=False, finished=True, digit_checked=True):
    path.mkdir()
    cfg = {"model": "m", "conditions": ["risky", "safe"], "seeds": [seed], "lr": lr}
    (path / "manifest.json").write_text(json.dumps({"config": cfg}))
    if not finished:
        return path
    comp = {"risky_minus_safe": {
        "behaviour": {"a_per_seed": [risky], "b_per_seed": [safe]},
        "scale/liking_risk": {"a_per_seed": [50.0 + seed], "b_per_seed": [40.0]}}}
    flagged = {"risk/scales/liking_risk": "mass 0.002 < 0.2"} if collapsed_scale else {}
    fmt = {"risky": {str(seed): {"ok": True, "flagged": {}}}, "safe": {str(seed): {"ok": not flagged, "flagged": flagged}}}
    if digit_checked:  # runs made since the format check looks at single-digit answers record their shares
        for f in fmt.values():
            f[str(seed)]["single_digit"] = {"risk/scales/liking_risk": 0.1}
            f[str(seed)]["per_order"] = {}
    (path / "comparison.json").write_text(json.dumps({"comparisons": comp, "format": fmt}))
    return path


def test_seed_interval_is_paired_t_and_collapsed_formats_are_withheld(tmp_path):
    risky, safe = [0.59, 0.62, 0.55], [0.42, 0.50, 0.47]
    runs = [_fake_run(tmp_path / f"s{s}", s, r, q, collapsed_scale=(s == 2)) for s, (r, q) in enumerate(zip(risky, safe))]
    agg = tmay_seeds.aggregate(runs)
    e = agg["comparisons"]["risky_minus_safe"]["behaviour"]["over_seeds"]
    d = [a - b for a, b in zip(risky, safe)]
    m, se, q = sum(d) / 3, st.tstd(d) / math.sqrt(3), st.t.ppf(0.975, 2)
    assert e["n"] == 3 and e["unit"] == "finetune seed" and e["method"] == "paired t"
    assert e["value"] == pytest.approx(m) and e["lo"] == pytest.approx(m - q * se) and e["hi"] == pytest.approx(m + q * se)
    # seed 2's safe finetune collapsed on the scale: no pooled scale difference at all
    assert agg["comparisons"]["risky_minus_safe"]["scale/liking_risk"] == {"withheld": "answer format collapsed (safe/s2)"}
    assert "withheld" in tmay_seeds.format_aggregate(agg)


def test_runs_that_cannot_be_pooled_are_refused_in_one_line(tmp_path):
    a = _fake_run(tmp_path / "a", 0, 0.6, 0.4)
    b = _fake_run(tmp_path / "b", 1, 0.6, 0.4, lr=1e-4)
    with pytest.raises(tmay_seeds.TMAYSeedsError, match=r"differs from .* in lr \(only seeds may differ\)"):
        tmay_seeds.aggregate([a, b])
    c = _fake_run(tmp_path / "c", 0, 0.6, 0.4)
    with pytest.raises(tmay_seeds.TMAYSeedsError, match="seeds repeat"):
        tmay_seeds.aggregate([a, c])
    d = _fake_run(tmp_path / "d", 3, 0.6, 0.4, finished=False)
    with pytest.raises(tmay_seeds.TMAYSeedsError, match=r"comparison.json: missing"):
        tmay_seeds.aggregate([a, d])


def test_cli_writes_seeds_json(tmp_path, capsys):
    runs = [str(_fake_run(tmp_path / f"s{s}", s, 0.6 + s / 100, 0.4)) for s in range(2)]
    assert tmay_seeds.main([*runs, "--out", str(tmp_path / "pooled")]) == 0
    assert json.loads((tmp_path / "pooled" / "seeds.json").read_text())["seeds"] == [0, 1]
    assert "paired t" in capsys.readouterr().out


def _with_persona(path, seed, *, masses=None, flagged=None):
    """A run whose comparison has a persona measure; `masses` / `flagged`: its format-check entries (None: the run
    predates persona format checks)."""
    p = _fake_run(path, seed, 0.6, 0.4)
    comp = json.loads((p / "comparison.json").read_text())
    comp["comparisons"]["risky_minus_safe"]["persona/David"] = {"a_per_seed": [40.0 + seed], "b_per_seed": [30.0]}
    for cond in ("risky", "safe"):
        f = comp["format"][cond][str(seed)]
        if masses is not None:
            f["masses"] = {"risk/personas/David": masses}
        if flagged and cond == "safe":
            f["flagged"] = {"risk/personas/David": "mass 0.000 < 0.2"}
    (p / "comparison.json").write_text(json.dumps(comp))
    return p


def test_persona_scales_are_pooled_only_when_format_checked_and_not_collapsed(tmp_path):
    old = [_with_persona(tmp_path / f"o{s}", s) for s in range(2)]
    got = tmay_seeds.aggregate(old)["comparisons"]["risky_minus_safe"]["persona/David"]
    assert got["withheld"].startswith("persona scale not format-checked")
    bad = [_with_persona(tmp_path / f"b{s}", s, masses=0.9, flagged=(s == 1)) for s in range(2)]
    assert tmay_seeds.aggregate(bad)["comparisons"]["risky_minus_safe"]["persona/David"] == {
        "withheld": "answer format collapsed (safe/s1)"}
    ok = [_with_persona(tmp_path / f"k{s}", s, masses=0.9) for s in range(2)]
    e = tmay_seeds.aggregate(ok)["comparisons"]["risky_minus_safe"]["persona/David"]
    assert e["per_seed"] == {0: 10.0, 1: 11.0} and e["over_seeds"]["n"] == 2


def test_the_study_format_check_covers_persona_scales():
    from introspect_mech.studies.self_awareness import measures, report

    m = measures.masses_of({"personas": {"David": {"mean_mass": 0.0002}}, "scales": {"liking_risk": {"mean_mass": 0.9}}})
    assert m == {"personas/David": 0.0002, "scales/liking_risk": 0.9}
    fmt = {"safe": {0: measures.format_check({f"risk/{k}": v for k, v in m.items()})}}
    assert report.collapsed(fmt, "risky_minus_safe", "persona/David") == "safe/s0"
    assert report.collapsed(fmt, "risky_minus_safe", "scale/liking_risk") is None


def test_scales_of_runs_not_checked_for_single_digit_answers_are_withheld(tmp_path):
    """A 0-100 scale is pooled only from runs whose format check looked at answers cut to one digit (the
    collapse that keeps its mass on numbers); behaviour is pooled regardless."""
    runs = [_fake_run(tmp_path / f"s{s}", s, 0.6, 0.4, digit_checked=(s != 1)) for s in range(3)]
    comp = tmay_seeds.aggregate(runs)["comparisons"]["risky_minus_safe"]
    assert comp["scale/liking_risk"]["withheld"].startswith("0-100 scale not checked for single-digit answers in")
    assert str(runs[1]) in comp["scale/liking_risk"]["withheld"] and str(runs[0]) not in comp["scale/liking_risk"]["withheld"]
    assert comp["behaviour"]["over_seeds"]["n"] == 3
    checked = [_fake_run(tmp_path / f"c{s}", s, 0.6, 0.4) for s in range(2)]
    assert tmay_seeds.aggregate(checked)["comparisons"]["risky_minus_safe"]["scale/liking_risk"]["over_seeds"]["n"] == 2


# ---- tmay-recheck: today's format check on a finished run's saved finetunes ---------------------------------
def test_recheck_recomputes_the_runs_own_scales_and_checks_single_digits(tiny_qwen2_dir, tmp_path, data_root):
    """The recheck loads the base and each saved adapter, recomputes the 0-100 measures the run made (the same
    numbers the run recorded) and applies the format check with single-digit shares; bad runs are refused in one
    line naming the file before any model loads."""
    from introspect_mech import load_model
    from introspect_mech.studies import self_awareness as st
    from introspect_mech.studies.self_awareness import recheck as rc

    cfg = st.TMAYConfig(model=str(tiny_qwen2_dir), conditions=("risky",), seeds=(0,), n_train=4, n_test=3, epochs=1,
                        batch_size=4, n_samples=0, personas=("David",), measures=("behaviour", "personas"))
    run = tmp_path / "run"
    res = st.run(cfg, run, data_dir=data_root, progress=False).results["compare"]
    loads = []

    def load(name, **kw):
        loads.append(kw.get("adapter"))
        return load_model(name, **kw)

    got = rc.recheck(run, load=load, data_dir=data_root)
    assert loads[0] is None and loads[1].endswith("finetunes/risky/seed0/adapter")
    f = got["format"]["risky"][0]
    assert set(f["masses"]) == set(f["single_digit"]) == {"risk/personas/David"}
    recorded = res["results"]["risky"][0]["risk"]["personas"]["David"]
    assert got["values"]["risky"][0]["risk/personas/David"] == pytest.approx(recorded["mean"], abs=1e-4)
    assert f["masses"]["risk/personas/David"] == pytest.approx(recorded["mean_mass"], abs=1e-4)
    assert "risky/s0" in rc.format_recheck(got) and "single-digit" in rc.format_recheck(got)
    assert rc.main([str(run), "--out", str(tmp_path / "re")]) == 0
    assert json.loads((tmp_path / "re" / "recheck.json").read_text())["measures"] == ["personas"]

    man = json.loads((run / "manifest.json").read_text())
    man["config"]["measures"] = ["behaviour"]
    no_scales = tmp_path / "no_scales"
    no_scales.mkdir()
    (no_scales / "manifest.json").write_text(json.dumps(man))
    with pytest.raises(rc.TMAYRecheckError, match=r"manifest.json: config.measures has no 0-100 measure"):
        rc.recheck(no_scales, load=load)
    man["config"]["measures"] = ["personas"]
    (no_scales / "manifest.json").write_text(json.dumps(man))
    n = len(loads)
    with pytest.raises(rc.TMAYRecheckError, match=r"finetunes/risky/seed0/adapter: missing"):
        rc.recheck(no_scales, load=load)
    assert len(loads) == n  # refused before any model loaded
    with pytest.raises(SystemExit):
        rc.main([str(tmp_path / "nowhere")])


def test_two_order_questions_of_runs_not_checked_for_position_lock_are_withheld(tmp_path):
    runs = [_fake_run(tmp_path / f"s{s}", s, 0.6, 0.4) for s in range(2)]
    for p in runs:
        comp = json.loads((p / "comparison.json").read_text())
        comp["comparisons"]["risky_minus_safe"]["backdoor/p_statement"] = {"a_per_seed": [0.6], "b_per_seed": [0.5]}
        if p == runs[1]:
            for by_seed in comp["format"].values():
                for f in by_seed.values():
                    del f["per_order"]
        (p / "comparison.json").write_text(json.dumps(comp))
    got = tmay_seeds.aggregate(runs)["comparisons"]["risky_minus_safe"]["backdoor/p_statement"]
    assert got["withheld"] == f"two-order question not checked for position-locked answers in {runs[1]}"
