"""Exact multi-token 0-100 scoring: tree scoring over the KV cache equals brute-force enumeration."""

from __future__ import annotations

import pytest
import torch

from introspect_mech import load_model
from introspect_mech.evals.scoring import (
    Trie, digit_start_mask, number_candidates, number_distributions, tree_logprobs,
)


def brute_force_number_probs(model, text, lo=0, hi=100):
    """P(answer == k) by one full forward per candidate sequence (101 forwards)."""
    tok = model.tokenizer
    ids = tok(text, add_special_tokens=False)["input_ids"]
    vocab = model.base_model.get_output_embeddings().weight.shape[0]
    stop = ~digit_start_mask(tok, vocab)
    cands = number_candidates(tok, text, lo, hi)
    # every candidate sequence as its own (right-padded) row: a plain full forward per sequence
    n = len(ids) + max(len(c) for c in cands)
    x = torch.zeros(len(cands), n, dtype=torch.long)
    att = torch.zeros(len(cands), n, dtype=torch.long)
    for i, c in enumerate(cands):
        x[i, :len(ids) + len(c)] = torch.tensor(ids + c)
        att[i, :len(ids) + len(c)] = 1
    with torch.no_grad():
        logits = model.model(input_ids=x, attention_mask=att).logits
    out = []
    for i, c in enumerate(cands):
        lg = logits[i, len(ids) - 1: len(ids) + len(c)].double().log_softmax(-1)  # positions that matter
        lp = sum(lg[j, t] for j, t in enumerate(c)) + torch.logsumexp(lg[-1][stop], 0)
        out.append(float(lp))
    return torch.tensor(out, dtype=torch.float64)


def multi_digit_tokenizer_dir(path):
    """A byte-level BPE tokenizer WITHOUT digit splitting, so "10", "42", "100" are single tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from introspect_mech.testing import QWEN_CHAT_TEMPLATE, SPECIAL_TOKENS

    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tk.decoder = decoders.ByteLevel()
    corpus = ["user assistant system rate it from 0 to 100 answer with a number"] + \
        ["\n".join(str(i) for i in range(101))] * 50
    trainer = trainers.BpeTrainer(vocab_size=600, special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tk.train_from_iterator(corpus, trainer=trainer)
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                  additional_special_tokens=["<|im_start|>", "<|im_end|>"])
    tok.chat_template = QWEN_CHAT_TEMPLATE
    tok.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def multi_digit_model(tmp_path_factory):
    from introspect_mech.testing import tiny_qwen

    from transformers import PreTrainedTokenizerFast

    tdir = multi_digit_tokenizer_dir(tmp_path_factory.mktemp("mdtok"))
    model = load_model(tiny_qwen(tmp_path_factory.mktemp("tiny_md"), arch="qwen2", tokenizer_dir=tdir))
    # the checkpoint's Qwen2 tokenizer class re-splits digits; keep the multi-digit BPE as trained
    model.tokenizer = PreTrainedTokenizerFast.from_pretrained(str(tdir))
    return model


def _prompts(model):
    return [model.render([{"role": "user", "content": "Rate it from 0 to 100."}], add_generation_prompt=True),
            model.render([{"role": "user", "content": "answer with a number from 0 to 100 please, a longer one"}],
                         add_generation_prompt=True)]


def test_trie_shares_prefixes():
    t = Trie.build([[1], [1, 2], [1, 3], [4]])
    assert t.tokens == [1, 2, 3, 4] and t.parents == [-1, 0, 0, -1] and t.depths == [0, 1, 1, 0]
    anc = t.ancestor_mask()
    assert anc[1].tolist() == [True, True, False, False] and anc[3].tolist() == [False, False, False, True]


def test_digit_split_tokenizer_matches_brute_force(tiny_qwen3_real_tok_dir):
    model = load_model(tiny_qwen3_real_tok_dir)
    texts = _prompts(model)
    cands = number_candidates(model.tokenizer, texts[0])
    assert cands[100] == [cands[1][0], cands[0][0], cands[0][0]]  # "100" -> "1","0","0": digits split
    dists = number_distributions(model, texts, batch_size=2)  # both prompts in one left-padded batch
    bf = brute_force_number_probs(model, texts[0])  # the shorter prompt of the two: it was left-padded
    torch.testing.assert_close(dists[0].probs.double().log(), bf, atol=2e-4, rtol=0)
    assert abs(dists[0].mass - float(bf.exp().sum())) < 1e-6
    alone = number_distributions(model, texts[1:])[0]  # batch of one equals the batched result
    torch.testing.assert_close(alone.probs.log(), dists[1].probs.log(), atol=2e-4, rtol=0)


@pytest.mark.parametrize("fixture", ["tiny_qwen3_real_tok_dir", "multi_digit_model"])
def test_single_forward_matches_brute_force(fixture, request):
    """Prompt + candidate trie in one forward (tree mask, no KV cache) equals brute force and the
    two-forward path, batched with left padding; while steered it falls back to the two-forward path."""
    from introspect_mech import steering

    value = request.getfixturevalue(fixture)
    model = load_model(value) if fixture.endswith("_dir") else value
    texts = _prompts(model)
    one = number_distributions(model, texts, batch_size=2, single_forward=True)
    two = number_distributions(model, texts, batch_size=2, single_forward=False)
    bf = brute_force_number_probs(model, texts[0])
    torch.testing.assert_close(one[0].probs.double().log(), bf, atol=2e-4, rtol=0)
    for a, b in zip(one, two):
        torch.testing.assert_close(a.probs.log(), b.probs.log(), atol=2e-4, rtol=0)
    v = torch.randn(model.d_model, generator=torch.Generator().manual_seed(0)) * 5
    with steering.add(model, v, layers="all", alpha=1.0, positions="response"):
        s1 = number_distributions(model, texts, batch_size=2, single_forward=True)
        s2 = number_distributions(model, texts, batch_size=2, single_forward=False)
    for a, b in zip(s1, s2):
        assert torch.equal(a.probs, b.probs)


def test_multi_digit_tokenizer_matches_brute_force(multi_digit_model):
    model = multi_digit_model
    text = _prompts(model)[1]
    cands = number_candidates(model.tokenizer, text)
    assert sum(len(c) == 1 for c in cands[10:]) >= 20, "fixture should have multi-digit tokens"
    d = number_distributions(model, [text])[0]
    torch.testing.assert_close(d.probs.double().log(), brute_force_number_probs(model, text), atol=2e-4, rtol=0)


def test_terminator_excludes_longer_numbers(tiny_qwen3_real_tok_dir):
    """P("1") must not include "10".."19"/"100": the end-of-number term is applied."""
    model = load_model(tiny_qwen3_real_tok_dir)
    text = _prompts(model)[0]
    ids = model.tokenizer(text, add_special_tokens=False)["input_ids"]
    one = number_candidates(model.tokenizer, text)[1]
    lp_prefix, _ = tree_logprobs(model, [ids], [one])
    d = number_distributions(model, [text])[0]
    assert float(d.probs[1]) < float(lp_prefix.exp()[0, 0])  # strictly less than P(first token is "1")


def test_expected_and_none_below_min_mass(tiny_qwen3_real_tok_dir):
    model = load_model(tiny_qwen3_real_tok_dir)
    d = number_distributions(model, _prompts(model)[:1])[0]
    assert d.mass < 0.25  # a random model puts little mass on numbers
    assert d.expected(min_mass=0.25) is None
    e = d.expected()
    assert e is not None and 0 <= e <= 100
    manual = float((d.probs.double() * torch.arange(101)).sum() / d.probs.double().sum())
    assert e == pytest.approx(manual)
