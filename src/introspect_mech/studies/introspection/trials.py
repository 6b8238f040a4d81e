"""The trials of the injected-thought study: tokenised prompts, the injection (`Injection`: a concept vector
added at one block from a token position on), exact continuation scoring over a shared prefix cache, and the
scorers of protocol A (`DetectionScorer`: P(yes), identification ranks) and B (`IntentionScorer`: P(disown)),
sampled answers and their grading."""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import asdict, dataclass
from typing import Any, Callable, Literal, Sequence

import torch
from jaxtyping import Float
from torch import Tensor

from ... import steering
from ...direction import Direction
from ...evals.scoring import Trie
from ...kv_cache import cache_kwargs, output_cache
from ...models import LoadedModel
from .prompts import (
    DETECT_NO,
    DETECT_YES,
    IDENT_PREFIX,
    INTENTION_DISOWN,
    INTENTION_OWN,
    JUDGE_PROMPTS,
    JUDGE_THRESHOLD,
    Message,
    detection_messages,
    intention_messages,
)
from ...evals.sampling import stop_token_ids


# ---- tokenisation ----------------------------------------------------------------------------------
@dataclass
class Prompt:
    """A rendered prompt: token ids, its text, and the character offsets of each token.

    Args:
        text: the rendered chat text (generation header included).
        ids: its token ids (no special tokens added by the tokenizer).
        offsets: (start, end) character offsets of each token in `text`.
    """

    text: str
    ids: list[int]
    offsets: list[tuple[int, int]]

    def token_at(self, char: int) -> int:
        """Index of the first token that ends after character `char`.

        Args:
            char: a character offset into `text`.

        Returns:
            The token index.

        Raises:
            ValueError: `char` lies beyond the last token.
        """
        for i, (_, e) in enumerate(self.offsets):
            if e > char:
                return i
        raise ValueError(f"character {char} lies beyond the prompt")


def render_prompt(model: LoadedModel, messages: Sequence[Message]) -> Prompt:
    """Render `messages` with the generation header and tokenise with character offsets.

    Args:
        model: a `LoadedModel` (its chat template and tokenizer).
        messages: the conversation, ending with a user turn.

    Returns:
        The rendered `Prompt`.
    """
    text = model.render(list(messages), add_generation_prompt=True)
    enc = model.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    return Prompt(text, list(enc["input_ids"]), [tuple(o) for o in enc["offset_mapping"]])


def continuation_ids(model: LoadedModel, prompt: Prompt, answer: str) -> list[int]:
    """Token ids of `answer` as it tokenises right after the prompt (the prompt's ids must be a prefix).

    Args:
        model: a `LoadedModel` (its tokenizer).
        prompt: the rendered prompt.
        answer: the continuation text.

    Returns:
        The ids that `prompt.text + answer` has beyond `prompt.ids`.

    Raises:
        ValueError: the joint tokenisation does not start with `prompt.ids`, or `answer` adds no token.
    """
    full = model.tokenizer(prompt.text + answer, add_special_tokens=False)["input_ids"]
    if full[:len(prompt.ids)] != prompt.ids or len(full) == len(prompt.ids):
        raise ValueError(f"answer {answer!r} does not tokenise as a continuation of the prompt")
    return list(full[len(prompt.ids):])


def injection_start(prompt: Prompt, inject_from: str = "prompt_end") -> int:
    """First injected token: the last prompt token ("prompt_end") or the start of "Trial {n}" ("trial").

    Args:
        prompt: the rendered detection prompt.
        inject_from: "prompt_end" or "trial".

    Returns:
        The token index the injection starts at.

    Raises:
        ValueError: an unknown `inject_from`, or "trial" on a prompt without "Trial ".
    """
    if inject_from == "prompt_end":
        return len(prompt.ids) - 1
    if inject_from == "trial":
        k = prompt.text.rfind("Trial ")
        if k < 0:
            raise ValueError("inject_from='trial' needs a prompt containing 'Trial '")
        return prompt.token_at(k)
    raise ValueError(f"inject_from must be 'prompt_end' or 'trial', got {inject_from!r}")


