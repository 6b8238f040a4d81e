"""Probes and directions: planted directions are recovered, directions round-trip, recipes run."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from introspect_mech.activations import cache
from introspect_mech.evals.metrics import answer_logprobs
from introspect_mech.probes import (Direction, cosine_matrix, em_direction, layer_sweep, mean_diff, pca_direction,
                                    project, train_probe, transfer)
from introspect_mech.studies.common.medical_split import medical_advice_pairs
from introspect_mech.studies.common.persona import instruction_likelihood_scores, load_trait, persona_data
from introspect_mech.studies.self_prediction.probe import self_prediction_probe


def planted(n=400, layers=3, d=32, strength=3.0, seed=0):
    """Gaussian activations with a class shift `strength * u_l` along a random unit u_l per layer."""
    g = torch.Generator().manual_seed(seed)
    u = torch.randn(layers, d, generator=g)
    u = u / u.norm(dim=-1, keepdim=True)
    y = torch.arange(n) % 2
    x = torch.randn(n, layers, d, generator=g) + strength * y[:, None, None] * u
    return x, y.numpy(), u


def test_mean_diff_recovers_planted_direction():
    x, y, u = planted()
    d = mean_diff(x[y == 1], x[y == 0])
    assert d.layers == [0, 1, 2] and d.vectors.shape == (3, 32)
    assert torch.all((d.vectors * u).sum(-1) > 0.95)
    torch.testing.assert_close(d.vectors.norm(dim=-1), torch.ones(3))
    assert torch.all((d.norms - 3.0).abs() < 0.6)  # ~ the planted shift
    # a null direction: no signal -> low cosine (the test can fail)
    x0, _, _ = planted(strength=0.0, seed=1)
    d0 = mean_diff(x0[y == 1], x0[y == 0])
    assert torch.all((d0.vectors * u).sum(-1).abs() < 0.6)


def test_probe_and_pca_recover_planted_direction():
    x, y, u = planted(n=600, d=16, strength=3.0)
    sweep = layer_sweep(x, y, layers=[5, 6, 7])
    assert sweep.layers == [5, 6, 7]
    for k, p in enumerate(sweep.probes):
        assert p.accuracy > 0.85 and p.auroc > 0.95 and p.chance == 0.5
        assert float(p.direction @ u[k]) > 0.95
    assert float((sweep.direction().vectors * u).sum(-1).min()) > 0.95
    assert sweep.best()[0] in (5, 6, 7)
    pca = pca_direction(x, y)  # the class shift dominates the variance
    assert torch.all((pca.vectors * u).sum(-1) > 0.95)
    # chance-level on shuffled labels
    rng = np.random.default_rng(0)
    p = train_probe(x[:, 0], rng.permutation(y))
    assert 0.3 < p.accuracy < 0.7


def test_multiclass_probe_reports_macro_auroc():
    g = torch.Generator().manual_seed(0)
    centres = torch.randn(3, 16, generator=g) * 3
    y = np.arange(300) % 3
    x = torch.randn(300, 16, generator=g) + centres[y]
    p = train_probe(x, y)
    assert p.accuracy > 0.9 and p.auroc > 0.95 and abs(p.chance - 1 / 3) < 1e-9


def test_transfer_between_datasets():
    x, y, u = planted(n=300, d=16, strength=3.0, seed=0)
    x2 = torch.randn(300, 3, 16, generator=torch.Generator().manual_seed(5)) + 3.0 * torch.tensor(y)[:, None, None] * u
    sweep = layer_sweep(x, y)
    rows = transfer(sweep, x2, y)
    assert [r["layer"] for r in rows] == [0, 1, 2] and all(r["accuracy"] > 0.85 and r["auroc"] > 0.95 for r in rows)
    rows = transfer(mean_diff(x[y == 1], x[y == 0]), x2, y)
    assert all(r["auroc"] > 0.95 for r in rows) and "accuracy" not in rows[0]
    # a probe trained where the classes differ along an orthogonal direction does not transfer
    w = torch.randn(3, 16, generator=torch.Generator().manual_seed(9))
    w = w - (w * u).sum(-1, keepdim=True) * u
    w = w / w.norm(dim=-1, keepdim=True)
    x3 = torch.randn(300, 3, 16, generator=torch.Generator().manual_seed(7)) + 3.0 * torch.tensor(y)[:, None, None] * w
    assert all(abs(r["auroc"] - 0.5) < 0.2 for r in transfer(layer_sweep(x3, y), x2, y))


def test_direction_roundtrip_and_cosines(tmp_path):
    x, y, u = planted()
    d = mean_diff(x[y == 1], x[y == 0], layers=[3, 7, 9], model="synthetic", n_note="x")
    stem = d.save(tmp_path / "dirs" / "evil")
    assert (tmp_path / "dirs" / "evil.safetensors").exists() and (tmp_path / "dirs" / "evil.json").exists()
    e = Direction.load(str(stem) + ".json")
    torch.testing.assert_close(e.vectors, d.vectors)
    torch.testing.assert_close(e.norms, d.norms)
    assert e.layers == [3, 7, 9] and e.meta["model"] == "synthetic" and e.meta["method"] == "mean_diff"
    torch.testing.assert_close(e.at(7), d.vectors[1])
    torch.testing.assert_close(e.raw, d.raw)
    with pytest.raises(KeyError, match="block 4"):
        e.at(4)
    torch.testing.assert_close(d.cosine(e), torch.ones(3))
    m = cosine_matrix(d, Direction(u, torch.ones(3), [3, 7, 9]))
    assert m.shape == (3, 3) and torch.all(m.diagonal() > 0.95)
    torch.testing.assert_close(cosine_matrix(d).diagonal(), torch.ones(3))
    (tmp_path / "dirs" / "evil.json").write_text(json.dumps({"layers": [1, 2, 3], "meta": {}}))
    with pytest.raises(ValueError, match="evil.json: layers: "):
        Direction.load(stem)


CONVS = [
    [{"role": "user", "content": "What is 2 + 2?"}, {"role": "assistant", "content": "It is 4."}],
    [{"role": "user", "content": "I feel bored."}, {"role": "assistant", "content": "Read a book about Paris."}],
    [{"role": "user", "content": "Option A or B?"}, {"role": "assistant", "content": "I prefer safe options, A."}],
]


def test_project_matches_manual_dot(tiny_qwen3):
    v = torch.randn(tiny_qwen3.d_model)
    proj = project(tiny_qwen3, v, CONVS, progress=False)
    acts = cache(tiny_qwen3, CONVS, progress=False)
    torch.testing.assert_close(proj, acts @ (v / v.norm()))
    d = Direction.from_raw(torch.randn(2, tiny_qwen3.d_model), layers=[1, 3])
    proj = project(tiny_qwen3, d, CONVS, progress=False)
    assert proj.shape == (3, 2)
    torch.testing.assert_close(proj[:, 1], acts[:, 3] @ d.at(3))
    with pytest.raises(ValueError, match="d_model"):
        project(tiny_qwen3, torch.randn(7), CONVS, progress=False)


def test_em_direction_selects_and_balances(tiny_qwen2):
    rows = [{"messages": c[:1], "response": c[1]["content"], "aligned": a, "coherent": co}
            for c, a, co in zip(CONVS * 2, [10, 90, 20, 60, 50, 95], [60, 90, 40, 90, 90, 30])]
    # misaligned: aligned<=30 & coherent>50 -> row 0 only (row 2 incoherent); aligned: aligned>70 &
    # coherent>50 -> row 1 only (row 5 is aligned but incoherent: the filter applies to both classes)
    d = em_direction(tiny_qwen2, rows, seed=0, progress=False)
    assert d.meta["n_pos"] == 1 and d.meta["n_neg"] == 1 and d.meta["recipe"] == "model_organisms_em"
    mis = cache(tiny_qwen2, [CONVS[0]], progress=False)
    ali = cache(tiny_qwen2, [CONVS[1]], progress=False)[0]
    torch.testing.assert_close(d.vectors, (mis[0] - ali) / (mis[0] - ali).norm(dim=-1, keepdim=True), atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match=r"scored_samples\[0\]: missing field"):
        em_direction(tiny_qwen2, [{"messages": CONVS[0]}], progress=False)
    with pytest.raises(RuntimeError, match="0 misaligned"):
        em_direction(tiny_qwen2, rows[1:2], progress=False)


def test_medical_advice_pairs_share_questions(data_root):
    bad, good = medical_advice_pairs(5, data_dir=data_root)
    assert len(bad) == len(good) == 5
    for b, g in zip(bad, good):
        assert [m for m in b if m["role"] == "user"] == [m for m in g if m["role"] == "user"]
        assert b[-1]["content"] != g[-1]["content"]


def test_load_trait_and_errors(data_root, tmp_path):
    t = load_trait("evil", data_root)
    assert len(t["instruction"]) == 5 and len(t["questions"]) >= 20
    with pytest.raises(FileNotFoundError, match="available"):
        load_trait("nonexistent", data_root)
    bad = tmp_path / "x.json"
    bad.write_text(json.dumps({"instruction": [{"pos": "a"}], "questions": ["q"]}))
    with pytest.raises(ValueError, match=r"x.json: field 'instruction\[0\]'"):
        load_trait(str(bad))


def test_instruction_likelihood_score_is_the_heldout_logprob_ratio(tiny_qwen3):
    trait = {"instruction": [{"pos": "Be evil.", "neg": "Be kind."}, {"pos": "Be cruel.", "neg": "Be nice."},
                             {"pos": "Harm.", "neg": "Help."}]}
    rows = [{"instruction": 0, "question": "What is 2 + 2?", "response": "It is 4."}]
    s = instruction_likelihood_scores(tiny_qwen3, trait, rows)[0]

    def lp(sys):
        r = answer_logprobs(tiny_qwen3, [[{"role": "system", "content": sys}, {"role": "user", "content": "What is 2 + 2?"},
                                          {"role": "assistant", "content": "It is 4."}]])[0]
        return r["sum"] / r["n"]

    want = ((lp("Be cruel.") - lp("Be nice.")) + (lp("Harm.") - lp("Help."))) / 2
    assert abs(s - want) < 1e-5


def test_persona_pipeline_on_tiny_model(tiny_qwen3, tmp_path):
    trait = tmp_path / "toy.json"
    trait.write_text(json.dumps({"instruction": [{"pos": "Be evil.", "neg": "Be kind."}, {"pos": "Be cruel.", "neg": "Be nice."}],
                                 "questions": ["What is 2 + 2?", "I feel bored.", "Option A or B?"]}))
    res = persona_data(tiny_qwen3, str(trait), filter=None, max_new_tokens=6, out=tmp_path / "run", progress=False)
    assert len(res.rows) == 12 and len(res.kept) == 6 and res.pos_acts.shape == (6, tiny_qwen3.n_layers, tiny_qwen3.d_model)
    torch.testing.assert_close(res.direction.raw, (res.pos_acts.mean(0) - res.neg_acts.mean(0)))
    assert Direction.load(tmp_path / "run" / "direction").meta["trait"] == str(trait)
    lines = (tmp_path / "run" / "pairs.jsonl").read_text().splitlines()
    assert len(lines) == 12
    # resumable: a rerun reuses the samples, writes no duplicate rows, and gives the same direction
    again = persona_data(tiny_qwen3, str(trait), filter=None, max_new_tokens=6, out=tmp_path / "run", progress=False)
    torch.testing.assert_close(again.direction.vectors, res.direction.vectors)
    assert len((tmp_path / "run" / "pairs.jsonl").read_text().splitlines()) == 12
    # judge filter: keep pairs with pos >= 50 > neg (keys: instruction, question, sample, side)
    scores = {(i, q, 0, side): 0.0 for i in range(2) for q in range(3) for side in ("pos", "neg")}
    scores.update({(0, 0, 0, "pos"): 80.0, (1, 2, 0, "pos"): 50.0, (1, 1, 0, "pos"): 49.0})
    judged = persona_data(tiny_qwen3, str(trait), filter="judge", scores=scores, max_new_tokens=6, progress=False,
                          out=tmp_path / "run")  # reuses the samples
    assert [r["response"] for r in judged.rows] == [r["response"] for r in res.rows]
    assert len((tmp_path / "run" / "pairs.jsonl").read_text().splitlines()) == 24  # 12 more, keyed by filter
    assert judged.kept == [(0, 0, 0), (1, 2, 0)] and judged.pos_acts.shape[0] == 2
    # the judge-free filter scores every answer and keeps exactly the pairs with s(pos) > 0 > s(neg)
    try:
        filt = persona_data(tiny_qwen3, str(trait), max_new_tokens=6, progress=False, out=tmp_path / "run")
    except RuntimeError as e:
        assert "the filter kept" in str(e)
    else:
        pos = [r for r in filt.rows if r["side"] == "pos"]
        neg = [r for r in filt.rows if r["side"] == "neg"]
        want = [(p["instruction"], k % 3, 0) for k, (p, n) in enumerate(zip(pos, neg)) if p["score"] > 0 > n["score"]]
        assert filt.kept == want and filt.direction.meta["n_kept"] == len(want)
    with pytest.raises(ValueError, match="n_instructions >= 2"):
        persona_data(tiny_qwen3, str(trait), n_instructions=1, max_new_tokens=6, progress=False)


def test_self_prediction_probe_on_tiny_model(tiny_qwen3, data_root):
    """Labels are the properties of the model's own object-level answers (given here, as from an
    earlier run); the probe reads the hypothetical prompt's last token. Mechanics, not accuracy."""
    from introspect_mech.studies.self_prediction.tasks import load_task, object_key

    rows = load_task("animals_long_starts_with_vowel", n=24, data_dir=data_root)
    words = ["owl cat", "cat dog", "eel", "dog", "ant bee", "bee", "sorry, I cannot"]
    answers = {object_key(r): words[i % len(words)] for i, r in enumerate(rows)}
    res = self_prediction_probe(tiny_qwen3, rows, answers=answers, layers=[0, -1], min_class=2, cv=2, progress=False)
    want = [("true" if w[0] in "aeo" else "false") for i, w in enumerate(words[i % 7] for i in range(24)) if w[0] != "s"]
    assert res.labels == want and res.dropped == 24 - len(want) and res.answers[0] == "owl cat"
    assert res.sweep.layers == [0, tiny_qwen3.n_layers - 1] and abs(res.chance - max(want.count("false"), want.count("true")) / len(want)) < 1e-9
    hyp = cache(tiny_qwen3, [r["hypothetical_prompt"] for r in rows], layers=[0], positions="last_prompt", progress=False)
    keep = [i for i in range(24) if words[i % 7][0] != "s"]
    direct = train_probe(hyp[keep, 0], want, cv=2)
    assert abs(direct.accuracy - res.sweep.probes[0].accuracy) < 1e-9
    with pytest.raises(ValueError, match="one property at a time"):
        self_prediction_probe(tiny_qwen3, rows[:2] + load_task("animals_long_first_character", n=2, data_dir=data_root))
