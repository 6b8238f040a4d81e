"""Regression tests for position-dependent steering inside `generate()` (issue 14).

transformers 5.24 renamed the KV-cache keyword its decoder layers receive; position detection that read
`past_key_values` from block 0's kwargs then saw no cache, so `positions="response"` never steered a
generated token and `"prompt"` steered every one, silently. Every test here checks, forward by forward,
that exactly the selected absolute positions move by `alpha * v` (and the others not at all), inside
`generate()` with greedy and sampled decoding, batched with left padding, and with n samples sharing one
prefill (`evals.sample`), and that a forward whose positions cannot be determined is refused.
"""

from __future__ import annotations

import warnings

import pytest
import torch

from introspect_mech import steering
from introspect_mech.evals.sampling import sample
from introspect_mech.positions import PositionError

LAYER = 1
MODES = ["prompt", "response", "last_prompt_and_response", "mask"]
PROMPTS = [[{"role": "user", "content": "I feel bored. What should I do this weekend?"}],
           [{"role": "user", "content": "Hi"}]]


class _Recorder:
    def __init__(self, model, layer):
        self.calls = []
        self.handle = model.layers[layer].register_forward_hook(
            lambda mod, args, out: self.calls.append((out[0] if isinstance(out, tuple) else out).detach().clone()))

    def remove(self):
        self.handle.remove()


def _selected(mode, past, seq, P, mask=None):
    """The expected 0/1 selection over a forward covering absolute positions [past, past + seq)."""
    pos = torch.arange(past, past + seq)
    if mode == "prompt":
        return pos < P
    if mode == "response":
        return pos >= P
    if mode == "last_prompt_and_response":
        return pos >= P - 1
    if mode == "mask":
        out = torch.zeros(seq, dtype=torch.bool)
        k = max(min(mask.shape[0] - past, seq), 0)
        out[:k] = mask[past:past + k]
        return out
    raise AssertionError(mode)


def _check(pre, post, starts, P, mode, v, alpha, mask=None):
    assert len(pre) == len(post) == len(starts) and len(pre) >= 3
    moved = []
    for a, b, past in zip(pre, post, starts):
        want = _selected(mode, past, a.shape[1], P, mask).float()[None, :, None] * (alpha * v)
        torch.testing.assert_close(b - a, want.expand_as(a), rtol=0, atol=1e-5)
        moved.append(bool(want.abs().sum() > 0))
    return moved


def _mask(P, n_new):
    m = torch.zeros(P + n_new, dtype=torch.bool)
    m[P - 2:P] = True
    m[P + 2] = True
    return m


@pytest.mark.parametrize("do_sample", [False, True], ids=["greedy", "sampled"])
@pytest.mark.parametrize("mode", MODES)
def test_positions_inside_generate_batched_left_padded(tiny_qwen3, mode, do_sample):
    m = tiny_qwen3
    m.tokenizer.padding_side = "left"
    enc = m.tokenizer([m.render(p, True) for p in PROMPTS], return_tensors="pt", padding=True,
                      add_special_tokens=False)
    ids, attn = enc["input_ids"], enc["attention_mask"]
    assert (attn[1] == 0).any()  # the second prompt really is left-padded
    P, n_new, alpha = ids.shape[1], 5, 3.0
    v = torch.randn(m.d_model, generator=torch.Generator().manual_seed(1))
    mask = _mask(P, n_new)
    positions = mask if mode == "mask" else mode
    pre = _Recorder(m, LAYER)
    with steering.add(m, v, layers=[LAYER], alpha=alpha, positions=positions):
        post = _Recorder(m, LAYER)
        torch.manual_seed(0)
        with torch.no_grad():
            m.model.generate(input_ids=ids, attention_mask=attn, max_new_tokens=n_new, min_new_tokens=n_new,
                             do_sample=do_sample, top_k=0 if do_sample else None,
                             pad_token_id=m.tokenizer.pad_token_id)
        post.remove()
    pre.remove()
    assert [a.shape[1] for a in pre.calls] == [P] + [1] * (n_new - 1)
    starts = [0] + [P + i for i in range(n_new - 1)]
    moved = _check(pre.calls, post.calls, starts, P, mode, v, alpha, mask)
    # the bug under 5.24: "response" steered no decode step and "prompt" steered all of them
    if mode in ("response", "last_prompt_and_response"):
        assert all(moved[1:])
    if mode == "prompt":
        assert moved[0] and not any(moved[1:])
    assert not steering_hooks_left(m)


