"""Local judges: `HFJudge` (a chat model's exact distribution over the strings "0".."100", or P(yes) / P(no)
in label mode) and `HFCategoricalJudge` (exact P(label) for each allowed label), all multi-token safe: one
prefill of the judge prompt plus one tree-attention forward over the KV cache (`scoring.tree_logprobs`)."""

from __future__ import annotations

import hashlib
import json
import math
from typing import Any, Sequence

from ..models import LoadedModel
from ..runs import model_config
from .judge_prompts import NO_FORMS, YES_FORMS, LabelPrompt, _check_mode, _Modes, label_score, load_label_prompts
from .judge_result import MASS_TOL, JudgeResult, LabelResult
from .scoring import _memo, number_distributions, tree_logprobs


def yes_no_candidates(tokenizer, prompt_text: str) -> tuple[list[list[int]], list[list[int]]]:
    """Token sequences of the yes and no surface forms as they tokenize right after `prompt_text`.

    Forms: `YES_FORMS` / `NO_FORMS`, each bare and after one space. Duplicates are merged, and a form
    whose tokens extend another form of the same answer is dropped (its probability is already inside
    the shorter one's), so P(yes) counts no path twice.

    Args:
        tokenizer: a Hugging Face tokenizer.
        prompt_text: the rendered prompt (its last 24 characters decide the tokenization).

    Returns:
        (yes sequences, no sequences).

    Raises:
        ValueError: a yes form and a no form share a token path (one is a prefix of the other).
    """
    tail = prompt_text[-24:]
    memo = _memo(tokenizer)
    if ("yes_no", tail) in memo:
        y, n = memo[("yes_no", tail)]
        return [list(x) for x in y], [list(x) for x in n]
    enc = lambda s: tokenizer(s, add_special_tokens=False)["input_ids"]  # noqa: E731
    base = enc(tail)

    def forms(words: Sequence[str]) -> list[list[int]]:
        seqs: list[list[int]] = []
        for w in words:
            for lead in ("", " "):
                full = enc(tail + lead + w)
                ids = full[len(base):] if full[:len(base)] == base and len(full) > len(base) else enc(lead + w)
                if ids and ids not in seqs:
                    seqs.append(ids)
        seqs.sort(key=len)
        kept: list[list[int]] = []
        for s in seqs:
            if not any(s[:len(k)] == k for k in kept):
                kept.append(s)
        return kept

    yes, no = forms(YES_FORMS), forms(NO_FORMS)
    for y in yes:
        for n in no:
            m = min(len(y), len(n))
            if y[:m] == n[:m]:
                raise ValueError(f"yes form {y} and no form {n} share a token path: P(yes)/P(no) is ambiguous")
    memo[("yes_no", tail)] = (tuple(map(tuple, yes)), tuple(map(tuple, no)))
    return yes, no


def yes_no_probs(model: LoadedModel, prompt_texts: Sequence[str], *, batch_size: int = 4,
                 shared_prefix: bool = False) -> list[tuple[float, float]]:
    """Exact (P(yes), P(no)) after each rendered prompt, summed over the surface forms.

    Args:
        model: the judge model.
        prompt_texts: rendered prompts (ending with the assistant header).
        batch_size: prompts per forward.
        shared_prefix: prefill the prompts' common prefix once (see `scoring.tree_logprobs`).

    Returns:
        One (P(yes), P(no)) pair per prompt.
    """
    tok = model.tokenizer
    out: dict[int, tuple[float, float]] = {}
    groups: dict[tuple, list[int]] = {}
    for i, t in enumerate(prompt_texts):
        y, n = yes_no_candidates(tok, t)
        groups.setdefault((tuple(map(tuple, y)), tuple(map(tuple, n))), []).append(i)
    for (y, n), idxs in groups.items():
        ids = [tok(prompt_texts[i], add_special_tokens=False)["input_ids"] for i in idxs]
        lp, _ = tree_logprobs(model, ids, [list(c) for c in (*y, *n)], batch_size=batch_size, shared_prefix=shared_prefix)
        p = lp.double().exp()
        for j, i in enumerate(idxs):
            out[i] = (float(p[j, :len(y)].sum()), float(p[j, len(y):].sum()))
    return [out[i] for i in range(len(prompt_texts))]


