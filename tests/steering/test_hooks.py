"""Steering hooks on tiny Qwen: exact add, zero component after ablate, clamp, bit-for-bit restore,
positions in generate (KV cache), composition, train-time gradients, random controls, errors."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from introspect_mech import steering
from introspect_mech.direction import Direction
from introspect_mech.kv_cache import cache_kwargs, output_cache

MSGS = [{"role": "user", "content": "I feel bored. What should I do?"}]


def _ids(model, msgs=MSGS):
    return model.encode_prompt(msgs).unsqueeze(0)


def _logits(model, ids):
    with torch.no_grad():
        return model.model(ids).logits


def _unit(d, seed=0):
    g = torch.Generator().manual_seed(seed)
    v = torch.randn(d, generator=g)
    return v / v.norm()


class Recorder:
    """Records (clones of) block outputs for every forward call; register order decides what it sees."""

    def __init__(self, model, layers):
        self.calls = {l: [] for l in layers}
        self.handles = [model.layers[l].register_forward_hook(self._mk(l)) for l in layers]

    def _mk(self, l):
        def hook(mod, args, out):
            h = out[0] if isinstance(out, tuple) else out
            self.calls[l].append(h.detach().clone())
        return hook

    def remove(self):
        for h in self.handles:
            h.remove()


def _no_hooks(model):
    return (all(not l._forward_hooks and not l._forward_pre_hooks for l in model.layers)
            and "generate" not in model.base_model.__dict__)


@pytest.mark.parametrize("fixture", ["tiny_qwen2", "tiny_qwen3"])
def test_add_is_exact(fixture, request):
    model = request.getfixturevalue(fixture)
    ids, v, alpha = _ids(model), torch.randn(model.d_model), 3.5
    rec = Recorder(model, range(model.n_layers))
    _logits(model, ids)
    orig = {l: c[0] for l, c in rec.calls.items()}
    rec.remove()
    with steering.add(model, v, layers=[1], alpha=alpha):
        rec = Recorder(model, range(model.n_layers))  # registered after the steering hook: sees its output
        _logits(model, ids)
        rec.remove()
    assert torch.equal(rec.calls[1][0], orig[1] + alpha * v)  # raw vector used as given, exactly
    assert torch.equal(rec.calls[0][0], orig[0])  # layers before are untouched
    assert not torch.allclose(rec.calls[2][0], orig[2])  # and the change propagates
    assert _no_hooks(model)


def test_add_direction_uses_unit_vectors(tiny_qwen2):
    m = tiny_qwen2
    raw = torch.randn(m.n_layers, m.d_model) * 5
    d = Direction(raw / raw.norm(dim=-1, keepdim=True), raw.norm(dim=-1), list(range(m.n_layers)))
    ids = _ids(m)
    rec = Recorder(m, [2])
    _logits(m, ids)
    rec.remove()
    with steering.add(m, d, layers=[2], alpha=2.0):
        rec2 = Recorder(m, [2])
        _logits(m, ids)
        rec2.remove()
    torch.testing.assert_close(rec2.calls[2][0], rec.calls[2][0] + 2.0 * d.vectors[2], rtol=0, atol=1e-5)


def test_ablate_zero_component_every_layer(tiny_qwen3):
    m = tiny_qwen3
    v = torch.randn(m.d_model) * 7  # not unit: ablate normalises
    u = v / v.norm()
    ids = _ids(m)
    rec = Recorder(m, range(m.n_layers))
    _logits(m, ids)
    rec.remove()
    before = torch.stack([rec.calls[l][0] @ u for l in range(m.n_layers)])
    with steering.ablate(m, v):
        rec = Recorder(m, range(m.n_layers))
        _logits(m, ids)
        rec.remove()
    for l in range(m.n_layers):
        h = rec.calls[l][0]
        assert (h @ u).abs().max() <= 1e-5 * h.norm(dim=-1).max()
    assert before.abs().max() > 1e-2  # there was a component to remove


def test_clamp_sets_component(tiny_qwen2):
    m = tiny_qwen2
    u = _unit(m.d_model, 3)
    with steering.clamp(m, u, value=4.0, layers=[0, 2]):
        rec = Recorder(m, [0, 1, 2])
        _logits(m, _ids(m))
        rec.remove()
    for l in (0, 2):
        torch.testing.assert_close(rec.calls[l][0] @ u, torch.full_like(rec.calls[l][0][..., 0], 4.0),
                                   rtol=0, atol=1e-4)
    assert not torch.allclose(rec.calls[1][0] @ u, torch.full_like(rec.calls[1][0][..., 0], 4.0), atol=1e-2)


def test_restores_bit_for_bit_and_exception_safe(tiny_qwen2):
    m = tiny_qwen2
    ids, v = _ids(m), torch.randn(m.d_model)
    base = _logits(m, ids)
    with steering.add(m, v, layers="all", alpha=2.0), steering.ablate(m, _unit(m.d_model, 1), layers=[1, 3]):
        steered = _logits(m, ids)
    assert not torch.allclose(steered, base)
    assert torch.equal(_logits(m, ids), base)
    assert _no_hooks(m)
    with pytest.raises(KeyError):
        with steering.clamp(m, v, value=1.0, layers=[0], positions="response"):
            raise KeyError("boom")
    assert _no_hooks(m)
    assert torch.equal(_logits(m, ids), base)


def test_composition_and_reentry(tiny_qwen2):
    m = tiny_qwen2
    ids, v, w = _ids(m), torch.randn(m.d_model), torch.randn(m.d_model)
    with steering.add(m, v, layers=[1], alpha=1.0), steering.add(m, w, layers=[1], alpha=2.0):
        two = _logits(m, ids)
    with steering.add(m, v + 2.0 * w, layers=[1], alpha=1.0):
        one = _logits(m, ids)
    torch.testing.assert_close(two, one, rtol=1e-4, atol=1e-4)
    # add then ablate at the same layer (entered in that order) removes the added component too
    u = v / v.norm()
    with steering.add(m, v, layers=[1], alpha=5.0), steering.ablate(m, v, layers=[1]):
        rec = Recorder(m, [1])
        _logits(m, ids)
        rec.remove()
    assert (rec.calls[1][0] @ u).abs().max() < 1e-4
    s = steering.add(m, v, layers=[1], alpha=1.0)
    for _ in range(2):  # the same object can be entered again after leaving
        with s:
            assert s.active
        assert not s.active and _no_hooks(m)
    with s, pytest.raises(RuntimeError):
        s.__enter__()


def _steered_generate(m, steer_kwargs, ids, attn, n_new=5):
    """Generate greedily, recording the block-1 output before and after the steering hook per call."""
    pre = Recorder(m, [1])
    with steering.add(m, **steer_kwargs):
        post = Recorder(m, [1])
        with torch.no_grad():
            out = m.model.generate(input_ids=ids, attention_mask=attn, max_new_tokens=n_new, do_sample=False,
                                   output_logits=True, return_dict_in_generate=True, min_new_tokens=n_new,
                                   pad_token_id=m.tokenizer.pad_token_id)
        post.remove()
    pre.remove()
    return out, pre.calls[1], post.calls[1]


@pytest.mark.parametrize("positions", ["response", "prompt", "all", "mask"])
def test_generate_positions(tiny_qwen3, positions):
    m = tiny_qwen3
    m.tokenizer.padding_side = "left"
    enc = m.tokenizer([m.render(MSGS, True), m.render([{"role": "user", "content": "Hi"}], True)],
                      return_tensors="pt", padding=True, add_special_tokens=False)
    ids, attn = enc["input_ids"], enc["attention_mask"]
    P, v, alpha = ids.shape[1], torch.randn(m.d_model), 4.0
    if positions == "mask":  # absolute positions: the last 2 prompt tokens and the 3rd generated one
        mask = torch.zeros(P + 10, dtype=torch.bool)
        mask[P - 2:P] = True
        mask[P + 2] = True
        pos = mask
    else:
        pos = positions
    with torch.no_grad():
        plain = m.model.generate(input_ids=ids, attention_mask=attn, max_new_tokens=5, do_sample=False,
                                 output_logits=True, return_dict_in_generate=True, min_new_tokens=5,
                                 pad_token_id=m.tokenizer.pad_token_id)
    out, pre, post = _steered_generate(m, dict(direction=v, layers=[1], alpha=alpha, positions=pos), ids, attn)
    assert len(pre) == len(post) == 5  # prefill + 4 decode steps
    past = 0
    for call, (a, b) in enumerate(zip(pre, post)):
        seq = a.shape[1]
        if positions == "mask":
            want = mask[past:past + seq].float()[None, :, None] * (alpha * v)
        else:
            steer = positions == "all" or (positions == "prompt") == (call == 0)
            want = (alpha * v).expand_as(a) if steer else torch.zeros_like(a)
        torch.testing.assert_close(b - a, want.expand_as(a), rtol=0, atol=1e-5)
        past += seq
    first_same = torch.equal(out.logits[0], plain.logits[0])
    # response steering cannot change the first generated token's logits (it comes from the prompt)
    assert first_same == (positions == "response")
    assert _no_hooks(m)


def test_response_steering_changes_later_tokens(tiny_qwen3):
    m = tiny_qwen3
    ids = _ids(m)
    kw = dict(max_new_tokens=6, min_new_tokens=6, do_sample=False, output_logits=True,
              return_dict_in_generate=True, pad_token_id=m.tokenizer.pad_token_id)
    with torch.no_grad():
        plain = m.model.generate(ids, **kw)
        with steering.add(m, torch.randn(m.d_model), layers="all", alpha=20.0, positions="response"):
            steered = m.model.generate(ids, **kw)
    assert torch.equal(plain.logits[0], steered.logits[0])
    assert not torch.allclose(plain.logits[2], steered.logits[2])


def test_mask_positions_plain_forward(tiny_qwen2):
    m = tiny_qwen2
    msgs = MSGS + [{"role": "assistant", "content": "Read a book."}]
    ct = m.tokenize_chat(msgs)
    v = torch.randn(m.d_model)
    pre = Recorder(m, [0])
    with steering.add(m, v, layers=[0], alpha=1.5, positions=ct.assistant_mask):
        post = Recorder(m, [0])
        _logits(m, ct.input_ids.unsqueeze(0))
        post.remove()
    pre.remove()
    diff = (post.calls[0][0] - pre.calls[0][0])[0]
    changed = diff.abs().amax(-1) > 0
    assert torch.equal(changed, ct.assistant_mask)
    # "response" in a plain forward (no KV cache) is a prompt pass: nothing changes
    base = _logits(m, ct.input_ids.unsqueeze(0))
    with steering.add(m, v, layers="all", alpha=5.0, positions="response"):
        assert torch.equal(_logits(m, ct.input_ids.unsqueeze(0)), base)


def test_train_time_gradients(tiny_qwen2):
    """CAFT (ablation while training) makes the gradient of the block's writing weights orthogonal
    to v; preventative steering with alpha=0 is bit-identical and alpha != 0 changes gradients."""
    m = tiny_qwen2
    m.model.train()
    ids = m.tokenize_chat(MSGS + [{"role": "assistant", "content": "Go for a walk."}]).input_ids.unsqueeze(0)
    L, u = 2, _unit(m.d_model, 5)
    W = m.layers[L].mlp.down_proj.weight  # writes into the residual stream after block L

    def grads(ctx=None):
        m.model.zero_grad(set_to_none=True)
        if ctx is None:
            loss = m.model(ids, labels=ids).loss
        else:
            with ctx():
                loss = m.model(ids, labels=ids).loss
        loss.backward()
        return {n: p.grad.clone() for n, p in m.model.named_parameters() if p.grad is not None}

    g0 = grads()
    g_caft = grads(lambda: steering.ablate(m, u, layers=[L]))
    wname = next(n for n, p in m.model.named_parameters() if p is W)
    assert (u @ g0[wname]).abs().max() > 1e-6
    assert (u @ g_caft[wname]).abs().max() <= 1e-5 * g_caft[wname].abs().max()
    g_zero = grads(lambda: steering.add(m, u, layers=[L], alpha=0.0))
    assert all(torch.equal(g_zero[n], g0[n]) for n in g0)
    g_prev = grads(lambda: steering.add(m, u, layers=[L], alpha=3.0))
    assert not torch.allclose(g_prev[wname], g0[wname])
    m.model.zero_grad(set_to_none=True)
    m.model.eval()
    assert _no_hooks(m)


def test_works_with_peft_adapter(tiny_qwen2_dir):
    from peft import LoraConfig, get_peft_model

    from introspect_mech import load_model

    m = load_model(tiny_qwen2_dir)
    m.model = get_peft_model(m.model, LoraConfig(r=2, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    ids, v = _ids(m), torch.randn(m.d_model)
    base = _logits(m, ids)
    with steering.add(m, v, layers=[1], alpha=2.0):
        assert not torch.allclose(_logits(m, ids), base)
    assert torch.equal(_logits(m, ids), base)


def test_random_like_norm_matched():
    v = torch.randn(64) * 3
    r0, r0b, r1 = steering.random_like(v, 0), steering.random_like(v, 0), steering.random_like(v, 1)
    assert torch.equal(r0, r0b) and not torch.equal(r0, r1)
    torch.testing.assert_close(r0.norm(), v.norm())
    assert abs(float(r0 @ v) / float(r0.norm() * v.norm())) < 0.5
    mat = torch.randn(3, 64) * torch.tensor([[1.0], [2.0], [5.0]])
    rm = steering.random_like(mat, 2)
    torch.testing.assert_close(rm.norm(dim=-1), mat.norm(dim=-1))
    d = Direction(mat / mat.norm(dim=-1, keepdim=True), mat.norm(dim=-1), [0, 1, 2], {"trait": "evil"})
    rd = steering.random_like(d, 4)
    assert rd.meta == {"trait": "evil", "random_like": 4} and d.meta == {"trait": "evil"}
    torch.testing.assert_close(rd.vectors.norm(dim=-1), torch.ones(3))
    assert torch.equal(rd.norms, d.norms)


def test_bad_input(tiny_qwen2):
    m = tiny_qwen2
    with pytest.raises(ValueError, match="d_model"):
        steering.add(m, torch.randn(m.d_model + 1), layers=[0], alpha=1.0)
    with pytest.raises(ValueError, match="out of range"):
        steering.add(m, torch.randn(m.d_model), layers=[m.n_layers], alpha=1.0)
    with pytest.raises((ValueError, TypeError), match="positions"):  # TypeError: the tests' shape checker
        steering.add(m, torch.randn(m.d_model), layers=[0], alpha=1.0, positions="generated")
    with pytest.raises(ValueError, match="zero"):
        steering.ablate(m, torch.zeros(m.d_model))
    with pytest.raises(TypeError, match="direction"):
        steering.add(m, [1.0, 2.0], layers=[0], alpha=1.0)
    with pytest.raises(TypeError):  # layers / alpha / value are keyword-only
        steering.add(m, torch.randn(m.d_model), [0], 1.0)
    with pytest.raises(TypeError):
        steering.clamp(m, torch.randn(m.d_model), 1.0, [0])
    with pytest.raises(ValueError, match="relative depth"):  # a float is a relative depth in [0, 1], never truncated
        steering.add(m, torch.randn(m.d_model), layers=[1.5], alpha=1.0)
    with pytest.raises(TypeError, match="Direction"):  # no duck typing: only a Direction or a tensor
        steering.add(m, SimpleNamespace(vectors=torch.randn(m.n_layers, m.d_model)), layers=[0], alpha=1.0)
    assert _no_hooks(m)


@pytest.mark.parametrize("positions", ["response", "prompt"])
def test_generate_after_manual_prefill(tiny_qwen3, positions):
    """generate() continuing from a cache prefilled outside it (all but the last prompt token, as
    evals.sample does): the last prompt token still counts as prompt, generated tokens as response."""
    m = tiny_qwen3
    ids = _ids(m)
    P, v, alpha = ids.shape[1], torch.randn(m.d_model), 3.0
    pre = Recorder(m, [2])
    with steering.add(m, v, layers=[2], alpha=alpha, positions=positions):
        post = Recorder(m, [2])
        with torch.no_grad():
            cache = output_cache(m.model(ids[:, :-1], use_cache=True))
            m.model.generate(input_ids=ids, **cache_kwargs(m, cache), max_new_tokens=4, min_new_tokens=4,
                             do_sample=False, pad_token_id=m.tokenizer.pad_token_id)
        post.remove()
    pre.remove()
    assert [a.shape[1] for a in pre.calls[2]] == [P - 1, 1, 1, 1, 1]
    for call, (a, b) in enumerate(zip(pre.calls[2], post.calls[2])):
        is_prompt = call <= 1  # the manual prefill and generate's first step (the last prompt token)
        steer = is_prompt == (positions == "prompt")
        want = alpha * v if steer else torch.zeros_like(v)
        torch.testing.assert_close(b - a, want.expand_as(a), rtol=0, atol=1e-5)
    assert _no_hooks(m)


def test_evals_sample_and_activation_cache(tiny_qwen2):
    """Steering applies inside evals.sample (through generate) and activations.cache."""
    from introspect_mech.activations import cache
    from introspect_mech.evals.sampling import sample

    m = tiny_qwen2
    v = torch.randn(m.d_model, generator=torch.Generator().manual_seed(0)) * 50
    kw = dict(n=2, max_new_tokens=6, temperature=0, seed=0, batch_size=4)
    plain = sample(m, [MSGS], **kw)
    with steering.add(m, v, layers="all", alpha=1.0, positions="response"):
        steered = sample(m, [MSGS], **kw)
    again = sample(m, [MSGS], **kw)
    assert [r["response"] for r in again] == [r["response"] for r in plain]
    assert [r["response"] for r in steered] != [r["response"] for r in plain]
    conv = [MSGS + [{"role": "assistant", "content": "Read a book."}]]
    a0 = cache(m, conv, layers=[1, 2], positions="response_mean")
    # ablate a direction the cached activation really has a component along (tiny-model activations
    # are ~1e-2 in size, so a random direction's component can be too small to tell from zero)
    d = a0[0, 0] + 0.5 * a0[0, 0].norm() * v / v.norm()
    u = d / d.norm()
    with steering.ablate(m, d, layers=[1]):
        a1 = cache(m, conv, layers=[1, 2], positions="response_mean")
    assert abs(float(a0[0, 0] @ u)) > 0.5 * float(a0[0, 0].norm())
    assert float(a1[0, 0] @ u) == pytest.approx(0.0, abs=1e-6 * float(a0[0, 0].norm()) + 1e-8)
    assert torch.equal(cache(m, conv, layers=[1, 2], positions="response_mean"), a0)
    assert _no_hooks(m)


def test_with_probes_direction(tiny_qwen2):
    """A real probes.Direction on a subset of blocks: unit vectors (or raw norms with scale="norm")
    at those blocks; random_like keeps layers and norms."""
    from introspect_mech.probes.direction import Direction

    m = tiny_qwen2
    raw = torch.randn(2, m.d_model) * torch.tensor([[3.0], [0.5]])
    d = Direction.from_raw(raw, layers=[1, 3], method="test")
    ids = _ids(m)
    pre = Recorder(m, [1, 3])
    with steering.add(m, d, layers=[1, 3], alpha=2.0):
        post = Recorder(m, [1, 3])
        _logits(m, ids)
        post.remove()
    with steering.add(m, d, layers=[3], alpha=2.0, scale="norm"):
        post_n = Recorder(m, [3])
        _logits(m, ids)
        post_n.remove()
    pre.remove()
    torch.testing.assert_close(post.calls[1][0] - pre.calls[1][0], (2.0 * d.at(1)).expand_as(post.calls[1][0]),
                               rtol=0, atol=1e-5)
    torch.testing.assert_close(post_n.calls[3][0] - pre.calls[3][1], (2.0 * raw[1]).expand_as(post_n.calls[3][0]),
                               rtol=0, atol=1e-4)
    with pytest.raises(ValueError, match="no vector for layer 2"):
        steering.add(m, d, layers=[2], alpha=1.0)
    r = steering.random_like(d, 0)
    assert isinstance(r, Direction) and r.layers == [1, 3] and torch.equal(r.norms, d.norms)
    assert r.meta["random_like"] == 0 and r.meta["method"] == "test"
    assert (r.vectors @ d.vectors.T).diagonal().abs().max() < 0.6
