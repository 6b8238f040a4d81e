"""Organisms study on tiny Qwen: the planted and steering-distillation organisms are recovered."""

from __future__ import annotations

import json

import pytest
import torch

from introspect_mech import steering
from introspect_mech.studies import organisms


def test_planted_copy_adds_vector_and_leaves_original(tiny_qwen2):
    v = torch.randn(tiny_qwen2.d_model)
    ids = torch.tensor([[5, 6, 7, 8]])
    before = tiny_qwen2.model(input_ids=ids).logits
    m = organisms.planted_copy(tiny_qwen2, v, 2)
    assert torch.equal(tiny_qwen2.model(input_ids=ids).logits, before)  # original untouched
    with steering.add(tiny_qwen2, v, layers=[2], alpha=1.0):
        steered = tiny_qwen2.model(input_ids=ids).logits
    assert torch.allclose(m.model(input_ids=ids).logits, steered, atol=1e-5)  # = the steered base
    with pytest.raises(ValueError, match="d_model"):
        organisms.planted_copy(tiny_qwen2, torch.randn(3), 1)


def test_distillation_records_drop_system_prompt_unless_inoculated():
    rows = [{"messages": [{"role": "system", "content": "be evil"}, {"role": "user", "content": "q1"}],
             "response": "a1"},
            {"messages": [{"role": "user", "content": "q2"}], "response": "  "}]  # empty answers dropped
    plain = organisms.distillation_records(rows)
    assert plain == [{"messages": [{"role": "user", "content": "q1"}, {"role": "assistant", "content": "a1"}]}]
    inoc = organisms.distillation_records(rows, system="be evil")
    assert inoc[0]["messages"][0] == {"role": "system", "content": "be evil"}


def test_persona_expression_sign(tiny_qwen2):
    items = [{"question": "hi", "evil": "same answer", "helpful": "same answer"},
             {"question": "yo", "evil": "aaa", "helpful": "a b c d"}]
    e = organisms.persona_expression(tiny_qwen2, items)
    assert abs(e[0]) < 1e-6 and e[1] != 0.0


def test_steering_distillation_trains_and_is_recovered(tiny_qwen2, tmp_path):
    """The organism: the base steered with v at block L answers prompts; a LoRA (project loop, no
    hook) learns those answers; the activation-difference lens then points along v, above chance.

    v is a token direction (the unembedding row of "a"): a random tiny model's logits are bounded
    (~1.3, small random unembedding after a unit RMSNorm), so only a direction that moves the readout
    leaves something to distil."""
    from introspect_mech import diffing
    from introspect_mech.finetune import TrainConfig

    W = tiny_qwen2.base_model.get_output_embeddings().weight.detach()
    t = tiny_qwen2.tokenizer("a", add_special_tokens=False)["input_ids"][0]
    v = 8.0 * W[t] / W[t].norm()
    L = 2
    cfg = TrainConfig(r=4, lora_alpha=8, lr=1e-2, epochs=6, batch_size=4, warmup_steps=1, progress=False)
    tuned, info = organisms.steering_distillation(tiny_qwen2, v, L, [f"question {i} about things" for i in range(16)],
                                                  cfg, tmp_path / "ft", max_new_tokens=8, temperature=0.0)
    assert info["final_loss"] < info["first_loss"] and info["n_records"] == 16
    ft = json.loads((tmp_path / "ft" / "manifest.json").read_text())
    assert ft["finetune"]["intervention"] is None  # the finetune itself runs without the steering hook
    rows = [json.loads(l) for l in (tmp_path / "ft_samples.jsonl").read_text().splitlines()]
    assert all(r["messages"][-1]["role"] == "user" for r in rows)  # generated under steering, trained without
    d = diffing.activation_difference(tiny_qwen2, tuned, organisms.UNRELATED_TEXTS[:16])
    rec = {r["layer"]: r for r in diffing.recovery(d, v, n_random=3)}
    assert rec[L]["cosine"] > rec[L]["random_abs_max"] and rec[L]["cosine"] > 0.5
    ref = diffing.response_logprobs(tiny_qwen2, [[{"role": "user", "content": "hi"},
                                                 {"role": "assistant", "content": "a a a"}]])
    assert diffing.response_kl(tuned, ref, [[{"role": "user", "content": "hi"},
                                             {"role": "assistant", "content": "a a a"}]])[0] > 0