class HFJudge(_Modes):
    """A local chat model as a 0-100 judge (exact multi-token number scoring) or a yes/no label judge.

    Args:
        model: the judge model (a chat model; its chat template renders the prompts).
        min_mass: the score is None when less than this probability mass is on 0..100 (label mode: on
            yes + no) (default 0.25).
        batch_size: prompts per forward pass.
        system: optional system prompt put before each judge prompt.
        mode: "0-100" (the papers' scoring) or "label" (yes/no, see the module docstring).
        label_prompts: the label-mode prompts (default `load_label_prompts()`).
        shared_prefix: prefill the judge prompts' common prefix (chat header + instructions) once per `score`
            call and reuse its KV cache (same result; see `scoring.tree_logprobs`).
    """

    def __init__(self, model: LoadedModel, *, min_mass: float = 0.25, batch_size: int = 2,
                 system: str | None = None, mode: str = "0-100", label_prompts: dict[str, LabelPrompt] | None = None,
                 shared_prefix: bool = True):
        self.model, self.min_mass, self.batch_size, self.system = model, min_mass, batch_size, system
        self.shared_prefix = shared_prefix
        self.mode = _check_mode(mode)
        self.label_prompts = label_prompts if label_prompts is not None else load_label_prompts()
        self._fp: str | None = None

    def describe(self) -> dict[str, Any]:
        m = self.model
        scoring = ("exact 0-100 multi-token" if self.mode == "0-100" else
                   "exact P(yes)/(P(yes)+P(no)) over all surface forms, multi-token")
        return {"kind": "HFJudge", "model": m.name, "source": m.meta.get("source"),
                "adapter": m.meta.get("adapter"), "min_mass": self.min_mass, "scoring": scoring, **self._mode_desc()}

    def fingerprint(self) -> str:
        """What identifies this judge's answers: the weights' content hash, adapter, chat template, mode,
        system prompt, mass floor (and label prompts in label mode). Hex SHA-256, 24 characters."""
        if self._fp is None:
            tok = self.model.tokenizer
            ident = {"kind": "hf", "model": model_config(self.model), "dtype": str(self.model.dtype),
                     "chat_template": hashlib.sha256(str(getattr(tok, "chat_template", "")).encode()).hexdigest(),
                     "system": self.system, "min_mass": self.min_mass, **self._mode_desc()}
            self._fp = hashlib.sha256(json.dumps(ident, sort_keys=True, default=str).encode()).hexdigest()[:24]
        return self._fp

    def render(self, prompts: Sequence[str]) -> list[str]:
        """The chat-templated texts the judge reads (system prompt, one user turn, assistant header).

        Args:
            prompts: the filled judge prompts.

        Returns:
            One text per prompt.
        """
        texts = []
        for p in prompts:
            msgs = ([{"role": "system", "content": self.system}] if self.system else []) + [{"role": "user", "content": p}]
            texts.append(self.model.render(msgs, add_generation_prompt=True))
        return texts

    def score(self, prompts: Sequence[str], *, metric: str | None = None) -> list[JudgeResult]:
        """Score each judge prompt: the probability-weighted mean over the answers "0".."100", or in label
        mode 100 * P(yes)/(P(yes)+P(no)) (P(no) for a metric whose `yes_means` is "low").

        Args:
            prompts: filled judge prompts (one user turn each).
            metric: the metric the prompts are for (label mode: sets the direction; default "yes" = high).

        Returns:
            One `JudgeResult` per prompt; score None when the mass on the numbers (yes/no) is < `min_mass`,
            or with `reason` set when the model's mass is not finite or exceeds 1.
        """
        texts = self.render(prompts)
        if self.mode == "label":
            yn = self._yes_means(metric)
            return [label_score(py, pn, yes_means=yn, min_mass=self.min_mass)
                    for py, pn in yes_no_probs(self.model, texts, batch_size=self.batch_size,
                                               shared_prefix=self.shared_prefix)]
        dists = number_distributions(self.model, texts, 0, 100, batch_size=self.batch_size,
                                     shared_prefix=self.shared_prefix)
        out = []
        for d in dists:
            mass = float(d.mass)
            if not math.isfinite(mass) or mass > 1 + MASS_TOL:
                out.append(JudgeResult(None, mass, f"judge model gave an impossible number mass {mass!r}"))
            else:
                out.append(JudgeResult(d.expected(self.min_mass), mass))
        return out


class HFCategoricalJudge:
    """A local chat model as a label judge: exact P(label) for each allowed label as the whole answer
    (all labels scored in one prefill plus one tree forward, as `HFJudge` scores numbers).

    Args:
        model: the judge model (a chat model; its chat template renders the prompts).
        min_mass: abstain (label None) when the allowed labels' total probability is below this
            (default 0.25).
        batch_size: prompts per forward pass.
    """

    def __init__(self, model: LoadedModel, *, min_mass: float = 0.25, batch_size: int = 2):
        self.model, self.min_mass, self.batch_size = model, min_mass, batch_size

    def describe(self) -> dict[str, Any]:
        m = self.model
        return {"kind": "HFCategoricalJudge", "model": m.name, "source": m.meta.get("source"),
                "min_mass": self.min_mass, "scoring": "exact P(label) over the allowed labels"}

    def classify(self, prompts: Sequence[str], labels: Sequence[str]) -> list[LabelResult]:
        """Score each prompt's allowed labels as the judge's whole answer.

        Args:
            prompts: filled judge prompts (sent as one user turn each).
            labels: the allowed labels (e.g. from `labels_from_prompt`), shared by all prompts.

        Returns:
            One `LabelResult` per prompt: the most probable label (None when their mass < `min_mass`),
            P(label) per label (unnormalised) and the labels' total mass.
        """
        tok = self.model.tokenizer
        texts = [self.model.render([{"role": "user", "content": p}], add_generation_prompt=True) for p in prompts]
        ids = [tok(t, add_special_tokens=False).input_ids for t in texts]
        cands = [tok(l, add_special_tokens=False).input_ids for l in labels]
        lp, _ = tree_logprobs(self.model, ids, cands, batch_size=self.batch_size)
        out = []
        for row in lp.exp().tolist():
            probs = dict(zip(labels, row))
            mass = float(sum(probs.values()))
            best = max(probs, key=lambda k: probs[k]) if mass >= self.min_mass else None
            out.append(LabelResult(best, probs, mass))
        return out
