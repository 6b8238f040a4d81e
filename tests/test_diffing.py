"""diffing: a mechanism planted by a permanent hook is recovered exactly and removed by ablation."""

from __future__ import annotations

import copy

import pytest
import torch

from introspect_mech import diffing, steering
from introspect_mech.probes import Direction

TEXTS = ["the cat sat on the mat today", "numbers 1 2 3 4 5 6 follow", "a quick brown fox jumps high",
         "water boils at one hundred", "she went to the market early", "trains run every hour here",
         "copper conducts heat well", "the sky is blue and clear"]
CONVS = [[{"role": "user", "content": q}, {"role": "assistant", "content": a}]
         for q, a in [("hi there", "hello, how are you"), ("what is 2+2", "it is 4 of course"),
                      ("name a colour", "blue is a colour"), ("say yes", "yes yes yes indeed")]]


def _plant(model, v, layer):
    m = copy.deepcopy(model)

    def hook(_mod, _args, out):
        return (out[0] + v,) + tuple(out[1:]) if isinstance(out, tuple) else out + v

    m.layers[layer].register_forward_hook(hook)
    return m


@pytest.fixture
def planted(tiny_qwen2):
    torch.manual_seed(0)
    L = 1
    v = torch.randn(tiny_qwen2.d_model)
    v = 8.0 * v / v.norm()
    return tiny_qwen2, _plant(tiny_qwen2, v, L), v, L


def test_activation_difference_recovers_planted_vector(planted):
    base, tuned, v, L = planted
    d = diffing.activation_difference(base, tuned, TEXTS, first_tokens=5)
    assert d.layers == list(range(base.n_layers)) and d.meta["method"] == "activation_difference"
    assert float(d.at(L) @ (v / v.norm())) > 0.9999  # exact up to float error
    assert abs(float(d.norms[L]) - 8.0) < 1e-3
    assert all(float(d.norms[l]) == 0.0 for l in range(L))  # blocks before L are unchanged
    assert len(d.meta["per_position_norm"]) == 5
    rec = {r["layer"]: r for r in diffing.recovery(d, v, n_random=3)}
    assert rec[L]["cosine"] > 0.9999 and rec[L]["random_abs_max"] < 0.6


def test_other_methods_recover_planted_vector(planted):
    base, tuned, v, L = planted
    u = v / v.norm()
    cmp = diffing.compare(base, tuned, TEXTS, CONVS, first_tokens=4, probe_layers=[L, L + 1])
    assert set(cmp.directions) == {"activation_difference", "difference_pca", "response_mean_difference", "probe"}
    assert cmp.errors == {"sae_latent": "no SAE given"}
    assert float(cmp.directions["difference_pca"].at(L) @ u) > 0.9999
    assert float(cmp.directions["response_mean_difference"].at(L) @ u) > 0.9999
    # the probe separates the two models; its normal leans towards v far above chance
    probe = cmp.directions["probe"]
    assert probe.meta["accuracy"][0] == 1.0 and float(probe.at(L) @ u) > 0.3
    rows = cmp.recovery(v)
    assert {r["method"] for r in rows} == set(cmp.directions)


def test_ablation_of_found_direction_removes_the_mechanism(planted):
    base, tuned, v, L = planted
    d = diffing.activation_difference(base, tuned, TEXTS)
    ids = torch.tensor([[3, 17, 42, 99, 7, 11]])
    with steering.ablate(tuned, d, layers=[L]):
        a = tuned.model(input_ids=ids).logits
    with steering.ablate(base, d, layers=[L]):
        b = base.model(input_ids=ids).logits
    assert torch.allclose(a, b, atol=1e-4)  # the planted model and the base agree once v is gone
    ref = diffing.response_logprobs(base, CONVS)
    kl_full = sum(diffing.response_kl(tuned, ref, CONVS))
    with steering.ablate(tuned, d, layers=[L]):
        kl_abl = sum(diffing.response_kl(tuned, ref, CONVS))
    with steering.ablate(tuned, steering.random_like(d, 0), layers=[L]):
        kl_rnd = sum(diffing.response_kl(tuned, ref, CONVS))
    with steering.add(tuned, d, layers=[L], alpha=-1.0, scale="norm"):
        kl_sub = sum(diffing.response_kl(tuned, ref, CONVS))
    assert kl_full > 0.01
    assert kl_abl < 0.5 * kl_full and kl_rnd > 0.8 * kl_full  # random ablation leaves it in place
    assert kl_sub < 1e-6 * max(kl_full, 1.0)  # subtracting the measured shift undoes it exactly


def test_response_kl_and_identity(tiny_qwen2):
    ref = diffing.response_logprobs(tiny_qwen2, CONVS)
    assert all(abs(k) < 1e-6 for k in diffing.response_kl(tiny_qwen2, ref, CONVS))
    with pytest.raises(ValueError, match="nothing to diff"):
        diffing.activation_difference(tiny_qwen2, tiny_qwen2, TEXTS)
    with pytest.raises(ValueError, match="texts\\[1\\]"):
        diffing.activation_difference(tiny_qwen2, copy.deepcopy(tiny_qwen2), ["ok", 3])


def test_same_model_with_adapter_uses_disable_adapter(tiny_qwen2):
    from peft import LoraConfig, get_peft_model

    m = copy.deepcopy(tiny_qwen2)
    m.model = get_peft_model(m.model, LoraConfig(r=2, target_modules=["down_proj"], init_lora_weights=False))
    d = diffing.activation_difference(m, m, TEXTS)  # base pass without the adapter
    ref = diffing.activation_difference(tiny_qwen2, m, TEXTS)
    assert float(d.norms.max()) > 0 and torch.allclose(d.raw, ref.raw, atol=1e-5)


def test_logit_lens_reads_the_unembedding(tiny_qwen2):
    W = tiny_qwen2.base_model.get_output_embeddings().weight.detach().float()
    g = tiny_qwen2.base_model.model.norm.weight.detach().float()
    v = torch.randn(tiny_qwen2.d_model)
    out = diffing.logit_lens(tiny_qwen2, Direction.from_raw(v[None], [0]), k=3)
    logits = W @ ((v / v.norm()) * g)
    assert [r["id"] for r in out["promoted"]] == logits.topk(3).indices.tolist()
    assert [r["id"] for r in out["suppressed"]] == (-logits).topk(3).indices.tolist()
    assert out["promoted"][0]["logit"] >= out["promoted"][-1]["logit"]


def test_steer_readout_changes_answers(tiny_qwen2):
    v = torch.randn(tiny_qwen2.d_model) * 50
    rows = diffing.steer_readout(tiny_qwen2, v, layer=1, alpha=1.0, prompts=["hi", "say yes"], max_new_tokens=6,
                                 scale="unit")
    assert [r["steered"] for r in rows] == [False, False, True, True]
    assert any(a["response"] != b["response"] for a, b in zip(rows[:2], rows[2:]))
