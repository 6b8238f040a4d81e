"""Activation caching equals each decoder block's output, for every position mode."""

from __future__ import annotations

import pytest
import torch

from introspect_mech.activations import LazyActivations, cache, resolve_layers, tokenize

CONVS = [
    [{"role": "user", "content": "What is 2 + 2?"}, {"role": "assistant", "content": "It is 4."}],
    [{"role": "system", "content": "You are cautious."}, {"role": "user", "content": "Option A or B?"},
     {"role": "assistant", "content": "I prefer safe options, so A. Never mix bleach and ammonia."}],
    [{"role": "user", "content": "I feel bored."}, {"role": "assistant", "content": "Read a book about Paris."},
     {"role": "user", "content": "And then?"}, {"role": "assistant", "content": "Take two aspirin."}],
]


def reference(model, conv, positions):
    """Block outputs from an independent forward: hidden_states[1:-1] plus the final norm's input."""
    ct = model.tokenize_chat(conv)
    ids, mask = ct.input_ids, ct.assistant_mask
    norm = model.base_model.model.norm
    captured = {}
    h = norm.register_forward_pre_hook(lambda m, a: captured.__setitem__("x", a[0]))
    try:
        with torch.no_grad():
            out = model.model(input_ids=ids[None], output_hidden_states=True)
    finally:
        h.remove()
    blocks = torch.stack(list(out.hidden_states[1:-1]) + [captured["x"]])[:, 0]  # [layer, seq, d]
    idx = mask.nonzero().flatten()
    if positions == "response_mean":
        return blocks[:, mask].mean(1)
    if positions == "response_last":
        return blocks[:, idx[-1]]
    if positions == "last_prompt":
        return blocks[:, idx[0] - 1]
    return blocks


@pytest.mark.parametrize("positions", ["response_mean", "response_last", "last_prompt", "all"])
@pytest.mark.parametrize("which", ["tiny_qwen2", "tiny_qwen3"])
def test_cache_equals_block_outputs(which, positions, request):
    model = request.getfixturevalue(which)
    acts = cache(model, CONVS, positions=positions, batch_size=2, progress=False)
    n_layers, d = model.n_layers, model.d_model
    if positions == "all":
        assert acts.shape[:2] == (3, n_layers) and acts.shape[-1] == d
    else:
        assert acts.shape == (3, n_layers, d)
    for i, conv in enumerate(CONVS):
        ref = reference(model, conv, positions)
        got = acts[i]
        if positions == "all":
            got, pad = got[:, : ref.shape[1]], got[:, ref.shape[1]:]
            assert torch.all(pad == 0)
        torch.testing.assert_close(got, ref, atol=1e-6, rtol=1e-5)


def test_last_block_is_not_output_hidden_states_last(tiny_qwen3):
    """The final-norm gotcha: our last layer is the block output, HF's last hidden state is normed."""
    acts = cache(tiny_qwen3, CONVS[:1], positions="response_last", progress=False)
    ct = tiny_qwen3.tokenize_chat(CONVS[0])
    with torch.no_grad():
        hs = tiny_qwen3.model(input_ids=ct.input_ids[None], output_hidden_states=True).hidden_states
    last = ct.assistant_mask.nonzero().flatten()[-1]
    assert not torch.allclose(acts[0, -1], hs[-1][0, last], atol=1e-3)
    torch.testing.assert_close(acts[0, -2], hs[-2][0, last], atol=1e-6, rtol=1e-5)


def test_layer_subset_stops_early_and_skips_lm_head(tiny_qwen2):
    model = tiny_qwen2
    ran = []
    hooks = [blk.register_forward_hook(lambda m, i, o, k=k: ran.append(k)) for k, blk in enumerate(model.layers)]
    hooks.append(model.base_model.lm_head.register_forward_hook(lambda m, i, o: ran.append("lm_head")))
    try:
        sub = cache(model, CONVS, layers=[1, 0], progress=False)
    finally:
        for h in hooks:
            h.remove()
    assert set(ran) == {0, 1}  # blocks 2, 3 and the lm_head never ran
    full = cache(model, CONVS, progress=False)
    torch.testing.assert_close(sub, full[:, :2])
    torch.testing.assert_close(cache(model, CONVS, layers=-1, progress=False)[:, 0], full[:, -1])