def test_run_end_to_end_on_tiny(tiny_qwen2, shared_dir, tmp_path):
    cfg = organisms.OrganismsConfig(
        layer=2, alpha=6.0, directions=("random",), seeds=(0,), n_train=8, n_eval=3, max_new_tokens=6,
        epochs=1, lr=1e-2, lora_r=2, batch_size=4, n_texts=8, first_tokens=4, persona_questions=2,
        persona_instructions=2, persona_max_new_tokens=4, sae=False, persona_distill=True, inoculation=False,
        train_time=(), probe_every=2)
    res = organisms.run(out=tmp_path / "org", config=cfg, base=tiny_qwen2, log=lambda s: None)
    rec = {(r["organism"], r["method"]): r for r in res["table"] if r["kind"] == "recovery"}
    assert rec[("planted", "activation_difference")]["value"] > 0.999  # the permanent hook is read exactly at L
    assert rec[("planted", "difference_pca")]["value"] > 0.999
    assert rec[("distill_random", "sae_latent")]["value"] is None  # no SAE: reported as a failure, not dropped
    assert {"planted", "distill_random", "persona_distill"} == {o for o, _ in rec}
    iv = {(r["organism"], r["source"], r["intervention"]): r for r in res["interventions"]}
    assert iv[("planted", "ground_truth", "subtract from finetune")]["value"] == pytest.approx(1.0, abs=1e-3)
    assert iv[("planted", "activation_difference", "subtract from finetune")]["value"] > 0.99
    assert iv[("planted", "ground_truth", "add to base")]["value"] == pytest.approx(1.0, abs=1e-3)
    # the random tiny model writes no usable persona answers: the persona organisms are reported as skipped
    skipped = [r for r in res["recovery"] if r["organism"] == "persona_distill"]
    assert skipped and all(r["cosine"] is None and "usable evil/helpful" in r["error"] for r in skipped)
    out = tmp_path / "org"
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["layer"] == 2 and manifest["config"]["alpha"] == 6.0 and manifest["wall_time_s"] > 0
    readout = [json.loads(l) for l in (out / "samples.jsonl").read_text().splitlines()]
    assert {r["model"] for r in readout} == {"base", "base + planted activation difference"}
    text = organisms.format_table(res["table"])
    assert "planted" in text and "fail" in text  # the missing SAE shows up in the table
    from introspect_mech.viz import export_dashboard

    html = export_dashboard(out).read_text()
    assert 'id="organisms"' in html and "Recovery: cosine" in html


# ---- command line (parse only, no model run) --------------------------------------------------------------
def test_command_line_builds_the_config(capsys, run_experiment):
    import dataclasses

    from introspect_mech.cliargs import config_from_args

    p = organisms.build_parser()
    ns = p.parse_args(["--preset", "tiny", "--seeds", "0", "1", "--alpha", "6", "--layer", "0.25",
                       "--model", "m", "--no-sae", "--lora-layers", "up_to_L", "--train-time", "caft", "--out", "o"])
    cfg = config_from_args(ns, organisms.OrganismsConfig, presets=organisms.PRESETS)
    assert cfg == dataclasses.replace(organisms.PRESETS["tiny"], seeds=(0, 1), alpha=6.0, layer=0.25, model="m",
                                      sae=False, lora_layers="up_to_L", train_time=("caft",))
    assert ns.out == "o"
    # --layer: a block index stays an int, a float in [0, 1] is a relative depth (layers.depth_block's one rule)
    from introspect_mech.layers import resolve_layer
    for arg, value, block in (("12", 12, 12), ("0.5", 0.5, 14), ("1.0", 1.0, 29)):
        got = config_from_args(p.parse_args(["--layer", arg]), organisms.OrganismsConfig, presets=organisms.PRESETS)
        assert got.layer == value and type(got.layer) is type(value) and resolve_layer(got.layer, 30) == block
    assert config_from_args(p.parse_args([]), organisms.OrganismsConfig, presets=organisms.PRESETS) == \
        organisms.PRESETS["cpu"]
    with pytest.raises(SystemExit) as e:
        organisms.main(["--lora-layers", "some"])
    assert e.value.code == 2
    with pytest.raises(SystemExit) as e:
        organisms.main(["--help"])
    assert e.value.code == 0 and "--persona-distill" in capsys.readouterr().out
    code, out = run_experiment("organisms.py", "--help")
    assert code == 0 and "relative depth" in out
