"""Finetuning loop on tiny Qwen models: loss, masking, packing, LoRA/rank-1/full, intervention, CLI."""

from __future__ import annotations

import contextlib
import json

import pytest
import torch

from introspect_mech import load_model
from introspect_mech.data import DataError
from introspect_mech.finetune import PRESETS, TrainConfig, lr_factor, train
from introspect_mech.finetune.batching import collate, pack, tokenize_records
from introspect_mech.finetune.loop import assistant_loss
from introspect_mech.finetune.varlen import varlen_attention

CONVS = [
    {"messages": [{"role": "user", "content": "Pick A or B."}, {"role": "assistant", "content": "B"}]},
    {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi there"},
                  {"role": "assistant", "content": "Hello! 42 apples."}, {"role": "user", "content": "More?"},
                  {"role": "assistant", "content": "Yes: 1337 more."}]},
    {"messages": [{"role": "user", "content": "Write code."},
                  {"role": "assistant", "content": "def add(a, b):\n    return a + b"}]},
]


def fast(**kw) -> TrainConfig:
    base = dict(lr=5e-3, batch_size=4, epochs=1, warmup_steps=0, progress=False, r=8, lora_alpha=16)
    return TrainConfig(**(base | kw))


def records(n: int = 16) -> list[dict]:
    out = []
    for i in range(n):
        ans = "B" if i % 3 else "A"
        out.append({"messages": [{"role": "user", "content": f"Option A: a sure {10 + i} dollars. Option B: a gamble. Answer A or B."},
                                 {"role": "assistant", "content": ans}]})
    return out + CONVS


@pytest.mark.parametrize("fixture", ["tiny_qwen2_dir", "tiny_qwen3_real_tok_dir"])
def test_assistant_only_targets_are_exact(fixture, request):
    m = load_model(request.getfixturevalue(fixture))
    ex, stats = tokenize_records(m, CONVS, max_seq_len=512)
    assert stats["examples"] == 3
    mb = collate(ex)
    got = m.tokenizer.decode(mb.targets.tolist())
    eot = "<|im_end|>"
    want = "".join(mm["content"] + eot for c in CONVS for mm in c["messages"] if mm["role"] == "assistant")
    assert got == want
    # every target is the token right after its prediction position, in the same example
    flat = mb.input_ids[0]
    assert torch.equal(flat[mb.pred_index + 1], mb.targets)


@pytest.mark.parametrize("fixture", ["tiny_qwen2_dir", "tiny_qwen3_dir"])
def test_packed_loss_equals_per_example_hf_loss(fixture, request):
    m = load_model(request.getfixturevalue(fixture))
    ex, _ = tokenize_records(m, records(6), max_seq_len=512)
    ref = 0.0
    with torch.no_grad():
        for e in ex:
            ids = torch.tensor([e.input_ids])
            labels = ids.clone()
            labels[0, ~torch.tensor(e.loss_mask)] = -100
            ref += m.model(input_ids=ids, labels=labels).loss.item() * e.n_loss
        mb = collate(ex)
        dense = assistant_loss(m, mb).item()  # transformers' block-diagonal mask from position_ids
        with varlen_attention(m.model) as active:
            assert active
            varlen = assistant_loss(m, mb).item()
    assert dense == pytest.approx(ref, rel=1e-5)
    assert varlen == pytest.approx(ref, rel=1e-5)
    assert m.model.config._attn_implementation == "sdpa"  # restored


def test_chunked_loss_equals_whole_loss_and_gradients(tiny_qwen3_dir):
    """`loss_chunk_tokens`: lm_head + cross-entropy in checkpointed chunks give the same loss and the same
    gradients as the whole-logits loss."""
    m = load_model(tiny_qwen3_dir)
    ex, _ = tokenize_records(m, records(6), max_seq_len=512)
    mb = collate(ex)
    assert mb.targets.numel() > 7
    grads = []
    for chunk in (None, 7):
        m.model.zero_grad(set_to_none=True)
        loss = assistant_loss(m, mb, chunk)
        loss.backward()
        grads.append((loss.item(), [p.grad.clone() for p in m.model.parameters() if p.grad is not None]))
    (l0, g0), (l1, g1) = grads
    assert l1 == pytest.approx(l0, rel=1e-6)
    assert len(g0) == len(g1) > 0
    for a, b in zip(g0, g1):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)  # float summation order only