def test_prompt_only_last_prompt_matches_full_conversation(tiny_qwen3):
    prompts = [c[:-1] for c in CONVS]
    a = cache(tiny_qwen3, prompts, positions="last_prompt", progress=False)
    b = cache(tiny_qwen3, CONVS, positions="last_prompt", progress=False)
    torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)


def test_batching_does_not_change_results(tiny_qwen2):
    one = cache(tiny_qwen2, CONVS, batch_size=1, progress=False)
    many = cache(tiny_qwen2, CONVS, batch_size=3, progress=False)
    torch.testing.assert_close(one, many, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("positions", ["response_mean", "all"])
def test_out_streams_shards_and_reloads_lazily(tiny_qwen3, tmp_path, positions):
    convs = CONVS * 3  # 9 conversations, shards of 4 -> 3 shards
    mem = cache(tiny_qwen3, convs, positions=positions, batch_size=2, progress=False)
    lazy = cache(tiny_qwen3, convs, positions=positions, batch_size=2, out=tmp_path / "c", shard_size=4,
                 progress=False)
    assert isinstance(lazy, LazyActivations) and len(lazy) == 9
    assert sorted(p.name for p in (tmp_path / "c").glob("shard_*.safetensors")) == [
        "shard_00000.safetensors", "shard_00001.safetensors", "shard_00002.safetensors"]
    torch.testing.assert_close(lazy.load(), mem)
    if positions == "all":
        n_tok = len(tiny_qwen3.tokenize_chat(convs[4]).input_ids)
        assert lazy[4].shape == (tiny_qwen3.n_layers, n_tok, tiny_qwen3.d_model)
        torch.testing.assert_close(lazy[4], mem[4, :, :n_tok])
    else:
        torch.testing.assert_close(lazy[5], mem[5])
        torch.testing.assert_close(lazy[torch.tensor(5)], mem[5])
        torch.testing.assert_close(lazy[-1], mem[8])
        torch.testing.assert_close(lazy[[7, 1]], mem[[7, 1]])
    # resume: delete one shard, rerun, only it is recomputed; a different input set is refused
    (tmp_path / "c" / "shard_00001.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="shards"):
        LazyActivations(tmp_path / "c")
    again = cache(tiny_qwen3, convs, positions=positions, out=tmp_path / "c", shard_size=4, progress=False)
    torch.testing.assert_close(again.load(), mem)
    with pytest.raises(ValueError, match=r"bindings\.cache: .*conversations_sha256.*--overwrite"):
        cache(tiny_qwen3, convs[:5], positions=positions, out=tmp_path / "c", shard_size=4, progress=False)


def test_bad_input_is_named_before_work(tiny_qwen2):
    with pytest.raises(ValueError, match="conversation 1"):
        cache(tiny_qwen2, [CONVS[0], [{"role": "user"}]], progress=False)
    with pytest.raises(ValueError, match="conversation 0: positions='response_mean' needs an assistant"):
        cache(tiny_qwen2, [[{"role": "user", "content": "hi"}]], progress=False)
    with pytest.raises((ValueError, TypeError), match="positions"):  # TypeError: the tests' shape checker
        tokenize(tiny_qwen2, CONVS, positions="middle")
    with pytest.raises(ValueError, match="out of range"):
        resolve_layers([4], 4)


@pytest.mark.slow
def test_embedded_cache_equals_block_outputs(embedded):
    acts = cache(embedded, CONVS, positions="response_mean", batch_size=3, progress=False)
    for i, conv in enumerate(CONVS):
        torch.testing.assert_close(acts[i], reference(embedded, conv, "response_mean"), atol=1e-4, rtol=1e-4)