# ---- injection and exact scoring ------------------------------------------------------------------
@dataclass
class Injection:
    """`strength` x the direction's raw vector (`scale="norm"`; a raw tensor is used as given) added
    after block `layer` at token positions [start, end) (`end=None`: to the end, answer included).

    Args:
        direction: a `Direction` (scaled by `scale`) or a raw tensor (added as given, `scale="unit"`).
        layer: the decoder block after which it is added.
        strength: the multiplier (`alpha` of `steering.add`).
        start: first injected token position.
        end: one past the last injected position (None: every position from `start` on).
        scale: `steering.add`'s scale for a `Direction` ("norm": the raw vector; "unit": unit norm).
    """

    direction: Any
    layer: int
    strength: float
    start: int
    end: int | None = None
    scale: Literal["unit", "norm"] = "norm"

    def context(self, model: LoadedModel, positions: Any = "all"):
        """The steering context manager that adds this injection while it is open.

        Args:
            model: the `LoadedModel` to hook.
            positions: which positions of each forward are changed ("all", or a boolean mask that the
                caller built from `start`/`end`).

        Returns:
            The `steering.add` context manager.
        """
        return steering.add(model, self.direction, layers=[self.layer], alpha=self.strength, positions=positions,
                            scale=self.scale if isinstance(self.direction, Direction) else "unit")


class PrefixCache:
    """KV caches of unsteered prompt prefixes, reused across trials (cropped back after each use).

    Args:
        max_items: prefixes kept; the oldest is evicted first.
    """

    def __init__(self, max_items: int = 8):
        self.items: dict[tuple[int, ...], Any] = {}
        self.max_items = max_items

    @torch.no_grad()
    def get(self, model: LoadedModel, ids: Sequence[int]):
        """The KV cache of the unsteered prefix `ids` (computed on first use), cropped to `len(ids)`.

        Args:
            model: the `LoadedModel` that computes it.
            ids: the prefix's token ids.

        Returns:
            The model's cache object (shared: callers crop it back after extending it).
        """
        key = tuple(int(i) for i in ids)
        if key not in self.items:
            if len(self.items) >= self.max_items:
                self.items.pop(next(iter(self.items)))
            x = torch.tensor([key], device=model.device)
            self.items[key] = output_cache(model.model(input_ids=x, use_cache=True, logits_to_keep=1))
        cache = self.items[key]
        crop_cache(cache, len(key))
        return cache


def crop_cache(cache: Any, length: int) -> None:
    """Cut a KV cache back to its first `length` positions (no-op when it is not longer).

    Args:
        cache: a transformers cache (`get_seq_length`, `crop`), changed in place.
        length: positions to keep.
    """
    cur = int(cache.get_seq_length())
    if cur > length:
        cache.crop(length - cur)  # transformers 5: a negative count removes that many tokens


@torch.no_grad()
def continuation_logprobs(model: LoadedModel, prompt_ids: Sequence[int], candidates: Sequence[Sequence[int]], *,
                          inject: Injection | None = None, prefix_cache: PrefixCache | None = None,
                          ) -> Float[Tensor, " cand"]:
    """Exact log P(candidate tokens | prompt) for each candidate, optionally with an injection.

    All candidates are scored in one forward: they are merged into a token trie placed after the
    prompt, with a 4D attention mask that lets each trie node see the prompt and its own ancestors
    (tree attention) and position ids `len(prompt) + depth`. With an injection that runs to the end
    (`end=None`) and a `prefix_cache`, the unsteered prompt prefix before `inject.start` comes from
    the cache and the forward over the rest (every position of it injected) uses positions="all";
    otherwise one forward from position 0 with a boolean position mask (no KV cache involved).

    Args:
        model: a `LoadedModel`.
        prompt_ids: the rendered prompt's token ids.
        candidates: the candidate continuations, as token ids (shared prefixes are scored once).
        inject: an optional injection; its `start` must lie inside the prompt.
        prefix_cache: a cache of unsteered prefixes (used only with an injection running to the end).

    Returns:
        `[cand]` log P of each candidate's tokens given the prompt (summed over its tokens), in order.

    Raises:
        ValueError: an empty prompt, or an injection start outside the prompt.
    """
    if len(prompt_ids) == 0:
        raise ValueError("empty prompt")
    trie = Trie.build(candidates)
    L, T = len(prompt_ids), len(trie.tokens)
    use_cache = inject is not None and inject.end is None and prefix_cache is not None and inject.start > 0
    k0 = inject.start if inject is not None and use_cache else 0
    if inject is not None and not 0 <= inject.start <= L - 1:
        raise ValueError(f"injection start {inject.start} outside the prompt (length {L})")
    Q = (L - k0) + T
    allowed = torch.zeros(Q, k0 + Q, dtype=torch.bool)
    allowed[:, :k0] = True
    rest = L - k0
    allowed[:rest, k0:k0 + rest] = torch.tril(torch.ones(rest, rest, dtype=torch.bool))
    allowed[rest:, k0:k0 + rest] = True
    allowed[rest:, k0 + rest:] = trie.ancestor_mask()
    dtype = model.dtype if model.dtype.is_floating_point else torch.float32
    dev = model.device
    mask = torch.zeros(1, 1, Q, k0 + Q, dtype=dtype, device=dev).masked_fill_(~allowed.to(dev), torch.finfo(dtype).min)
    ids = torch.tensor([list(prompt_ids[k0:]) + trie.tokens], device=dev)
    pos = torch.tensor([list(range(k0, L)) + [L + d for d in trie.depths]], device=dev)
    kw: dict[str, Any] = dict(input_ids=ids, attention_mask=mask, position_ids=pos)
    if use_cache:
        assert inject is not None and prefix_cache is not None  # use_cache implies both
        prefix = prefix_cache.get(model, prompt_ids[:k0])
        kw.update(cache_kwargs(model, prefix), use_cache=True)
        ctx = inject.context(model, positions="all")
    else:
        kw.update(use_cache=False)
        if inject is None:
            ctx = nullcontext()
        else:
            sel = torch.zeros(Q, dtype=torch.bool)
            sel[inject.start:(Q if inject.end is None else inject.end)] = True
            ctx = inject.context(model, positions=sel)
    with ctx:
        logits = model.model(**kw).logits[0].float()
    if use_cache:
        crop_cache(prefix, k0)
    logp = torch.log_softmax(logits, -1)
    src = torch.tensor([rest - 1 if p < 0 else rest + p for p in trie.parents], device=dev)
    node_lp = logp[src, torch.tensor(trie.tokens, device=dev)].cpu()
    cum = torch.zeros(T)
    for k, p in enumerate(trie.parents):  # parents come before their children
        cum[k] = node_lp[k] + (cum[p] if p >= 0 else 0.0)
    return cum[torch.tensor(trie.cand_node)]


