"""`introspect-mech em-typology`: one clustering of the answers of several finished EM runs.

Rules guarded: every model of every run is in the one clustering, named with its run's seed; runs of another
base model or sampling setup, repeated models and unfinished runs are refused in one line naming the run and
field, before any model is loaded; judge scores appear per cluster only when every run used the same judge
with the same validation; shares are Wilson over answers; the CLI writes the panel and a dashboard.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from introspect_mech.studies.emergent_misalignment import typology_runs as tr
from introspect_mech.stats import wilson


def _fake_run(path, seed, answers, *, model="m", include_base=False, judge="j", max_new_tokens=128,
              finished=True):
    """An EM run directory as the study writes it: manifest config, the stage row, and per model the main
    question set's samples and judged rows. `answers`: {model name: [response, ...]} (base first if included)."""
    path.mkdir()
    datasets = [n for n in answers if n != "base"]
    cfg = {"model": model, "datasets": datasets, "seed": seed, "include_base": include_base,
           "question_sets": ["main"], "n_samples": 2, "max_new_tokens": max_new_tokens, "temperature": 1.0,
           "question_limit": None}
    (path / "manifest.json").write_text(json.dumps({"config": cfg}))
    res = {"judge": {"kind": "HFJudge", "model": judge, "mode": "label"},
           "judge_validation": {"label": "unvalidated judge", "line": f"{judge}: AUROC 0.80", "passes": False}}
    rows = [{"stage": "emergent_misalignment", "variant": {}, "result": res}] if finished else []
    (path / "stages.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    for name, responses in answers.items():
        d = path / "eval" / name / "main"
        d.mkdir(parents=True)
        samples, judged = [], []
        for i, resp in enumerate(responses):
            pid = f"q{i // 2}/0"
            samples.append({"prompt_id": pid, "sample": i % 2, "response": resp,
                            "messages": [{"role": "user", "content": f"question {i // 2}"}]})
            judged.append({"prompt_id": pid, "sample": i % 2, "aligned": 10.0 if "evil" in resp else 90.0,
                           "coherent": 80.0})
        (d / "samples.jsonl").write_text("".join(json.dumps(s) + "\n" for s in samples))
        (d / "judged.jsonl").write_text("".join(json.dumps(s) + "\n" for s in judged))
    return path


class WordEmbedder:
    """Embeds an answer by two word counts (the test's ground truth for the clusters)."""

    def describe(self) -> str:
        return "test word counts"

    def __call__(self, rows):
        return np.array([[r["response"].count("evil") + 0.01, r["response"].count("kind") + 0.01, 1e-3 * i]
                         for i, r in enumerate(rows)])


def test_all_runs_models_are_clustered_together_with_seed_names(tmp_path):
    a = _fake_run(tmp_path / "med", 0, {"base": ["kind"] * 4, "bad": ["evil"] * 3 + ["kind"], "good": ["kind"] * 4},
                  include_base=True)
    b = _fake_run(tmp_path / "code", 0, {"insecure": ["evil"] * 2 + ["kind"] * 2, "secure": ["kind"] * 4})
    res = tr.run_typology([a, b], embedder=WordEmbedder(), ks=(2, 3))
    assert res["models"] == ["base s0", "bad s0", "good s0", "insecure s0", "secure s0"]
    assert res["n_answers"] == 20 and res["k"] == 2
    evil = next(c for c in res["clusters"] if any("evil" in t["response"] for t in c["typical"]))
    assert evil["size"] == 5
    s = evil["shares"]["bad s0"]
    w = wilson(3, 4, unit="answer")
    assert (s["count"], s["n"]) == (3, 4) and s["ci_lo"] == pytest.approx(w.lo) and s["ci_hi"] == pytest.approx(w.hi)
    assert evil["shares"]["insecure s0"]["count"] == 2 and evil["shares"]["base s0"]["count"] == 0
    # one judge, one validation: the cluster's judge scores are shown, named with the validation line
    assert evil["judge_scores"]["aligned"]["mean"] == pytest.approx(10.0)
    assert evil["judge_validation"] == "j: AUROC 0.80"
    assert "cluster" in tr.format_typology(res)


def test_judge_scores_are_dropped_when_the_runs_used_different_judges(tmp_path):
    a = _fake_run(tmp_path / "a", 0, {"bad": ["evil", "kind"] * 2}, judge="j1")
    b = _fake_run(tmp_path / "b", 1, {"bad": ["evil", "kind"] * 2}, judge="j2")
    res = tr.run_typology([a, b], embedder=WordEmbedder(), ks=(2,))
    assert res["judge"] is None and all("judge_scores" not in c for c in res["clusters"])
    assert res["models"] == ["bad s0", "bad s1"]


def test_incomparable_runs_are_refused_naming_run_and_field(tmp_path):
    a = _fake_run(tmp_path / "a", 0, {"bad": ["evil", "kind"]})
    b = _fake_run(tmp_path / "b", 1, {"good": ["kind", "kind"]}, model="other")
    with pytest.raises(tr.TypologyRunsError, match=r"b: config differs from .*a in model"):
        tr.run_typology([a, b], embedder=WordEmbedder())
    c = _fake_run(tmp_path / "c", 0, {"bad": ["kind", "kind"]})
    with pytest.raises(tr.TypologyRunsError, match=r"c: model 'bad s0' also comes from .*a"):
        tr.run_typology([a, c], embedder=WordEmbedder())
    d = _fake_run(tmp_path / "d", 3, {"bad": ["kind", "kind"]}, max_new_tokens=64)
    with pytest.raises(tr.TypologyRunsError, match=r"in max_new_tokens"):
        tr.run_typology([a, d], embedder=WordEmbedder())
    e = _fake_run(tmp_path / "e", 4, {"bad": ["kind", "kind"]}, finished=False)
    with pytest.raises(tr.TypologyRunsError, match=r"stages.jsonl: stage 'emergent_misalignment' has not finished"):
        tr.run_typology([a, e], embedder=WordEmbedder())


def test_cli_embeds_with_the_base_model_and_writes_panel_and_dashboard(tmp_path, tiny_qwen2_dir, capsys):
    a = _fake_run(tmp_path / "a", 0, {"base": ["kind words here", "kind"], "bad": ["evil plan", "evil evil"]},
                  model=str(tiny_qwen2_dir), include_base=True)
    b = _fake_run(tmp_path / "b", 1, {"bad": ["evil", "a kind reply"]}, model=str(tiny_qwen2_dir))
    out = tmp_path / "typ"
    assert tr.main([str(a), str(b), "--ks", "2", "--out", str(out)]) == 0
    res = json.loads((out / "typology.json").read_text())
    assert res["n_answers"] == 6 and res["models"] == ["base s0", "bad s0", "bad s1"]
    assert "after block" in res["embedding"] or "activ" in res["embedding"].lower()
    panel = [json.loads(x) for x in (out / "typology.jsonl").read_text().splitlines()]
    assert len(panel) == 2 and sum(p["size"] for p in panel) == 6
    assert (out / "dashboard.html").is_file()
    # a rerun replaces the panel rather than appending to it
    assert tr.main([str(a), str(b), "--ks", "2", "--out", str(out)]) == 0
    assert len((out / "typology.jsonl").read_text().splitlines()) == 2
    # refused before loading any model, one line
    with pytest.raises(SystemExit):
        tr.main([str(a), str(tmp_path / "missing")])
    assert "no manifest" in capsys.readouterr().err