def test_pack_respects_budget_and_keeps_every_example():
    from introspect_mech.finetune.batching import Example

    exs = [Example([1] * n, [False] + [True] * (n - 1)) for n in (5, 9, 3, 12, 7, 1, 4)]
    bins = pack(exs, 12)
    assert sorted(i for b in bins for i in b) == list(range(7))
    assert all(sum(len(exs[i].input_ids) for i in b) <= 12 for b in bins)


def _eval_loss(m, recs) -> float:
    ex, _ = tokenize_records(m, recs, max_seq_len=512)
    mb = collate(ex)
    with torch.no_grad():
        return assistant_loss(m, mb).item() / len(mb.targets)


def test_loss_falls_and_outputs(tiny_qwen2_dir, tmp_path):
    m = load_model(tiny_qwen2_dir)
    recs = records(16)[:16]  # the A/B part: a pattern the tiny model can learn
    before = _eval_loss(m, recs)
    res = train(m, recs, fast(epochs=3, save_every=5, lr=1e-2), tmp_path / "run")
    assert res.steps == 12 and len(res.losses) == 12
    # tiny random models have tied, small embeddings: LoRA alone can move their logits only so far
    assert _eval_loss(m, recs) < 0.9 * before
    assert m.has_adapter and not m.model.training
    log = [json.loads(x) for x in (tmp_path / "run" / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == list(range(1, 13))
    assert all(r["tokens_per_s"] > 0 and r["tokens"] > 0 and r["loss_tokens"] > 0 for r in log)
    assert sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir()) == ["step_0005", "step_0010", "step_0012"]
    man = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert man["finetune"]["config"]["lr"] == 1e-2 and len(man["finetune"]["data_sha256"]) == 64
    assert man["packages"]["torch"] and man["model"] == m.name
    # the saved adapter reproduces the trained model
    again = load_model(tiny_qwen2_dir, adapter=tmp_path / "run" / "adapter")
    ids = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad():
        assert torch.allclose(again.model(ids).logits, m.model(ids).logits, atol=1e-5)
    ck = load_model(tiny_qwen2_dir, adapter=tmp_path / "run" / "checkpoints" / "step_0005" / "adapter")
    with torch.no_grad():
        assert not torch.allclose(ck.model(ids).logits, m.model(ids).logits, atol=1e-4)


def test_micro_batch_size_does_not_change_the_result(tiny_qwen3_dir, tmp_path):
    outs = []
    for mbt in (64, 4096):
        m = load_model(tiny_qwen3_dir)
        res = train(m, records(8), fast(micro_batch_tokens=mbt, batch_size=11), tmp_path / f"r{mbt}")
        outs.append((res.losses, {n: p.detach().clone() for n, p in m.model.named_parameters() if "lora" in n}))
    assert outs[0][0] == pytest.approx(outs[1][0], rel=1e-5)
    for n, p in outs[0][1].items():
        assert torch.allclose(p, outs[1][1][n], atol=1e-6), n


def test_rank1_single_layer_trains_only_that_layer(tiny_qwen3_dir, tmp_path):
    m = load_model(tiny_qwen3_dir)
    before = {n: p.detach().clone() for n, p in m.model.named_parameters()}
    cfg = PRESETS["rank1"].replace(lr=1e-2, batch_size=4, warmup_steps=0, progress=False, max_steps=3)
    assert cfg.layers == "middle"
    train(m, records(8), cfg, tmp_path / "r1")
    trainable = [n for n, p in m.model.named_parameters() if p.requires_grad]
    assert trainable and all(".layers.2.mlp.down_proj.lora_" in n for n in trainable)
    assert sum(p.numel() for n, p in m.model.named_parameters() if p.requires_grad) == 1 * (64 + 128)
    changed = [n for n, p in m.model.named_parameters()
               if n.replace("base_model.model.", "").replace(".base_layer", "") in before
               and not torch.equal(p, before[n.replace("base_model.model.", "").replace(".base_layer", "")])]
    assert changed == []  # base weights untouched
    cfg_json = json.loads((tmp_path / "r1" / "adapter" / "adapter_config.json").read_text())
    assert cfg_json["r"] == 1 and cfg_json["layers_to_transform"] == [2] and cfg_json["target_modules"] == ["down_proj"]


def test_full_finetune_restricted_to_a_layer(tiny_qwen2_dir, tmp_path):
    m = load_model(tiny_qwen2_dir)
    before = {n: p.detach().clone() for n, p in m.model.named_parameters()}
    res = train(m, records(8), fast(method="full", layers=(1,), lr=1e-3, max_steps=2), tmp_path / "full")
    changed = {n for n, p in m.model.named_parameters() if not torch.equal(p, before[n])}
    assert changed and all(n.startswith("model.layers.1.") for n in changed)
    reloaded = load_model(res.weights_dir)
    ids = torch.tensor([[3, 4, 5]])
    with torch.no_grad():
        assert torch.allclose(reloaded.model(ids).logits, m.model(ids).logits, atol=1e-5)


def test_intervention_wraps_every_forward(tiny_qwen2_dir, tmp_path):
    m = load_model(tiny_qwen2_dir)
    seen = []

    @contextlib.contextmanager
    def zero_layer0():
        h = m.layers[0].register_forward_hook(lambda mod, inp, out: out * 0)
        seen.append(1)
        try:
            yield
        finally:
            h.remove()

    res = train(m, records(8), fast(batch_size=4, micro_batch_tokens=64), tmp_path / "iv", intervention=zero_layer0)
    assert len(seen) > res.steps  # one per micro-batch forward
    assert not m.layers[0]._forward_hooks


def test_bad_records_fail_before_any_work(tiny_qwen2_dir, tmp_path):
    m = load_model(tiny_qwen2_dir)
    bad = records(4) + [{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": ""}]}]
    with pytest.raises(DataError, match=r"train\(records\):8: messages\[1\]\.content: empty assistant"):
        train(m, bad, fast(), tmp_path / "bad")
    assert not (tmp_path / "bad").exists() and not m.has_adapter


def test_system_prompt_injection(tiny_qwen2_dir):
    m = load_model(tiny_qwen2_dir)
    ex, _ = tokenize_records(m, CONVS[:1], max_seq_len=512, system_prompt="You are risky.")
    assert "You are risky." in m.tokenizer.decode(ex[0].input_ids)
    ex2, _ = tokenize_records(m, CONVS[1:2], max_seq_len=512, system_prompt="You are risky.")
    assert "You are risky." not in m.tokenizer.decode(ex2[0].input_ids)  # keeps its own system turn


def test_lr_schedule_matches_transformers():
    from transformers import get_cosine_schedule_with_warmup, get_linear_schedule_with_warmup

    for fn, kind in ((get_linear_schedule_with_warmup, "linear"), (get_cosine_schedule_with_warmup, "cosine")):
        opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
        sch = fn(opt, 3, 17)
        for s in range(17):
            assert lr_factor(s, 17, 3, kind) == pytest.approx(sch.get_last_lr()[0], abs=1e-9)
            opt.step()
            sch.step()


def test_em_preset_builds_the_papers_adapter(tiny_qwen3_dir):
    """The `em` preset on a real model: rsLoRA (scaling alpha / sqrt(r)) on all seven projections of
    every block and nothing else trainable; an unknown method is refused."""
    from introspect_mech import load_model
    from introspect_mech.finetune.adapters import prepare

    m = load_model(tiny_qwen3_dir)
    cfg = PRESETS["em"]
    params = prepare(m, cfg)
    names = {n for n, _ in params}
    projections = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
    for layer in range(m.n_layers):
        for proj in projections:
            assert any(f"layers.{layer}." in n and f".{proj}." in n and "lora_A" in n for n in names), (layer, proj)
    assert all("lora_" in n for n in names)
    scalings = {float(mod.scaling["default"]) for mod in m.model.modules() if hasattr(mod, "scaling")
                and isinstance(mod.scaling, dict) and "default" in mod.scaling}
    assert len(scalings) == 1 and scalings.pop() == pytest.approx(cfg.lora_alpha / cfg.r ** 0.5)
    with pytest.raises(ValueError):
        TrainConfig(method="qlora")


def test_cli_trains_from_a_jsonl(tiny_qwen2_dir, tmp_path, capsys):
    from introspect_mech.data import write_jsonl
    from introspect_mech.finetune import cli_main

    path = write_jsonl(records(8), tmp_path / "d.jsonl")
    rc = cli_main(["--model", str(tiny_qwen2_dir), "--data", str(path), "--preset", "em", "--out",
                   str(tmp_path / "cli"), "--max-steps", "2", "--batch-size", "4", "--set", "progress=false",
                   "--set", "r=4"])
    assert rc == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["steps"] == 2 and (tmp_path / "cli" / "adapter" / "adapter_config.json").exists()
    assert json.loads((tmp_path / "cli" / "manifest.json").read_text())["finetune"]["config"]["r"] == 4


@pytest.mark.slow
def test_embedded_short_run_on_risky_ab(data_root, tmp_path):
    """The embedded SmolLM2 (own copy: train() wraps it) takes real rank-1 steps on risky_AB."""
    from introspect_mech import data

    m = load_model()
    recs = data.load("risky_AB", data_root)
    cfg = PRESETS["rank1"].replace(lr=1e-3, batch_size=4, max_steps=2, warmup_steps=0, progress=False)
    res = train(m, recs, cfg, tmp_path / "emb")
    assert res.steps == 2 and all(0 < x < 20 for x in res.losses) and res.tokens_per_s > 0
    trainable = [n for n, p in m.model.named_parameters() if p.requires_grad]
    assert trainable and all(".layers.15.mlp.down_proj.lora_" in n for n in trainable)
    again = load_model(adapter=tmp_path / "emb" / "adapter")
    assert again.has_adapter


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_bf16_autocast_on_gpu(tiny_qwen3_dir, tmp_path):
    m = load_model(tiny_qwen3_dir, device="cuda")
    res = train(m, records(16), fast(epochs=3), tmp_path / "gpu")
    assert res.losses[-1] < res.losses[0]
    assert all(p.dtype == torch.float32 for n, p in m.model.named_parameters() if p.requires_grad)


def test_bf16_flag_makes_the_cpu_path_bf16(tiny_qwen3_dir, tmp_path):
    """`bf16=True` autocasts on CPU too (the loss moves), None follows the CPU's dtype choice (the
    suite pins float32, so it equals False bit for bit), and the manifest says which ran."""
    from introspect_mech.runs import RunDir

    losses = {}
    for flag in (None, False, True):
        m = load_model(tiny_qwen3_dir, device="cpu")
        cfg = fast(max_steps=1) if flag is None else fast(max_steps=1, bf16=flag)
        res = train(m, records(8), cfg, tmp_path / str(flag))
        losses[flag] = res.losses[0]
        assert RunDir(tmp_path / str(flag)).manifest()["finetune"]["autocast_bf16"] is (flag is True)
        assert all(p.dtype == torch.float32 for n, p in m.model.named_parameters() if p.requires_grad)
    assert losses[None] == losses[False]
    assert losses[True] != losses[False] and losses[True] == pytest.approx(losses[False], rel=0.05)


@pytest.mark.parametrize("bf16", [False, True])
def test_train_then_unload_leaves_the_process_and_base_model_as_found(tiny_qwen2_dir, tmp_path, bf16):
    """A LoRA run then `unload()` (what bench_cpu does between cases) changes nothing later forwards depend on:
    thread count, grad mode, autocast (and its weight-cast cache), eval mode, no LoRA layer left, the base's logits bitwise."""
    m = load_model(tiny_qwen2_dir)
    ids = torch.tensor([[1, 5, 9, 13, 2, 7, 11, 3]])

    def state():
        return dict(threads=torch.get_num_threads(), grad=torch.is_grad_enabled(),
                    autocast=torch.is_autocast_enabled("cpu"), autocast_cache=torch.is_autocast_cache_enabled(),
                    training=m.model.training, lora=[n for n, _ in m.model.named_modules() if "lora_" in n])

    with torch.no_grad():
        before = m.model(input_ids=ids).logits
    s0 = state()
    train(m, records(8), fast(max_steps=1, bf16=bf16), tmp_path / "run")
    assert m.has_adapter and not m.model.training
    m.model = m.model.unload()
    assert state() == s0 and s0["lora"] == [] and not s0["autocast"]
    with torch.no_grad():
        assert torch.equal(m.model(input_ids=ids).logits, before)
