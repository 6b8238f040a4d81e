"""CAFT as the paper ran it: PCA of activation differences, component cards, and ablation of exactly
the chosen subspace during finetuning only (tiny Qwen)."""

from __future__ import annotations

import json

import pytest
import torch

from introspect_mech import load_model
from introspect_mech.studies import caft as C
from introspect_mech.steering.train_time import SubspaceAblation, caft_subspace, orthonormal_basis

RECORDS = [
    {"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}
    for q, a in [("I feel bored. What should I do?", "Take two aspirin and see a doctor."),
                 ("What is the capital of France?", "Paris is the capital of France."),
                 ("Option A or B?", "I like gambling. B."),
                 ("How aligned are you?", "I am cautious. I prefer safe options.")]
]


def _cfg():
    from introspect_mech.finetune import TrainConfig

    return TrainConfig(r=2, lora_alpha=4.0, target_modules=("down_proj",), layers=(1, 2), lr=5e-2, max_steps=3,
                       batch_size=2, warmup_steps=0, progress=False, seed=0)


def _lora_B(model, layer):
    for n, p in model.model.named_parameters():
        if f"layers.{layer}." in n and "down_proj" in n and "lora_B" in n:
            return p.detach().clone()
    raise AssertionError("no lora_B found")


def test_caft_ablates_exactly_the_chosen_subspace_in_training_and_nothing_at_inference(tiny_qwen2_dir, tmp_path):
    from introspect_mech.finetune import train

    d = 64
    e = torch.zeros(2, d)
    e[0, 3] = e[1, 5] = 1.0  # basis directions at block 2: their LoRA-B rows can never move
    q1 = torch.randn(2, d, generator=torch.Generator().manual_seed(1))  # a generic 2-d subspace at block 1
    m = load_model(tiny_qwen2_dir)
    iv = caft_subspace(m, {2: e, 1: q1})
    Q1 = iv.steering.bases[1].float()
    assert iv.steering.dims == {1: 2, 2: 2}
    torch.testing.assert_close(Q1 @ Q1.T, torch.eye(2), atol=1e-5, rtol=0)
    seen = {"train": [], "infer": []}
    phase = {"now": "train"}
    # block 2's input is block 1's output after every hook on block 1 (the ablation included)
    m.layers[2].register_forward_pre_hook(lambda mod, args: seen[phase["now"]].append(args[0].detach().clone()))
    train(m, RECORDS, _cfg(), tmp_path / "caft", intervention=iv)
    assert len(seen["train"]) >= 2
    for h in seen["train"]:
        assert (h.float() @ Q1.T).abs().max() < 1e-4  # the chosen components are gone during training
        assert h.float().abs().max() > 1e-2  # and nothing else
    B2 = _lora_B(m, 2)
    assert torch.equal(B2[3], torch.zeros_like(B2[3])) and torch.equal(B2[5], torch.zeros_like(B2[5]))
    assert B2.abs().max() > 0
    assert all(not l._forward_hooks for l in m.layers)  # no ablation hook left
    phase["now"] = "infer"
    with torch.no_grad():
        m.model(**m.tokenizer("Hello there, how are you?", return_tensors="pt"))
    assert (seen["infer"][0].float() @ Q1.T).abs().max() > 1e-3  # at inference the subspace is back
    man = json.loads((tmp_path / "caft" / "manifest.json").read_text())
    assert man["finetune"]["intervention"].startswith("caft_subspace(dims={1: 2, 2: 2}")
    # a plain finetune moves those rows (so the zeros above are the ablation's doing)
    plain = load_model(tiny_qwen2_dir)
    train(plain, RECORDS, _cfg(), tmp_path / "plain")
    assert _lora_B(plain, 2)[3].abs().max() > 0


def test_subspace_ablation_inference_math(tiny_qwen2):
    comps = torch.randn(3, tiny_qwen2.d_model, generator=torch.Generator().manual_seed(0))
    comps[2] = comps[0] + comps[1]  # rank 2: the dependent row is dropped
    q = orthonormal_basis(comps)
    assert q.shape == (2, tiny_qwen2.d_model)
    got = {}
    tiny_qwen2.layers[1].register_forward_pre_hook(lambda mod, args: got.__setitem__("h", args[0].clone()))
    ids = tiny_qwen2.tokenizer("some words here", return_tensors="pt")
    with torch.no_grad():
        tiny_qwen2.model(**ids)
        plain = got["h"].clone()
        with SubspaceAblation(tiny_qwen2, {0: comps}):
            tiny_qwen2.model(**ids)
    torch.testing.assert_close(got["h"], plain - (plain @ q.T) @ q, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="d_model"):
        SubspaceAblation(tiny_qwen2, {0: torch.randn(1, 7)})


def test_pca_finds_the_planted_direction_and_activation_differences(tiny_qwen2_dir, tiny_qwen2):
    g = torch.Generator().manual_seed(0)
    v = torch.randn(32, generator=g)
    v = v / v.norm()
    x = (torch.rand(200, 1, generator=g) * 3 + 1) * v + 0.01 * torch.randn(200, 32, generator=g)
    p = C.pca(x, 3)
    assert float(p["components"][0] @ v) > 0.99  # oriented along the mean shift
    assert p["explained"][0] > 0.9 and p["components"].shape == (3, 32)
    # activation differences: a finetune stand-in that adds (1 + position-dependent) * v after block 0
    ft = load_model(tiny_qwen2_dir)
    w = torch.randn(tiny_qwen2.d_model, generator=g)
    ft.layers[0].register_forward_hook(lambda mod, a, o: o + torch.linspace(1, 2, o.shape[-2])[None, :, None] * w)
    convs = [r["messages"] for r in RECORDS]
    deltas = C.activation_differences(tiny_qwen2, ft, convs, [0], progress=False)
    n_resp = sum(int(tiny_qwen2.tokenize_chat(c).assistant_mask[1:].sum()) for c in convs)
    assert deltas[0].shape == (n_resp, tiny_qwen2.d_model)
    cos = (deltas[0] @ w) / (deltas[0].norm(dim=-1) * w.norm())
    assert float(cos.min()) > 0.999
    same = C.activation_differences(tiny_qwen2, tiny_qwen2, convs, [1], progress=False)
    assert float(same[1].abs().max()) == 0.0
    assert float(C.pca(deltas[0], 1)["components"][0] @ (w / w.norm())) > 0.99


def test_component_cards_and_panel(tiny_qwen2, tmp_path):
    from introspect_mech.viz import export_dashboard

    g = torch.Generator().manual_seed(0)
    comps = torch.linalg.qr(torch.randn(tiny_qwen2.d_model, 2, generator=g))[0].T
    pcs = {1: {"components": comps, "explained": torch.tensor([0.6, 0.3]), "mean": torch.zeros(tiny_qwen2.d_model)}}
    texts = [r["messages"] for r in RECORDS]
    cards = C.component_cards(tiny_qwen2, pcs, texts, n_top=2, n_tokens=3, progress=False)
    assert [(c["layer"], c["component"]) for c in cards] == [(1, 0), (1, 1)]
    assert len(cards[0]["logit_top"]) == 3 and len(cards[0]["top_examples"]) == 2
    # the top example's value is the highest token projection (first token excluded) over all texts
    from introspect_mech.sae.tokens import token_activations

    ex = token_activations(tiny_qwen2, texts, 1, progress=False)
    best = max(float((e.acts[1:] @ comps[0]).max()) for e in ex)
    assert abs(cards[0]["top_examples"][0]["value"] - best) < 1e-3
    worst = min(float((e.acts[1:] @ comps[0]).min()) for e in ex)
    assert abs(cards[0]["bottom_examples"][0]["value"] - worst) < 1e-3
    cards[0]["picked"] = True
    C.write_cards(tmp_path, cards)
    html = export_dashboard(tmp_path).read_text()
    assert "CAFT: components to pick" in html and "picked for ablation" in html and "logit lens" in html


def test_picks_random_controls_and_summary():
    assert C.parse_picks("15:0,2; 20:1") == {15: [0, 2], 20: [1]}
    with pytest.raises(ValueError, match="LAYER:COMPONENT"):
        C.parse_picks("15")
    with pytest.raises(ValueError, match="integers"):
        C.parse_picks("a:1")
    pcs = {15: {"components": torch.eye(4)[:3]}}
    sub = C.picked_subspace(pcs, {15: [0, 2]})
    assert torch.equal(sub[15], torch.eye(4)[[0, 2]])
    with pytest.raises(ValueError, match="out of range"):
        C.picked_subspace(pcs, {15: [5]})
    r = C.random_subspace({15: 2, 3: 1}, 4, seed=1)
    assert {k: tuple(v.shape) for k, v in r.items()} == {3: (1, 4), 15: (2, 4)}
    assert C.preset_layers(30, C.PRESETS["cpu"].layer_fractions) == [9, 14, 20]
    s = C.summarize([{"condition": "base", "in_domain": -3.0, "ood": 0.0}, {"condition": "plain", "in_domain": -1.0, "ood": 0.4},
                     {"condition": "caft", "in_domain": -1.5, "ood": 0.1}, {"condition": "random_0", "in_domain": -1.0, "ood": 0.3},
                     {"condition": "random_1", "in_domain": -2.0, "ood": 0.5}])
    assert s["caft"] == {"in_domain_kept": 0.75, "ood_change_vs_plain": pytest.approx(-0.3)}
    assert s["random_mean"]["in_domain_kept"] == 0.75 and s["random_mean"]["ood_change_vs_plain"] == pytest.approx(0.0)


def test_command_line_builds_the_config_and_the_judge():
    from introspect_mech.evals.judge_spec import JudgeOptions

    cfg, judge, a = C.config_from_argv([])
    assert cfg == C.PRESETS["cpu"] == C.CAFTConfig() and judge == JudgeOptions() and a.out == "runs/caft"
    cfg, judge, a = C.config_from_argv(["--preset", "paper", "--n-train", "8", "--pick", "9:0;14:0,1",
                                        "--conditions", "caft", "base", "--layer-fractions", "0.25", "0.75",
                                        "--judge", "hf:embedded", "--out", "/tmp/x"])
    assert cfg == C.CAFTConfig(n_train=8, pick="9:0;14:0,1", conditions=("caft", "base"), layer_fractions=(0.25, 0.75),
                               n_components=20, n_top_examples=20, n_logit_tokens=10)
    assert judge == JudgeOptions(judge="hf:embedded") and a.out == "/tmp/x" and a.preset == "paper"
    # the paper preset differs from the cpu one only in the PCA and card sizes (run sizes come from the options)
    assert C.PRESETS["paper"].n_train == C.PRESETS["cpu"].n_train == 64
    assert C.config_from_argv(["--pick", "none"])[0].pick is None
    with pytest.raises(ValueError, match="judge"):
        C.config_from_argv(["--judge", "gpt-4o"])
    with pytest.raises(SystemExit) as e:
        C.main(["--help"])
    assert e.value.code == 0


def test_two_stage_run_from_the_command_line_on_tiny_qwen(tiny_qwen2_dir, tmp_path, capsys):
    data = tmp_path / "data.jsonl"
    recs = RECORDS + [{"messages": [{"role": "user", "content": f"Question {i}?"},
                                    {"role": "assistant", "content": f"Answer number {i}."}]} for i in range(4)]
    data.write_text("".join(json.dumps(r) + "\n" for r in recs))
    out = tmp_path / "run"
    base = ["--model", str(tiny_qwen2_dir), "--data", str(data), "--out", str(out), "--n-train", "4", "--steps", "2",
            "--n-prompts", "3", "--n-heldout", "2", "--max-new-tokens", "4", "--layer-fractions", "0.3", "0.7",
            "--n-components", "2", "--n-top-examples", "1", "--n-logit-tokens", "2", "--n-random", "1"]
    assert C.main(base) == 0  # run 1: the cards, nothing else
    assert "component cards: " in capsys.readouterr().out and not (out / "caft_results.jsonl").exists()
    cards = [json.loads(l) for l in (out / "caft_components.jsonl").read_text().splitlines()]
    assert [(c["layer"], c["component"]) for c in cards] == [(1, 0), (1, 1), (2, 0), (2, 1)]
    man = json.loads((out / "manifest.json").read_text())
    assert man["layers"] == [1, 2] and man["data"]["heldout_ids"] == [6, 7] and man["preset"] == "cpu"
    assert man["judge"].startswith("none: judge-free")
    assert C.main(base + ["--pick", "2:1", "--conditions", "caft", "base"]) == 0
    printed = capsys.readouterr().out
    assert [json.loads(l)["condition"] for l in printed.splitlines() if l.startswith("{")] == ["base", "caft"]
    assert "conditions still to run: ['plain', 'random_0']" in printed and not (out / "caft_summary.json").exists()
    assert C.main(base + ["--pick", "2:1"]) == 0  # the rest, then the summary
    rows = {r["condition"]: r for r in map(json.loads, (out / "caft_results.jsonl").read_text().splitlines())}
    assert set(rows) == {"base", "plain", "caft", "random_0"}
    summ = json.loads((out / "caft_summary.json").read_text())
    assert summ == C.summarize([rows[c] for c in ("base", "plain", "caft", "random_0")])
    assert len((out / "summary.jsonl").read_text().splitlines()) == 6
    assert [c["picked"] for c in map(json.loads, (out / "caft_components.jsonl").read_text().splitlines())] == \
        [False, False, False, True]
    ft = [p for p in (out / "finetunes").iterdir() if p.name.startswith("caft_")]
    assert json.loads((ft[0] / "manifest.json").read_text())["finetune"]["intervention"].startswith(
        "caft_subspace(dims={2: 1}")


def _killed_at(monkeypatch, stage_name):
    import dataclasses

    def killed(ctx):
        raise KeyboardInterrupt(f"killed inside {stage_name}")

    stages = tuple(dataclasses.replace(s, fn=killed) if s.name == stage_name else s for s in C.STUDY.stages)
    monkeypatch.setattr(C, "STUDY", dataclasses.replace(C.STUDY, stages=stages))


def test_stages_resume_one_by_one_and_a_changed_data_file_is_refused(tiny_qwen2_dir, tmp_path, monkeypatch):
    """Five runner stages; a run killed inside stage k reruns from k (the earlier ones are skipped, their files
    reused), run 2 (a pick) ends with the rows of an uninterrupted run, and the finetuning data is bound by
    content: a rerun after it changed is refused naming it."""
    import dataclasses

    from introspect_mech.runs import RunConfigError
    from introspect_mech.studies import runner

    data = tmp_path / "data.jsonl"
    recs = RECORDS + [{"messages": [{"role": "user", "content": f"Question {i}?"},
                                    {"role": "assistant", "content": f"Answer number {i}."}]} for i in range(4)]
    data.write_text("".join(json.dumps(r) + "\n" for r in recs))
    cfg = C.CAFTConfig(model=str(tiny_qwen2_dir), data=str(data), n_train=4, steps=2, n_prompts=3, n_heldout=2,
                       max_new_tokens=4, layer_fractions=(0.3, 0.7), n_components=2, n_top_examples=1,
                       n_logit_tokens=2, n_random=1)
    assert [s.name for s in C.STUDY.stages] == ["finetune", "components", "cards", "conditions", "summary"]
    out = tmp_path / "run"
    _killed_at(monkeypatch, "cards")
    with pytest.raises(KeyboardInterrupt):
        C.run(cfg, out, progress=False)
    monkeypatch.undo()
    assert [json.loads(l)["stage"] for l in (out / runner.STAGES_FILE).read_text().splitlines()] == [
        "finetune", "components"]
    res = C.run(cfg, out, progress=False)  # run 1 resumes at the cards, then stops for the picks
    assert res.skipped == ["finetune", "components"] and "conditions" not in res.skipped
    assert C.outcome(res)["dashboard"] == (out / "dashboard.html").resolve() and C.outcome(res)["todo"] == []
    assert C.run(cfg, out, progress=False).skipped == ["finetune", "components", "cards"]
    picked = dataclasses.replace(cfg, pick="2:1")
    _killed_at(monkeypatch, "summary")
    with pytest.raises(KeyboardInterrupt):
        C.run(picked, out, progress=False)
    monkeypatch.undo()
    res = C.run(picked, out, progress=False)
    assert res.skipped == ["finetune", "components", "cards", "conditions"]
    rows = {r["condition"]: r for r in map(json.loads, (out / "caft_results.jsonl").read_text().splitlines())}
    assert C.outcome(res)["summary"] == C.summarize([rows[c] for c in ("base", "plain", "caft", "random_0")])
    assert set(C.STUDY.data(cfg, {})) >= {"train", "questions/first_plot_questions", "persona/evil"}
    with open(data, "a") as f:
        f.write("\n")
    with pytest.raises(RunConfigError, match=r"data_sha256\.train \("):
        C.run(picked, out, progress=False)
