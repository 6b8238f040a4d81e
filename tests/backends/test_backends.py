"""nnsight and TransformerLens backends give the same cached activations as `activations.cache`."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from introspect_mech.activations import cache
from introspect_mech.backends import cache_nnsight, cache_transformer_lens, to_nnsight, to_transformer_lens

CONVS = [
    [{"role": "user", "content": "What is 2 + 2?"}, {"role": "assistant", "content": "It is 4."}],
    [{"role": "system", "content": "You are cautious."}, {"role": "user", "content": "Option A or B?"},
     {"role": "assistant", "content": "I prefer safe options, so A. Never mix bleach and ammonia."}],
    [{"role": "user", "content": "I feel bored."}, {"role": "assistant", "content": "Read a book about Paris."}],
]


def snapshot(model: nn.Module):
    return ({k: v.detach().clone() for k, v in model.state_dict().items()},
            {n: type(m) for n, m in model.named_modules()})


def assert_untouched(model: nn.Module, snap):
    state, types = snap
    now = model.state_dict()
    assert now.keys() == state.keys()
    for k, v in state.items():
        assert torch.equal(now[k], v), k
    assert {n: type(m) for n, m in model.named_modules()} == types


@pytest.mark.parametrize("positions", ["response_mean", "last_prompt", "all"])
@pytest.mark.parametrize("which", ["tiny_qwen2", "tiny_qwen3"])
def test_backends_agree(which, positions, request):
    model = request.getfixturevalue(which)
    ref = cache(model, CONVS, positions=positions, batch_size=2, progress=False)
    nn_acts = cache_nnsight(to_nnsight(model), CONVS, positions=positions, batch_size=2, tokenizer_model=model)
    torch.testing.assert_close(nn_acts, ref, atol=1e-6, rtol=1e-5)
    snap = snapshot(model.model)
    bridge = to_transformer_lens(model)
    tl_acts = cache_transformer_lens(bridge, CONVS, positions=positions, batch_size=2, tokenizer_model=model)
    torch.testing.assert_close(tl_acts, ref, atol=1e-6, rtol=1e-5)
    assert_untouched(model.model, snap)


def test_layer_subset_and_stop(tiny_qwen3):
    ref = cache(tiny_qwen3, CONVS, layers=[0, 2], progress=False)
    got = cache_nnsight(to_nnsight(tiny_qwen3), CONVS, layers=[2, 0], tokenizer_model=tiny_qwen3)
    torch.testing.assert_close(got, ref, atol=1e-6, rtol=1e-5)
    got = cache_transformer_lens(to_transformer_lens(tiny_qwen3), CONVS, layers=[0, 2], tokenizer_model=tiny_qwen3)
    torch.testing.assert_close(got, ref, atol=1e-6, rtol=1e-5)


def test_adapter_goes_through_and_user_model_untouched(tiny_qwen2_dir, tmp_path):
    """A LoRA adapter (nonzero B) changes activations; nnsight and TL see it; the user's PeftModel is
    left exactly as it was and still runs the same HF forward."""
    from peft import LoraConfig, get_peft_model

    from introspect_mech import load_model

    model = load_model(tiny_qwen2_dir)
    base_acts = cache(model, CONVS, progress=False)
    model.model = get_peft_model(model.model, LoraConfig(r=4, target_modules=["q_proj", "v_proj", "down_proj"]))
    torch.manual_seed(0)
    for n, p in model.model.named_parameters():
        if "lora_B" in n:
            nn.init.normal_(p, std=0.5)
    model.model.eval()
    ref = cache(model, CONVS, progress=False)
    assert (ref - base_acts).abs().max() > 1e-3  # the adapter matters
    ids = model.tokenize_chat(CONVS[1]).input_ids[None]
    with torch.no_grad():
        logits_before = model.model(input_ids=ids).logits
    snap = snapshot(model.model)
    bridge = to_transformer_lens(model)
    torch.testing.assert_close(cache_transformer_lens(bridge, CONVS, tokenizer_model=model), ref, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(cache_nnsight(to_nnsight(model), CONVS, tokenizer_model=model), ref, atol=1e-6, rtol=1e-5)
    assert_untouched(model.model, snap)
    with torch.no_grad():
        torch.testing.assert_close(model.model(input_ids=ids).logits, logits_before)
    assert hasattr(model.model, "peft_config") and model.has_adapter


def test_cache_nnsight_needs_tokenizer_model(tiny_qwen2):
    with pytest.raises(ValueError, match="tokenizer_model"):
        cache_nnsight(to_nnsight(tiny_qwen2), CONVS)


@pytest.mark.slow
def test_backends_agree_on_embedded(embedded):
    snap = snapshot(embedded.model)
    ref = cache(embedded, CONVS, batch_size=3, progress=False)
    nn_acts = cache_nnsight(to_nnsight(embedded), CONVS, batch_size=3, tokenizer_model=embedded)
    tl_acts = cache_transformer_lens(to_transformer_lens(embedded), CONVS, batch_size=3, tokenizer_model=embedded)
    torch.testing.assert_close(nn_acts, ref, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(tl_acts, ref, atol=1e-4, rtol=1e-4)
    assert_untouched(embedded.model, snap)