# ---- protocol A: detection and identification ------------------------------------------------------
@dataclass
class TrialSpec:
    """One scored trial: prompt variant, trial number, condition and what was injected.

    Args:
        variant: the detection prompt variant ("anchor" or "informative").
        trial: the trial number of the prompt.
        condition: "none" (control), "concept" or "random" (norm-matched random vector).
        word: the concept word (for "random": the word whose norm the random vector matches).
        layer: the injection block (None for "none").
        strength: the injection strength (None for "none").
    """

    variant: str
    trial: int
    condition: str  # "none" | "concept" | "random"
    word: str | None = None  # concept (or the word whose random control this is)
    layer: int | None = None
    strength: float | None = None


class DetectionScorer:
    """Scores detection (`p_yes`) and identification (log P of each candidate word) for trials.

    Args:
        model: a `LoadedModel`.
        candidates: the candidate concept words of identification.
        inject_from: where injections start ("prompt_end" or "trial", see `injection_start`).
    """

    def __init__(self, model: LoadedModel, candidates: Sequence[str], *, inject_from: str = "prompt_end"):
        self.model, self.candidates, self.inject_from = model, list(candidates), inject_from
        self.cache = PrefixCache()
        self._prompts: dict[tuple[str, int], tuple[Prompt, list[list[int]], int]] = {}

    def prompt(self, variant: str, trial: int) -> tuple[Prompt, list[list[int]], int]:
        """(rendered prompt, candidate token ids, injection start) for a variant and trial number.

        Candidates: [Yes], [No], the identification prefix, then prefix + word + closing quote for
        each candidate word.

        Args:
            variant: the detection prompt variant.
            trial: the trial number.

        Returns:
            The prompt, the candidates' token ids and the first injected position (cached per key).

        Raises:
            ValueError: the identification prefix does not tokenise stably before the words.
        """
        key = (variant, trial)
        if key not in self._prompts:
            p = render_prompt(self.model, detection_messages(trial, variant))
            cands = [continuation_ids(self.model, p, DETECT_YES), continuation_ids(self.model, p, DETECT_NO)]
            pre = continuation_ids(self.model, p, IDENT_PREFIX)
            words = [continuation_ids(self.model, p, IDENT_PREFIX + w.lower() + '"') for w in self.candidates]
            if not all(w[:len(pre)] == pre and len(w) > len(pre) for w in words):
                raise ValueError("identification prefix does not tokenise stably before the candidate words")
            self._prompts[key] = (p, cands + [pre] + words, injection_start(p, self.inject_from))
        return self._prompts[key]

    def score(self, spec: TrialSpec, direction: Any = None) -> dict[str, Any]:
        """Scores of one trial (`direction` is what is injected: a concept or a random vector).

        Args:
            spec: the trial.
            direction: what is injected (ignored when `spec.condition == "none"`).

        Returns:
            The trial's fields plus `p_yes` = P(Yes) / (P(Yes) + P(No)), `mass_yes_no`, `claims`
            (1[P(Yes) > P(No)]), `word_logprobs` ({word: log P(word + closing quote | prompt +
            identification prefix)}) and, when `spec.word` is a candidate, its 1-based `rank`.

        Raises:
            ValueError: an injected trial without a direction, layer or strength.
        """
        p, cands, start = self.prompt(spec.variant, spec.trial)
        inj = None
        if spec.condition != "none":
            if direction is None or spec.layer is None or spec.strength is None:
                raise ValueError(f"trial {spec}: an injected trial needs a direction, a layer and a strength")
            inj = Injection(direction, spec.layer, float(spec.strength), start)
        lp = continuation_logprobs(self.model, p.ids, cands, inject=inj, prefix_cache=self.cache)
        y, n = float(lp[0].exp()), float(lp[1].exp())
        word_lp = (lp[3:] - lp[2]).tolist()
        row = {**asdict(spec), "p_yes": y / (y + n) if y + n > 0 else float("nan"), "mass_yes_no": y + n,
               "claims": float(y > n), "word_logprobs": dict(zip(self.candidates, word_lp))}
        if spec.word is not None and spec.word in self.candidates:
            row["rank"] = rank_of(word_lp, self.candidates.index(spec.word))
        return row


