"""Exact probabilities of short continuations from one prefill and one tree-shaped forward.

The judge's 0-100 score, `scale_expectation` and `choice_probability` all need the probability of
a small set of candidate strings ("0".."100", "A"/"B") as the model's whole answer. Qwen-style
tokenizers split numbers into digits, so a candidate is a *sequence* of tokens and single-token
top-logprobs are not enough. Here:

1. the prompts are prefilled once (left-padded batch, logits kept only at the last position);
2. all candidates are merged into a token trie, and every trie node is scored in **one** extra
   forward over the KV cache: the trie is flattened into a sequence whose 4D attention mask lets
   each node see the prompt and its own ancestors only (tree attention), with position ids
   `prompt_len + depth`;
3. log P(candidate) = sum of its tokens' log-probs along the trie path, and, for numbers, the end
   of the answer is accounted for with log P(next token does not start with a digit) at the
   candidate's node, so "10" does not absorb the mass of "100" or "105".

The result equals scoring each candidate with its own full forward (tested against a brute-force
enumeration); it costs one prefill plus one forward over `len(trie)` tokens (101 for digit-split
tokenizers) instead of 101 forwards.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from ..kv_cache import cache_kwargs, output_cache
from ..models import LoadedModel

DIGITS = frozenset("0123456789")


@dataclass
class Trie:
    """Candidates merged by shared prefixes. Nodes are in creation order (parents first)."""

    tokens: list[int]
    parents: list[int]  # -1 for children of the root (the prompt)
    depths: list[int]   # 0 for the first token after the prompt
    cand_node: list[int]  # node index of each candidate's last token

    @classmethod
    def build(cls, candidates: Sequence[Sequence[int]]) -> Trie:
        """Merge candidate token sequences into a trie (shared prefixes become shared nodes).

        Args:
            candidates: one token-id sequence per candidate (duplicates share their node).

        Returns:
            The trie; `cand_node[i]` is candidate i's last node.

        Raises:
            ValueError: a candidate is empty.
        """
        tokens: list[int] = []
        parents: list[int] = []
        depths: list[int] = []
        cand_node: list[int] = []
        index: dict[tuple[int, int], int] = {}
        for cand in candidates:
            if len(cand) == 0:
                raise ValueError("empty candidate token sequence")
            node = -1
            for d, tok in enumerate(cand):
                key = (node, int(tok))
                if key not in index:
                    index[key] = len(tokens)
                    tokens.append(int(tok))
                    parents.append(node)
                    depths.append(d)
                node = index[key]
            cand_node.append(node)
        return cls(tokens, parents, depths, cand_node)

    def ancestor_mask(self) -> Bool[Tensor, "node node"]:
        """mask[i, j] = node j is node i or one of its ancestors."""
        n = len(self.tokens)
        m = torch.zeros(n, n, dtype=torch.bool)
        for i in range(n):
            j = i
            while j != -1:
                m[i, j] = True
                j = self.parents[j]
        return m


_TOK_CACHE: dict[int, tuple[object, dict]] = {}  # id(tokenizer) -> (tokenizer kept alive, memo)


def _memo(tokenizer) -> dict:
    entry = _TOK_CACHE.get(id(tokenizer))
    if entry is None or entry[0] is not tokenizer:
        if len(_TOK_CACHE) > 16:
            _TOK_CACHE.clear()
        entry = _TOK_CACHE[id(tokenizer)] = (tokenizer, {})
    return entry[1]


def digit_start_mask(tokenizer, vocab_size: int) -> Bool[Tensor, " vocab"]:
    """True for tokens whose text starts with an ASCII digit (they would extend a number).

    Byte-fallback tokens "<0x30>".."<0x39>" count as digits. Memoised per tokenizer.

    Args:
        tokenizer: a Hugging Face tokenizer.
        vocab_size: length of the mask (the model's output vocabulary, which may exceed the
            tokenizer's; ids past the tokenizer are False).

    Returns:
        The mask, one entry per vocabulary id.
    """
    memo = _memo(tokenizer)
    key = ("digit_mask", vocab_size)
    if key not in memo:
        toks = tokenizer.convert_ids_to_tokens(list(range(min(len(tokenizer), vocab_size))))
        mask = torch.zeros(vocab_size, dtype=torch.bool)
        for i, t in enumerate(toks):
            if t and (t[0] in DIGITS or (len(t) == 6 and t.startswith("<0x3") and t[4] in DIGITS and t[5] == ">")):
                mask[i] = True
        memo[key] = mask
    return memo[key]


def _left_pad(seqs: Sequence[Sequence[int]], pad_id: int) -> tuple[Tensor, Tensor]:
    n = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), n), pad_id, dtype=torch.long)
    att = torch.zeros((len(seqs), n), dtype=torch.long)
    for i, s in enumerate(seqs):
        if len(s):
            ids[i, n - len(s):] = torch.as_tensor(list(s), dtype=torch.long)
            att[i, n - len(s):] = 1
    return ids, att


@torch.no_grad()
def prefill(model: LoadedModel, prompts: Sequence[Sequence[int]]
            ) -> tuple[Any, Float[Tensor, "prompt vocab"], Int[Tensor, "prompt seq"]]:
    """Left-padded forward over `prompts` (logits kept at the last position only).

    Args:
        model: the model.
        prompts: token ids of each prompt (left-padded to the longest; position ids skip the padding).

    Returns:
        (KV cache of the batch, log-probs of the next token after each prompt, attention mask: 1 on
        prompt tokens, 0 on padding).
    """
    pad = model.tokenizer.pad_token_id if model.tokenizer.pad_token_id is not None else 0
    ids, att = _left_pad(prompts, pad)
    ids, att = ids.to(model.device), att.to(model.device)
    pos = (att.cumsum(-1) - 1).clamp(min=0)
    out = model.model(input_ids=ids, attention_mask=att, position_ids=pos, use_cache=True, logits_to_keep=1)
    return output_cache(out), torch.log_softmax(out.logits[:, -1].float(), dim=-1), att


MIN_SHARED_PREFIX = 16  # tokens: below this, prefilling a common prefix once is not worth a second forward


def common_prefix_len(prompts: Sequence[Sequence[int]]) -> int:
    """Length of the longest token prefix shared by all prompts, leaving each prompt at least one token.

    Args:
        prompts: token ids of each prompt.

    Returns:
        The length (0 for fewer than two prompts).
    """
    if len(prompts) < 2:
        return 0
    n = min(len(p) for p in prompts) - 1
    first = prompts[0]
    for k in range(max(n, 0)):
        t = first[k]
        if any(p[k] != t for p in prompts[1:]):
            return k
    return max(n, 0)


@torch.no_grad()
def prefill_shared(model: LoadedModel, prefix: Sequence[int], suffixes: Sequence[Sequence[int]], prefix_cache: Any = None
                   ) -> tuple[Any, Float[Tensor, "prompt vocab"], Int[Tensor, "prompt seq"], Any]:
    """`prefill` of `prefix + suffix` for each suffix, with the shared prefix computed once.

    The prefix is prefilled with batch 1 (or `prefix_cache`, a batch-1 cache of it, is copied), its cache is
    repeated over the batch, and the left-padded suffixes follow it: the padding sits between prefix and
    suffix, masked out, and position ids count real tokens only, so every row sees exactly its own prompt.

    Args:
        model: the model.
        prefix: token ids shared by every prompt.
        suffixes: the rest of each prompt (each non-empty).
        prefix_cache: a batch-1 KV cache of `prefix` from an earlier call (copied, never changed).

    Returns:
        (KV cache of the batch, log-probs of the next token after each prompt, attention mask over prefix +
        padded suffix: 1 on prompt tokens, 0 on padding, the batch-1 prefix cache for reuse).
    """
    import copy

    dev = model.device
    if prefix_cache is None:
        ids = torch.tensor([list(prefix)], dtype=torch.long, device=dev)
        prefix_cache = output_cache(model.model(input_ids=ids, use_cache=True, logits_to_keep=1))
    cache = copy.deepcopy(prefix_cache)
    B, P = len(suffixes), len(prefix)
    cache.reorder_cache(torch.zeros(B, dtype=torch.long, device=dev))
    pad = model.tokenizer.pad_token_id if model.tokenizer.pad_token_id is not None else 0
    ids, satt = _left_pad(suffixes, pad)
    ids, satt = ids.to(dev), satt.to(dev)
    att = torch.cat([torch.ones(B, P, dtype=satt.dtype, device=dev), satt], dim=-1)
    pos = (P + satt.cumsum(-1) - 1).clamp(min=P)
    out = model.model(input_ids=ids, attention_mask=att, position_ids=pos, use_cache=True, logits_to_keep=1,
                      **cache_kwargs(model, cache))
    return output_cache(out), torch.log_softmax(out.logits[:, -1].float(), dim=-1), att, prefix_cache


def _one_forward(model: LoadedModel, prompts: Sequence[Sequence[int]], tokens: Tensor, depths: Tensor,
                 anc: Tensor) -> tuple[Tensor, Tensor]:
    """Left-padded prompts followed by the candidate trie in one forward: a causal mask over the real
    prompt tokens, and for trie node i the whole prompt plus its trie ancestors. Returns the log-probs
    at the last prompt position `[B, V]` and the logits at the trie nodes `[B, T, V]` (float32)."""
    pad = model.tokenizer.pad_token_id if model.tokenizer.pad_token_id is not None else 0
    ids, att = _left_pad(prompts, pad)
    dev = model.device
    ids, att = ids.to(dev), att.to(dev)
    B, L = att.shape
    T = int(tokens.shape[0])
    real = att.bool()
    causal = torch.ones(L, L, dtype=torch.bool, device=dev).tril()
    top = causal[None] & real[:, None, :]
    top |= torch.eye(L, dtype=torch.bool, device=dev)[None]  # pad rows see themselves (no empty row)
    top = torch.cat([top, torch.zeros(B, L, T, dtype=torch.bool, device=dev)], dim=-1)
    bottom = torch.cat([real[:, None, :].expand(B, T, L), anc.to(dev)[None].expand(B, T, T)], dim=-1)
    allowed = torch.cat([top, bottom], dim=1)  # (B, L+T, L+T)
    dtype = model.dtype if model.dtype.is_floating_point else torch.float32
    mask = torch.zeros(allowed.shape, dtype=dtype, device=dev).masked_fill_(~allowed, torch.finfo(dtype).min)
    lengths = att.sum(-1)
    pos = torch.cat([(att.cumsum(-1) - 1).clamp(min=0), lengths[:, None] + depths.to(dev)[None, :]], dim=-1)
    out = model.model(input_ids=torch.cat([ids, tokens.to(dev)[None].expand(B, T)], dim=-1),
                      attention_mask=mask[:, None], position_ids=pos, use_cache=False, logits_to_keep=T + 1)
    logits = out.logits.float()  # (B, T + 1, V): the last prompt position, then the trie nodes
    return torch.log_softmax(logits[:, 0], dim=-1), logits[:, 1:]


@torch.no_grad()
def tree_logprobs(
    model: LoadedModel,
    prompts: Sequence[Sequence[int]],
    candidates: Sequence[Sequence[int]],
    *,
    stop_mask: Bool[Tensor, " vocab"] | None = None,
    batch_size: int = 4,
    single_forward: bool | None = False,
    shared_prefix: bool = False,
) -> tuple[Float[Tensor, "prompt cand"], Float[Tensor, "prompt cand"] | None]:
    """log P(candidate tokens | prompt) for every prompt x candidate, and with `stop_mask`
    log P(next token in stop_mask | prompt + candidate) (the end-of-answer term).

    By default the prompts are prefilled once and the candidate trie is scored in a second forward over
    that KV cache. `single_forward=True` scores prompt + trie in one forward with a tree attention mask
    (the lm_head only on the last prompt position and the trie): fewer kernel launches on a GPU; `None`
    picks it on CUDA. While a steering context is active the two-forward path is kept, so position-
    dependent steering sees the candidates as response tokens either way.

    Args:
        model: the model.
        prompts: token ids of each prompt.
        candidates: token ids of each candidate continuation.
        stop_mask: tokens that end an answer; with it, the end-of-answer term is returned too.
        batch_size: prompts per forward.
        single_forward: one forward over prompt + trie (True), prefill + trie forward (False), or by device (None).
        shared_prefix: prefill the prompts' longest common token prefix once (when >= `MIN_SHARED_PREFIX`
            tokens) and reuse its KV cache for every batch (`prefill_shared`; the two-forward path, not while
            steering). Judge prompts share their long instruction header; the result is the same.

    Returns:
        `log P(candidate | prompt)`, `[prompt, cand]`; and with `stop_mask`
        `log P(next token in stop_mask | prompt + candidate)`, `[prompt, cand]` (else None).
    """
    if single_forward is None:
        single_forward = model.device.type == "cuda"
    if single_forward:
        from ..steering.hooks import is_steered

        single_forward = not is_steered(model)
    trie = Trie.build(candidates)
    anc = trie.ancestor_mask()
    tokens = torch.tensor(trie.tokens)
    parents = torch.tensor(trie.parents)
    depths = torch.tensor(trie.depths)
    cand_node = torch.tensor(trie.cand_node)
    T = len(trie.tokens)
    by_depth = [(depths == d).nonzero().flatten() for d in range(int(depths.max()) + 1)]
    P = 0
    if shared_prefix and not single_forward:
        from ..steering.hooks import is_steered

        P = common_prefix_len(prompts) if not is_steered(model) else 0
        P = P if P >= MIN_SHARED_PREFIX else 0
    prefix_cache = None
    all_lp, all_stop = [], []
    for start in range(0, len(prompts), batch_size):
        chunk = prompts[start:start + batch_size]
        if single_forward:
            root_lp, logits = _one_forward(model, chunk, tokens, depths, anc)
            cache = out = None
        else:
            if P:
                cache, root_lp, att, prefix_cache = prefill_shared(model, prompts[0][:P], [c[P:] for c in chunk],
                                                                   prefix_cache)
            else:
                cache, root_lp, att = prefill(model, chunk)
            B, L = att.shape
            dev = att.device
            dtype = model.dtype if model.dtype.is_floating_point else torch.float32
            allowed = torch.cat([att.bool()[:, None, :].expand(B, T, L), anc.to(dev)[None].expand(B, T, T)], dim=-1)
            mask = torch.zeros(allowed.shape, dtype=dtype, device=dev)
            mask.masked_fill_(~allowed, torch.finfo(dtype).min)
            lengths = att.sum(-1)
            pos = lengths[:, None] + depths.to(dev)[None, :]
            out = model.model(
                input_ids=tokens.to(dev)[None].expand(B, T), attention_mask=mask[:, None],
                position_ids=pos, use_cache=True, **cache_kwargs(model, cache),
            )
            logits = out.logits.float()  # (B, T, V)
        B, dev = logits.shape[0], logits.device
        lse = torch.logsumexp(logits, dim=-1)  # (B, T)
        # log-prob of each node's own token given its parent (root = prompt's last position)
        parent_lp = torch.empty(B, T, device=dev)
        is_root = parents < 0
        tok_dev = tokens.to(dev)
        if is_root.any():
            idx = is_root.nonzero().squeeze(-1).to(dev)
            parent_lp[:, idx] = root_lp[:, tok_dev[idx]]
        if (~is_root).any():
            idx = (~is_root).nonzero().squeeze(-1).to(dev)
            par = parents.to(dev)[idx]
            # paired indexing: logits[b, par[j], tok[j]] without materialising logits[:, par, :]
            parent_lp[:, idx] = logits[:, par, tok_dev[idx]] - lse[:, par]
        cum = torch.zeros(B, T, device=dev)
        par_dev = parents.to(dev)
        for d, nodes in enumerate(by_depth):  # a node's parent is one level up: one step per depth
            nodes = nodes.to(dev)
            cum[:, nodes] = parent_lp[:, nodes] + (cum[:, par_dev[nodes]] if d > 0 else 0.0)
        all_lp.append(cum[:, cand_node.to(dev)].cpu())
        if stop_mask is not None:
            sm = stop_mask.to(dev)
            if sm.shape[0] != logits.shape[-1]:
                raise ValueError(f"stop mask has {sm.shape[0]} entries, logits have {logits.shape[-1]}")
            stop = torch.logsumexp(logits.masked_fill(~sm, float("-inf")), dim=-1) - lse
            all_stop.append(stop[:, cand_node.to(dev)].cpu())
        del cache, out, logits
    lp = torch.cat(all_lp)
    return lp, (torch.cat(all_stop) if stop_mask is not None else None)


def _number_candidates(tok, tail: str, lo: int, hi: int, lead: str) -> tuple[tuple[int, ...], ...]:
    memo = _memo(tok)
    key = ("numbers", tail, lo, hi, lead)
    if key in memo:
        return memo[key]
    enc = lambda s: tok(s, add_special_tokens=False)["input_ids"]  # noqa: E731
    base = enc(tail)
    out = []
    for n in range(lo, hi + 1):
        full = enc(tail + lead + str(n))
        ids = full[len(base):] if full[:len(base)] == base and len(full) > len(base) else enc(lead + str(n))
        out.append(tuple(ids))
    memo[key] = tuple(out)
    return memo[key]


def number_candidates(tokenizer, prompt_text: str, lo: int = 0, hi: int = 100) -> list[list[int]]:
    """Token ids of the answers str(lo)..str(hi) as they tokenize right after `prompt_text`.

    After a prompt ending in whitespace (every chat template's assistant header) the number follows
    directly; after one that does not (e.g. the "Assistant:" fallback template) it follows a space.

    Args:
        tokenizer: a Hugging Face tokenizer.
        prompt_text: the rendered prompt (only its last 24 characters matter).
        lo: smallest number (default 0).
        hi: largest number (default 100).

    Returns:
        One token-id list per number lo..hi, in order.
    """
    lead = "" if (prompt_text[-1:].isspace() or prompt_text == "") else " "
    return [list(c) for c in _number_candidates(tokenizer, prompt_text[-24:], lo, hi, lead)]


@dataclass
class NumberDist:
    """Distribution over the integers lo..hi as a whole answer."""

    probs: Float[Tensor, " n"]  # unnormalised: P(answer == k), k = lo..hi
    lo: int

    @property
    def mass(self) -> float:
        """Total probability of the numbers lo..hi."""
        return float(self.probs.sum())

    def expected(self, min_mass: float = 0.0) -> float | None:
        """Probability-weighted mean over the numbers (renormalised); None below `min_mass`.

        Args:
            min_mass: return None when the total mass is below this (default 0: only a zero mass gives None).

        Returns:
            sum_k k P(k) / sum_k P(k), or None.
        """
        m = self.mass
        if m <= 0 or m < min_mass:
            return None
        vals = torch.arange(self.lo, self.lo + len(self.probs), dtype=torch.float64)
        return float((self.probs.double() * vals).sum() / self.probs.double().sum())


def number_distributions(
    model: LoadedModel, prompt_texts: Sequence[str], lo: int = 0, hi: int = 100, batch_size: int = 4,
    single_forward: bool | None = False, shared_prefix: bool = False,
) -> list[NumberDist]:
    """Exact P(answer = k) for k in lo..hi after each (already rendered) prompt text.

    Args:
        model: the model.
        prompt_texts: rendered prompts (ending with the assistant header).
        lo: smallest number (default 0).
        hi: largest number (default 100).
        batch_size: prompts per forward.
        single_forward: see `tree_logprobs`.
        shared_prefix: see `tree_logprobs`.

    Returns:
        One `NumberDist` per prompt (P(k) includes P(the answer ends after k)).
    """
    tok = model.tokenizer
    out: dict[int, NumberDist] = {}
    # group prompts by candidate tokenization (it depends only on the prompt's tail)
    groups: dict[tuple, list[int]] = {}
    for i, text in enumerate(prompt_texts):
        key = tuple(map(tuple, number_candidates(tok, text, lo, hi)))
        groups.setdefault(key, []).append(i)
    vocab = model.base_model.get_output_embeddings().weight.shape[0]
    stop_mask = ~digit_start_mask(tok, vocab)
    for cands, idxs in groups.items():
        ids = [tok(prompt_texts[i], add_special_tokens=False)["input_ids"] for i in idxs]
        lp, stop = tree_logprobs(model, ids, [list(c) for c in cands], stop_mask=stop_mask, batch_size=batch_size,
                                 single_forward=single_forward, shared_prefix=shared_prefix)
        assert stop is not None  # returned with a stop_mask
        probs = (lp + stop).exp()
        for j, i in enumerate(idxs):
            out[i] = NumberDist(probs[j], lo)
    return [out[i] for i in range(len(prompt_texts))]
