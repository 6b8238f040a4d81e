"""SAE area on tiny Qwen: hook-name mapping, loading a locally saved sae-lens SAE, training through
sae-lens lowers reconstruction loss, model_diff (zero on identical models, planted direction ranked
first), latent steering with random controls, self-prediction latent scores."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from introspect_mech import load_model, steering
from introspect_mech import sae as S
from introspect_mech.studies.self_prediction import sae_latents as SL
from introspect_mech.testing import _CORPUS

TEXTS = [a + " " + b for a in _CORPUS for b in _CORPUS]
QUESTIONS = ["I feel bored. What should I do?", "What is the capital of France?", "Pick a color.",
             "How do I add two numbers in Python?", "Should I take the risky bet?", "Name a number."]
ANSWERS = ["Take two aspirin and see a doctor.", "Paris is the capital of France.", "Red green blue yellow.",
           "def add(a, b):\n    return a + b", "Option B: a 10% chance of 600 dollars.", "42 100 666 1337"]
CONVS = [[{"role": "user", "content": q}, {"role": "assistant", "content": a}] for q in QUESTIONS for a in ANSWERS]


# ---- hook names and releases ---------------------------------------------------------------------
@pytest.mark.parametrize("name,layer", [
    ("blocks.12.hook_resid_post", 12), ("blocks.3.hook_out", 3), ("model.layers.7", 7),
    ("model.language_model.layers.5", 5), ("blocks.4.hook_resid_pre", 3), ("transformer.h.2", 2),
])
def test_hook_layer_maps_to_decoder_block(name, layer):
    assert S.hook_layer(name) == layer


@pytest.mark.parametrize("name", ["blocks.0.hook_resid_pre", "blocks.3.attn.hook_z", "blocks.3.hook_mlp_out",
                                  "blocks.3.hook_resid_mid", "hook_embed"])
def test_hook_layer_refuses_non_block_outputs(name):
    with pytest.raises(S.SAELoadError, match="hook"):
        S.hook_layer(name)


def test_release_info_and_neuronpedia_links_offline():
    info = S.release_info("qwen2.5-7b-instruct-andyrdt")
    assert info["model"] == "Qwen/Qwen2.5-7B-Instruct"
    npid = info["neuronpedia"]["resid_post_layer_15_trainer_1"]
    assert S.neuronpedia_url(npid, 123) == "https://www.neuronpedia.org/qwen2.5-7b-it/15-resid-post-aa/123"
    assert S.neuronpedia_url(None, 1) is None
    assert "layer18" in S.release_info("qwen-scope-3-8b-base-w64k-l50")["sae_ids"]
    with pytest.raises(S.SAELoadError, match="unknown"):
        S.release_info("no-such-release")


def test_load_rejects_unknown_sae_id_before_downloading():
    with pytest.raises(S.SAELoadError, match="no sae_id"):
        S.load_release("qwen2.5-7b-instruct-andyrdt", "resid_post_layer_99_trainer_1")


# ---- local sae-lens SAEs -------------------------------------------------------------------------
def _saved_sae(path, hook="blocks.2.hook_resid_pre", d_in=64, d_sae=96, arch="topk", npid=None):
    import sae_lens as sl

    torch.manual_seed(0)
    if arch == "topk":
        inner = sl.TopKSAE(sl.TopKSAEConfig(d_in=d_in, d_sae=d_sae, k=4))
    else:
        inner = sl.StandardSAE(sl.StandardSAEConfig(d_in=d_in, d_sae=d_sae))
    with torch.no_grad():
        for p in inner.parameters():
            p.copy_(torch.randn_like(p) * 0.1)
    inner.cfg.metadata.hook_name = hook
    if npid:
        inner.cfg.metadata.neuronpedia_id = npid
    inner.save_model(path)
    return inner


@pytest.mark.parametrize("arch", ["topk", "standard"])
def test_load_local_sae_lens_directory(tmp_path, arch):
    inner = _saved_sae(tmp_path / "s", arch=arch, npid="tiny/2-res")
    s = S.load_local(tmp_path / "s")
    assert (s.layer, s.hook_name, s.d_in, s.d_sae) == (1, "blocks.2.hook_resid_pre", 64, 96)
    assert s.url(5) == "https://www.neuronpedia.org/tiny/2-res/5"
    x = torch.randn(10, 64)
    with torch.no_grad():
        torch.testing.assert_close(s.encode(x), inner.encode(x))
        torch.testing.assert_close(s.reconstruct(x), inner.decode(inner.encode(x)))
    assert torch.allclose(s.decoder_direction(3).norm(), torch.tensor(1.0))
    # save() -> load_local() round trip keeps layer and weights
    S.save(s, tmp_path / "again")
    s2 = S.load_local(tmp_path / "again")
    assert s2.layer == 1 and json.loads((tmp_path / "again" / "cfg.json").read_text())["metadata"]["hf_hook_name"] == "model.layers.1"
    torch.testing.assert_close(s2.encode(x), s.encode(x))


def test_load_local_errors_name_file_and_field(tmp_path):
    with pytest.raises(S.SAELoadError, match="no cfg.json"):
        S.load_local(tmp_path)
    (tmp_path / "cfg.json").write_text('{"d_in": 4,\n "d_sae": }')
    with pytest.raises(S.SAELoadError, match=r"cfg.json: line 2"):
        S.load_local(tmp_path)
    (tmp_path / "cfg.json").write_text('{"d_in": 4, "d_sae": 8}')
    with pytest.raises(S.SAELoadError, match="missing field 'architecture'"):
        S.load_local(tmp_path)


def test_sae_that_does_not_fit_the_model_is_refused(tmp_path, tiny_qwen2):
    _saved_sae(tmp_path / "wide", d_in=32)
    with pytest.raises(S.SAELoadError, match="d_in=32"):
        S.load_local(tmp_path / "wide").check_fits(tiny_qwen2)
    _saved_sae(tmp_path / "deep", hook="blocks.9.hook_resid_post")
    with pytest.raises(S.SAELoadError, match="layer 9"):
        S.load_local(tmp_path / "deep").check_fits(tiny_qwen2)


# ---- token activations -------------------------------------------------------------------------
def test_token_activations_equal_block_outputs(tiny_qwen2):
    items = [CONVS[0], TEXTS[3], {"messages": CONVS[7]}]
    got = S.token_activations(tiny_qwen2, items, 1, progress=False)
    for _it, ta in zip(items, got):
        with torch.no_grad():
            hs = tiny_qwen2.model(input_ids=ta.input_ids[None], output_hidden_states=True).hidden_states
        torch.testing.assert_close(ta.acts, hs[2][0].float(), atol=1e-5, rtol=1e-5)
    assert got[0].assistant_mask.any() and not got[1].assistant_mask.any()
    assert got[0].mask("response").sum() == got[0].assistant_mask.sum()
    assert not got[0].mask("all")[0] and got[0].mask("last_prompt").sum() == 1
    with pytest.raises(ValueError, match="item 1"):
        S.token_activations(tiny_qwen2, [CONVS[0], 5], 1)


# ---- training ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def trained(tiny_qwen2_dir, tmp_path_factory):
    model = load_model(tiny_qwen2_dir)
    out = tmp_path_factory.mktemp("sae_run")
    cfg = S.SAETrainConfig(architecture="topk", expansion=4, k=8, batch_size=256, epochs=8, lr=4e-3)
    return model, S.train_sae(model, 2, TEXTS, cfg, out_dir=out)


def test_training_lowers_reconstruction_loss(trained):
    model, res = trained
    m = res.metrics
    assert m["after"]["mse"] < 0.7 * m["before"]["mse"]
    assert m["after"]["explained_variance"] > m["before"]["explained_variance"] + 0.3
    assert m["after"]["l0"] == pytest.approx(8.0)
    assert m["train_tokens"] > 5000 and m["eval_tokens"] > 500
    assert res.history and res.history[-1]["mse_loss"] < res.history[0]["mse_loss"]
    # the run directory: manifest, metrics, log, and an SAE that sae-lens and load_local read back
    rd = res.run_dir
    assert json.loads((rd / "metrics.json").read_text())["after"]["mse"] == m["after"]["mse"]
    assert json.loads((rd / "manifest.json").read_text())["stage"] == "sae_train"
    back = S.load_local(rd / "sae")
    assert back.layer == 2
    x = torch.randn(5, 64) * 0.2
    torch.testing.assert_close(back.encode(x), res.sae.encode(x))


@pytest.mark.parametrize("arch", ["batchtopk", "standard"])
def test_other_architectures_train_from_cached_activations(trained, arch):
    model, res = trained
    acts = S.collect(model, TEXTS[:40], 2)
    r = S.train_sae(None, 2, acts, S.SAETrainConfig(architecture=arch, expansion=2, k=8, batch_size=256,
                                                 epochs=3, lr=4e-3, l1_coefficient=1.0))
    assert r.metrics["after"]["mse"] < r.metrics["before"]["mse"]
    assert r.sae.meta["architecture"] == arch


def test_training_input_errors(tiny_qwen2):
    with pytest.raises((ValueError, TypeError), match="n_tokens"):  # TypeError: the shape checker of the tests
        S.train_sae(None, 1, torch.zeros(4, 2, 64))
    with pytest.raises(ValueError, match="width 32"):
        S.train_sae(tiny_qwen2, 1, torch.zeros(100, 32))
    with pytest.raises(ValueError, match="item 2"):
        S.train_sae(tiny_qwen2, 1, ["a", "b", 3])
    with pytest.raises(ValueError, match="architecture"):
        S.SAETrainConfig(architecture="gated")


def test_splice_loss_reports_clean_sae_and_zero(trained):
    model, res = trained
    r = S.splice_loss(model, res.sae, TEXTS[:4])
    ids = torch.tensor(model.tokenizer(TEXTS[0])["input_ids"])[None]
    with torch.no_grad():
        ref = float(model.model(input_ids=ids, labels=ids).loss)
    one = S.splice_loss(model, res.sae, TEXTS[:1])
    assert one["clean"] == pytest.approx(ref, rel=1e-5)
    assert r["n_tokens"] > 0 and np.isfinite(r["loss_recovered"]) and r["zero"] != r["clean"]


# ---- model diff ----------------------------------------------------------------------------------
def test_model_diff_identical_models_is_zero(trained, tiny_qwen2_dir, tmp_path):
    model, res = trained
    other = load_model(tiny_qwen2_dir)
    d = S.model_diff(model, other, res.sae, CONVS, top_k=5, n_examples=2, out=tmp_path / "diff")
    assert d.summary["max_abs_delta"] == 0.0
    assert torch.equal(d.mean_base, d.mean_finetuned) and d.mean_base.sum() > 0
    assert d.summary["n_tokens"] == sum(int(t.mask("response").sum())
                                        for t in S.token_activations(model, CONVS, 2, progress=False))
    rows = [json.loads(l) for l in (tmp_path / "diff" / "latents.jsonl").read_text().splitlines()]
    assert len(rows) == 10 and rows[0]["examples"]
    assert d.resid_base.shape == (len(CONVS), 64) and torch.equal(d.resid_base, d.resid_finetuned)


def _aligned_latent(sae, model, acts):
    """An often-active latent whose encoder reads its own decoder direction most strongly."""
    z = sae.encode(acts)
    freq = (z > 0).float().mean(0)
    W_enc = sae.sae.W_enc.detach().float()
    self_read = (W_enc.T * sae.W_dec.float()).sum(-1) / W_enc.norm(dim=0)
    score = torch.where(freq > 0.01, self_read, torch.tensor(-1e9))
    return int(score.argmax())


@pytest.mark.parametrize("plant_layer_offset", [0, 1])
def test_model_diff_ranks_planted_direction_first(trained, tiny_qwen2_dir, plant_layer_offset):
    model, res = trained
    s = res.sae
    acts = S.collect(model, CONVS, s.layer)
    j = _aligned_latent(s, model, acts)
    v = s.decoder_direction(j)
    finetuned = load_model(tiny_qwen2_dir)
    alpha = 2.0 * float(acts.norm(dim=-1).mean())
    with steering.add(finetuned, v, layers=[s.layer - plant_layer_offset], alpha=alpha):
        d = S.model_diff(model, finetuned, s, CONVS, direction=v, top_k=5, n_examples=1)
    assert d.increases[0].latent == j
    assert d.increases[0].cosine == pytest.approx(1.0, abs=1e-5)
    assert d.summary["most_aligned_latent"] == j and d.summary["most_aligned_latent_rank_in_diff"] == 0
    assert d.summary["resid_mean_shift_cosine_with_direction"] > 0.5
    assert d.ranking[0] == j and d.increases[0].delta > 0


def test_model_diff_needs_responses(trained):
    model, res = trained
    prompts = [[{"role": "user", "content": q}] for q in QUESTIONS]
    with pytest.raises(ValueError, match="no tokens selected"):
        S.model_diff(model, model, res.sae, prompts, positions="response")
    d = S.model_diff(model, model, res.sae, prompts, positions="prompt", top_k=3, n_examples=0)
    assert d.summary["n_tokens"] > len(prompts)


def test_steer_latents_with_random_controls(trained, tmp_path):
    model, res = trained
    ids = model.encode_prompt([{"role": "user", "content": QUESTIONS[0]}])[None]

    def metric(m):
        with torch.no_grad():
            return float(m.model(ids).logits[0, -1].log_softmax(-1)[5])

    rows = S.steer_latents(model, res.sae, [3, 7], metric, alphas=(0.0, 5.0), n_random=1, out=tmp_path)
    assert {r["target"] for r in rows} == {"latent_3", "latent_7", "random_0"}
    base = metric(model)
    zero = [r["metric"] for r in rows if r["alpha"] == 0.0]
    assert all(z == pytest.approx(base, abs=1e-5) for z in zero)
    assert any(abs(r["metric"] - base) > 1e-4 for r in rows if r["alpha"] == 5.0)
    assert S.steer_latents(model, res.sae, [3, 7], metric, alphas=(0.0, 5.0), n_random=1, out=tmp_path) == []
    assert metric(model) == base  # hooks removed


# ---- self-prediction -----------------------------------------------------------------------------
def test_predictive_latents_finds_the_informative_latent():
    g = torch.Generator().manual_seed(0)
    y = [i % 2 for i in range(120)]
    z = torch.rand(120, 50, generator=g)
    z[:, 17] += 0.8 * torch.tensor(y, dtype=torch.float32)
    z[:, 3] = 0.0  # dead latent never ranked
    r = SL.predictive_latents(None, _FakeSAE(), [None] * 120, y, latents=z, top_k=3)
    assert r["metric"] == "auroc" and r["top"][0]["latent"] == 17
    assert r["top"][0]["score_test"] > 0.9 and r["n_alive_latents"] == 49
    labels = ["a", "b", "c"] * 40
    z2 = torch.rand(120, 20, generator=g)
    z2[:, 5] += torch.tensor([{"a": 0.0, "b": 1.0, "c": 2.0}[l] for l in labels])
    r2 = SL.predictive_latents(None, _FakeSAE(), [None] * 120, labels, latents=z2, top_k=2)
    assert r2["metric"] == "eta2" and r2["top"][0]["latent"] == 5 and r2["top"][0]["score_test"] > 0.8
    with pytest.raises(ValueError, match="single class"):
        SL.predictive_latents(None, _FakeSAE(), [None] * 4, [1, 1, 1, 1], latents=z[:4])


class _FakeSAE(S.LayerSAE):
    def __init__(self):  # no sae-lens SAE behind it: predictive_latents only asks for urls
        pass

    def url(self, j):
        return None


def test_prompt_latents_and_prompt_diff(trained, tiny_qwen2_dir):
    model, res = trained
    prompts = [[{"role": "user", "content": q}] for q in QUESTIONS]
    z = SL.prompt_latents(model, res.sae, prompts)
    assert z.shape == (len(prompts), res.sae.d_sae)
    acts = torch.stack([model.model(input_ids=model.encode_prompt(p)[None], output_hidden_states=True)
                        .hidden_states[3][0, -1] for p in prompts]).detach()
    torch.testing.assert_close(z, res.sae.encode(acts), atol=1e-4, rtol=1e-4)
    same = SL.prompt_diff(model, load_model(tiny_qwen2_dir), res.sae, prompts)
    assert same["max_abs_delta"] == 0.0