def rank_of(scores: Sequence[float], index: int) -> int:
    """1-based rank of `scores[index]` (ties count against it).

    Args:
        scores: the scores (higher is better).
        index: the entry ranked.

    Returns:
        1 + the number of other entries scoring at least as high.
    """
    s = scores[index]
    return 1 + sum(1 for j, v in enumerate(scores) if j != index and v >= s)


@torch.no_grad()
def coherence_nll(model: LoadedModel, references: Sequence[Sequence[Message]], *, inject: Callable[[int], Injection] | None = None) -> list[float]:
    """Mean per-token NLL of each reference conversation's assistant answer, with an optional
    injection (`inject(answer_start)` -> `Injection`; it covers the last prompt token on).

    Args:
        model: a `LoadedModel`.
        references: conversations ending with an assistant answer (e.g. `studies.common.coherence.reference_answers`).
        inject: builds the injection from the answer's first token index (None: unsteered).

    Returns:
        Mean NLL (nats per answer token) of each reference, in order.
    """
    out = []
    for conv in references:
        ct = model.tokenize_chat(conv)
        ids, m = ct.input_ids, ct.assistant_mask
        first = int(m.nonzero()[0])
        ctx = nullcontext()
        if inject is not None:
            sel = torch.zeros(len(ids), dtype=torch.bool)
            sel[first - 1:] = True
            ctx = inject(first - 1).context(model, positions=sel)
        with ctx:
            logits = model.model(input_ids=ids[None].to(model.device), use_cache=False).logits[0, :-1].float()
        lp = torch.log_softmax(logits, -1).gather(-1, ids[1:, None].to(model.device)).squeeze(-1).cpu()
        out.append(float(-lp[m[1:]].mean()))
    return out


def sample_answers(model: LoadedModel, messages: Sequence[Message], *, inject: Injection | None = None, n: int = 4,
                   max_new_tokens: int = 48, temperature: float = 1.0, seed: int = 0) -> list[str]:
    """`n` sampled answers to `messages`; with an injection running to the end of the answer, the
    prompt prefix before `inject.start` is prefilled unsteered and everything after it (the rest of
    the prompt and every generated token) is steered (positions="all" inside that generate call).

    Args:
        model: a `LoadedModel`.
        messages: the conversation, ending with a user turn.
        inject: an injection with `end=None` (None: unsteered).
        n: answers sampled.
        max_new_tokens: tokens per answer.
        temperature: sampling temperature (0: greedy).
        seed: torch seed set before generating.

    Returns:
        The `n` answers, decoded up to the first stop token and stripped.

    Raises:
        ValueError: `inject.end` is not None.
    """
    p = render_prompt(model, messages)
    ids = torch.tensor([p.ids] * n, device=model.device)
    kw: dict[str, Any] = dict(max_new_tokens=max_new_tokens, pad_token_id=model.tokenizer.pad_token_id or 0)

    kw["eos_token_id"] = stop_token_ids(model)
    if temperature > 0:
        kw.update(do_sample=True, temperature=float(temperature), top_p=1.0, top_k=0)
    else:
        kw.update(do_sample=False, temperature=None, top_p=None, top_k=None)
    ctx = nullcontext()
    if inject is not None:
        if inject.end is not None:
            raise ValueError("sample_answers injects to the end of the answer (end=None)")
        with torch.no_grad():
            if inject.start > 0:
                kw.update(cache_kwargs(model, output_cache(model.model(input_ids=ids[:, :inject.start], use_cache=True,
                                                                       logits_to_keep=1))))
        ctx = inject.context(model, positions="all")
    torch.manual_seed(seed)
    with torch.no_grad(), ctx:
        # LoadedModel.model is typed nn.Module, whose __getattr__ says Tensor | Module; generate is the wrapped
        # PreTrainedModel's (or PeftModel's) method
        out = model.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), **kw)  # type: ignore[operator]
    stop = set(kw["eos_token_id"])
    texts = []
    for row in out[:, len(p.ids):].tolist():
        cut = next((j for j, t in enumerate(row) if t in stop), len(row))
        texts.append(model.tokenizer.decode(row[:cut], skip_special_tokens=True).strip())
    return texts


