"""`introspect-mech em-seeds`: the seed-level interval over finished EM runs of one configuration.

Rules guarded: the unit is the finetune seed (t over per-seed rates, not over pooled answers); the
contrast with the control is paired by seed; runs that differ in anything but the seed are refused in one
line naming the field; an unfinished run is refused naming its file; judged, proxy and capability
numbers are printed in separate blocks and judged lines carry the judge's validation label.
"""

from __future__ import annotations

import json
import math

import pytest
from scipy import stats as st

from introspect_mech.studies.emergent_misalignment import seeds as em_seeds
from tests.studies.test_em import MarkerJudge


def _fake_run(path, seed, rates, *, lr=2e-4, finished=True):
    """A run directory as the EM study writes it (manifest config + the stage rows), with given EM rates."""
    path.mkdir()
    cfg = {"model": "m", "datasets": ["bad_medical_advice", "good_medical_advice"], "seed": seed, "lr": lr,
           "include_base": seed == 0}
    (path / "manifest.json").write_text(json.dumps({"config": cfg}))
    models = {}
    for name, v in rates.items():
        est = {"value": v, "lo": max(0.0, v - 0.1), "hi": min(1.0, v + 0.1), "n": 8, "unit": "question",
               "method": "question-clustered wilson", "measure": "judged"}
        models[name] = {"main": {"em_rate": {"coherent": {"overall": est}, "all": {"overall": est}},
                                 "coherent_rate": {**est, "value": 0.9}, "n_answers": 32, "n_judge_abstained": 0}}
    res = {"judge": {"kind": "HFJudge", "model": "j"},
           "judge_validation": {"label": "unvalidated judge", "line": "j: AUROC 0.70", "passes": False},
           "models": models,
           "proxy": {"metrics": {}, **{n: {"proxy_pref": {"value": v / 2, "lo": 0, "hi": 1, "n": 40, "unit": "item",
                                                          "method": "percentile-bootstrap", "measure": "proxy"}}
                                       for n, v in rates.items()}}}
    rows = [{"stage": "emergent_misalignment", "variant": {}, "result": res}] if finished else []
    (path / "stages.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_seed_interval_is_t_over_finetunes_and_the_contrast_is_paired(tmp_path):
    bad, good = [0.20, 0.10, 0.30], [0.05, 0.00, 0.10]
    runs = [_fake_run(tmp_path / f"s{s}", s, {"bad_medical_advice": b, "good_medical_advice": g})
            for s, (b, g) in enumerate(zip(bad, good))]
    agg = em_seeds.aggregate(runs)
    e = agg["per_dataset"]["bad_medical_advice"]["em_rate/coherent"]["over_seeds"]
    m, se = sum(bad) / 3, st.tstd(bad) / math.sqrt(3)
    q = st.t.ppf(0.975, 2)
    assert e["n"] == 3 and e["unit"] == "finetune seed" and e["method"] == "t" and e["measure"] == "judged"
    assert e["value"] == pytest.approx(m) and e["lo"] == pytest.approx(m - q * se) and e["hi"] == pytest.approx(m + q * se)
    # each run's own (question-level) interval is kept beside the seed-level one
    assert agg["per_dataset"]["bad_medical_advice"]["em_rate/coherent"]["per_run_interval"][1]["unit"] == "question"
    d = agg["contrasts"]["bad_medical_advice - good_medical_advice"]["em_rate/coherent"]
    diffs = [b - g for b, g in zip(bad, good)]
    dm, dse = sum(diffs) / 3, st.tstd(diffs) / math.sqrt(3)
    assert d["method"] == "paired t" and d["unit"] == "seed pair"
    assert d["value"] == pytest.approx(dm) and d["hi"] == pytest.approx(dm + q * dse)
    assert d["p"] == pytest.approx(st.ttest_rel(bad, good).pvalue)
    # the proxy is its own measure, never merged with the judged rate
    assert agg["per_dataset"]["bad_medical_advice"]["proxy/proxy_pref"]["over_seeds"]["measure"] == "proxy"
    text = em_seeds.format_aggregate(agg)
    judged, proxy = text.split("[proxy, not an EM rate]:")
    assert "em_rate/coherent" in judged and "proxy/" not in judged and "em_rate" not in proxy
    assert "[unvalidated judge] judged:" in judged and "judge validation: j: AUROC 0.70" in judged


def test_runs_that_differ_beyond_the_seed_are_refused_naming_the_field(tmp_path):
    a = _fake_run(tmp_path / "a", 0, {"bad_medical_advice": 0.1})
    b = _fake_run(tmp_path / "b", 1, {"bad_medical_advice": 0.2}, lr=1e-4)
    with pytest.raises(em_seeds.SeedRunsError, match=r"differs from .* in lr \(only seed, include_base may differ\)"):
        em_seeds.aggregate([a, b])
    c = _fake_run(tmp_path / "c", 0, {"bad_medical_advice": 0.2})
    with pytest.raises(em_seeds.SeedRunsError, match=r"seeds repeat"):
        em_seeds.aggregate([a, c])
    d = _fake_run(tmp_path / "d", 2, {"bad_medical_advice": 0.2}, finished=False)
    with pytest.raises(em_seeds.SeedRunsError, match=r"stages.jsonl: stage 'emergent_misalignment' has not finished"):
        em_seeds.aggregate([a, d])
    with pytest.raises(em_seeds.SeedRunsError, match="at least 2 runs"):
        em_seeds.aggregate([a])


def test_command_line_refuses_in_one_line_and_writes_seeds_json(tmp_path, capsys):
    from introspect_mech.cli import main

    a = _fake_run(tmp_path / "a", 0, {"bad_medical_advice": 0.1, "good_medical_advice": 0.0})
    b = _fake_run(tmp_path / "b", 1, {"bad_medical_advice": 0.3, "good_medical_advice": 0.1})
    assert main(["em-seeds", str(a), str(b), "--out", str(tmp_path / "pooled")]) == 0
    out = capsys.readouterr().out
    assert "mean over seeds +0.200" in out and (tmp_path / "pooled" / "seeds.json").is_file()
    c = _fake_run(tmp_path / "c", 2, {"bad_medical_advice": 0.1}, lr=1.0)
    with pytest.raises(SystemExit) as e:
        main(["em-seeds", str(a), str(c)])
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and "in lr" in err[-1]


def test_real_em_runs_pool_over_seeds(tmp_path, tiny_qwen2_dir, data_root):
    """Two real (tiny) EM runs with seeds 0 and 1: the pooled numbers are the runs' own rates."""
    from introspect_mech.studies import emergent_misalignment as em

    outs = []
    for seed in (0, 1):
        cfg = em.EMConfig(model=str(tiny_qwen2_dir), device="cpu", data_dir=str(data_root),
                          datasets=("bad_medical_advice", "good_medical_advice"), n_train=2, lr=1e-3, batch_size=2,
                          max_seq_len=256, question_sets=("main",), question_limit=2, n_samples=1, max_new_tokens=3,
                          batch=8, include_base=False, allow_unvalidated_judge=True, proxy_per_theme=1,
                          proxy_medical=2, capability_items=2, typology="none", seed=seed)
        em.run(cfg, tmp_path / f"s{seed}", judge=MarkerJudge("Z"), progress=False)
        outs.append(tmp_path / f"s{seed}")
    agg = em_seeds.aggregate(outs)
    for seed, out in zip((0, 1), outs):
        res = json.loads((out / "results.json").read_text())
        own = res["models"]["bad_medical_advice"]["main"]["em_rate"]["all"]["overall"]["value"]
        assert agg["per_dataset"]["bad_medical_advice"]["em_rate/all"]["per_seed"][seed] == own
    assert agg["per_dataset"]["bad_medical_advice"]["em_rate/all"]["over_seeds"]["n"] == 2
    assert any(k.startswith("capability/") for k in agg["per_dataset"]["base"])
    assert "bad_medical_advice - good_medical_advice" in agg["contrasts"]