@pytest.mark.parametrize("mode", MODES)
def test_positions_with_n_samples_sharing_one_prefill(tiny_qwen3, mode):
    """`evals.sample`: one manual prefill of all but the last prompt token per distinct prompt, then
    `generate` over n samples per prompt from that cache (batched, left-padded, sampled at T = 1)."""
    m = tiny_qwen3
    n_new, alpha = 4, 2.0
    v = torch.randn(m.d_model, generator=torch.Generator().manual_seed(2))
    P = max(len(m.encode_prompt(p)) for p in PROMPTS)
    mask = _mask(P, n_new)
    positions = mask if mode == "mask" else mode
    pre = _Recorder(m, LAYER)
    with steering.add(m, v, layers=[LAYER], alpha=alpha, positions=positions):
        post = _Recorder(m, LAYER)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            rows = sample(m, PROMPTS, n=3, max_new_tokens=n_new, temperature=1.0, seed=0, batch_size=16,
                          progress=False)
        post.remove()
    pre.remove()
    assert len(rows) == 6
    assert not [w for w in caught if "past_key_values" in str(w.message)]  # current cache API, no warning
    seqs = [a.shape[1] for a in pre.calls]
    assert seqs[:2] == [P - 1, 1] and all(s == 1 for s in seqs[2:])
    assert pre.calls[0].shape[0] == 2 and pre.calls[1].shape[0] == 6  # one prefill per prompt, 3 rows each
    starts = [0, P - 1] + [P + i for i in range(len(seqs) - 2)]
    moved = _check(pre.calls, post.calls, starts, P, mode, v, alpha, mask)
    if mode == "response":
        assert moved == [False, False] + [True] * (len(seqs) - 2)
    if mode == "last_prompt_and_response":
        assert moved == [False] + [True] * (len(seqs) - 1)  # the last prompt token is fed by generate
    if mode == "prompt":
        assert moved == [True, True] + [False] * (len(seqs) - 2)
    assert not steering_hooks_left(m)


def test_upstream_rule_last_position_of_every_forward(tiny_qwen3):
    """`last_prompt_and_response` inside generate == adding to the last position of every forward (the
    persona-vectors steerer), checked against a hand-written hook doing exactly that."""
    m = tiny_qwen3
    ids = m.encode_prompt(PROMPTS[0]).unsqueeze(0)
    v = torch.randn(m.d_model, generator=torch.Generator().manual_seed(3))
    kw = dict(max_new_tokens=6, min_new_tokens=6, do_sample=False, output_logits=True,
              return_dict_in_generate=True, pad_token_id=m.tokenizer.pad_token_id)

    def upstream(mod, args, out):
        h = out[0] if isinstance(out, tuple) else out
        h[:, -1, :] += 4.0 * v
        return None

    handle = m.layers[LAYER].register_forward_hook(upstream)
    with torch.no_grad():
        ref = m.model.generate(input_ids=ids, **kw)
    handle.remove()
    with steering.add(m, v, layers=[LAYER], alpha=4.0, positions="last_prompt_and_response"), torch.no_grad():
        ours = m.model.generate(input_ids=ids, **kw)
    assert torch.equal(ref.sequences, ours.sequences)
    for a, b in zip(ref.logits, ours.logits):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-5)


def test_undeterminable_positions_are_refused(tiny_qwen3):
    """A KV cache hidden from block 0 (as if a future release passed it under another type) leaves a
    one-token decode step whose absolute position is unknown: PositionError, never a guess."""
    m = tiny_qwen3
    ids = m.encode_prompt(PROMPTS[0]).unsqueeze(0)
    from transformers.cache_utils import Cache

    def hide_cache(mod, args, kwargs):
        return args, {k: (None if isinstance(val, Cache) else val) for k, val in kwargs.items()}

    handle = m.layers[0].register_forward_pre_hook(hide_cache, with_kwargs=True)
    try:
        with steering.add(m, torch.randn(m.d_model), layers=[LAYER], alpha=1.0, positions="response"):
            with pytest.raises(PositionError, match="cannot be determined"), torch.no_grad():
                m.model.generate(input_ids=ids, max_new_tokens=3, min_new_tokens=3, do_sample=False,
                                 pad_token_id=m.tokenizer.pad_token_id)
    finally:
        handle.remove()
    assert not steering_hooks_left(m)


def test_prompt_scope_is_a_no_op_without_steering(tiny_qwen3):
    m = tiny_qwen3
    ids = m.encode_prompt(PROMPTS[0]).unsqueeze(0)
    with torch.no_grad():
        a = m.model(ids).logits
        with steering.prompt_scope(m, ids.shape[1]):
            b = m.model(ids).logits
    assert torch.equal(a, b)


def steering_hooks_left(m) -> bool:
    return any(layer._forward_hooks or layer._forward_pre_hooks for layer in m.layers) or \
        "generate" in m.base_model.__dict__