def grade_answers(rows: Sequence[dict[str, Any]], judge: Any = None, *, threshold: float = JUDGE_THRESHOLD) -> list[dict[str, Any]]:
    """Grade sampled answers: `mentions_word` (keyword proxy, always) and, with a 0-100 judge
    (`judge.score(prompts) -> [JudgeResult]`, e.g. `evals.HFJudge` / `evals.APIJudge`), `detected`,
    `identified` and `coherent` as 1[score >= threshold] (None where the judge abstains).

    Args:
        rows: sampled answers, each with `answer` and an optional `word` (the injected concept).
        judge: a 0-100 judge (None: only the keyword proxy).
        threshold: score at or above which a judged property counts as present.

    Returns:
        Copies of `rows` with `mentions_word` and, with a judge, `judge_<key>` (the raw score) and
        `<key>` for key in detected / identified (rows with a word only) / coherent.
    """
    out = []
    for r in rows:
        w = (r.get("word") or "").lower()
        out.append({**r, "mentions_word": float(bool(w) and w.rstrip("s") in r["answer"].lower())})
    if judge is None:
        return out
    for key, tmpl in JUDGE_PROMPTS.items():
        idx = [i for i, r in enumerate(out) if key != "identified" or r.get("word")]
        res = judge.score([tmpl.format(answer=out[i]["answer"], word=out[i].get("word") or "") for i in idx])
        for i, jr in zip(idx, res):
            out[i][f"judge_{key}"] = jr.score
            out[i][key] = None if jr.score is None else float(jr.score >= threshold)
    return out


# ---- protocol B: prefill / intention ----------------------------------------------------------------
class IntentionScorer:
    """P(disown) of a prefilled word, with and without a concept injected on the sentence tokens.

    Args:
        model: a `LoadedModel`.
    """

    def __init__(self, model: LoadedModel):
        self.model = model

    def prompt(self, sentence: str, word: str) -> tuple[Prompt, list[list[int]], tuple[int, int]]:
        """The prefill prompt, its answer candidates and the sentence's token span.

        Args:
            sentence: the line the model associates a word with.
            word: the prefilled word.

        Returns:
            (prompt, candidate ids: the `INTENTION_OWN` answers then the `INTENTION_DISOWN` answers,
            (first, one past last) token of the sentence).
        """
        p = render_prompt(self.model, intention_messages(sentence, word))
        c0 = p.text.find(sentence)
        span = (p.token_at(c0), p.token_at(c0 + len(sentence) - 1) + 1)
        cands = [continuation_ids(self.model, p, a) for a in INTENTION_OWN + INTENTION_DISOWN]
        return p, cands, span

    def score(self, sentence: str, word: str, *, direction: Any = None, layer: int | None = None,
              strength: float = 0.0) -> dict[str, Any]:
        """P(disown) of the prefilled `word`, optionally with `direction` injected on the sentence tokens.

        Args:
            sentence: the line the model associates a word with.
            word: the prefilled word.
            direction: what is injected (None: no injection).
            layer: the injection block (required with a direction).
            strength: the injection strength.

        Returns:
            `p_disown` = P(disown answers) / P(own + disown answers) (NaN with no mass) and `mass`
            (their total probability).

        Raises:
            ValueError: `direction` is given without `layer`.
        """
        p, cands, (a, b) = self.prompt(sentence, word)
        inj = None
        if direction is not None:
            if layer is None:
                raise ValueError("an injected direction needs its layer")
            inj = Injection(direction, int(layer), float(strength), a, b)
        lp = continuation_logprobs(self.model, p.ids, cands, inject=inj).double().exp()
        own, dis = float(lp[:len(INTENTION_OWN)].sum()), float(lp[len(INTENTION_OWN):].sum())
        return {"p_disown": dis / (own + dis) if own + dis > 0 else float("nan"), "mass": own + dis}
