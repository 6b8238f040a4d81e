"""Model diffing: read what changed between two models from their activations.

Every method takes two `LoadedModel`s run on the *same* tokens: a base and a finetuned model, or the
same object with and without its PEFT adapter (pass the adapter-carrying model as both `base` and
`tuned`; the base pass then runs under `disable_adapter()`). Each returns a `probes.Direction`
(per-layer unit vectors + norms + provenance), so every method can be compared with a known
direction (`recovery`), read through the unembedding (`logit_lens`), steered with
(`steer_readout`) and intervened with (`steering.add` / `steering.ablate`).

* `activation_difference` -- the activation-difference lens (Minder et al. 2025, "Narrow finetuning
  leaves clearly readable traces"): the mean of `tuned - base` residual activations on the first `k`
  tokens of unrelated text (no chat template);
* `difference_pca` -- the top right-singular vector of the per-token differences on the same tokens
  (uncentred: a constant shift is the top component; centring would remove it);
* `response_mean_difference` -- mean difference of the response-averaged activations on the same
  conversations (`activations.cache(..., positions="response_mean")`);
* `probe_difference` -- a logistic probe base-vs-tuned on the per-token activations (its normal);
* `sae_latent_difference` -- the top increased latent of `sae.model_diff` (its decoder vector);
* `compare` -- all of them on one pair of models, with cosines to a known direction and a
  norm-matched random baseline.

`response_logprobs` / `response_kl` measure the behavioural distance of two models (mean next-token
KL over the assistant tokens of given conversations), the effect measure of the organisms study.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any, Literal, Sequence, cast

import torch
from jaxtyping import Float, Int
from torch import Tensor

from .models import LoadedModel
from .direction import Direction
from .sae.tokens import TokenPositions
from .layers import resolve_layers

Message = dict[str, str]
METHODS = ("activation_difference", "difference_pca", "response_mean_difference", "probe", "sae_latent")


class _StopForward(Exception):
    pass


def _base_context(base: LoadedModel, tuned: LoadedModel):
    """Context for the base pass: `disable_adapter()` when base and tuned are the same adapted model."""
    if base is tuned:
        if not base.has_adapter:
            raise ValueError("base and tuned are the same model without an adapter: nothing to diff")
        peft_model: Any = base.model  # a peft.PeftModel (has_adapter)
        return peft_model.disable_adapter()
    return contextlib.nullcontext()


def _resolve(model: LoadedModel, layers: int | Sequence[int] | None) -> list[int]:

    return resolve_layers(layers, model.n_layers)


def _texts_to_ids(model: LoadedModel, texts: Sequence[Any], first_tokens: int | None) -> list[Tensor]:
    """Token ids of each text (plain strings: the tokenizer's own special tokens, no chat template;
    message lists: rendered with the chat template), cut to `first_tokens`."""
    if len(texts) == 0:
        raise ValueError("texts is empty")
    out = []
    for i, t in enumerate(texts):
        if isinstance(t, str):
            ids = model.tokenizer(t)["input_ids"]
        elif isinstance(t, (list, tuple)) and all(isinstance(m, dict) and "role" in m for m in t):
            ids = model.tokenizer(model.render(t), add_special_tokens=False)["input_ids"]
        else:
            raise ValueError(f"texts[{i}]: expected a string or a message list, got {type(t).__name__}")
        if not ids:
            raise ValueError(f"texts[{i}]: tokenizes to nothing")
        out.append(torch.tensor(ids[:first_tokens] if first_tokens else ids))
    return out


@torch.no_grad()
def text_activations(model: LoadedModel, texts: Sequence[Any], layers: int | Sequence[int] | None = None,
                     first_tokens: int | None = None, *, batch_size: int = 16,
                     ) -> tuple[Float[Tensor, "tok layer d_model"], Int[Tensor, " tok"]]:
    """Per-token residual activations after the blocks `layers` on the first tokens of each text.

    Args:
        model: the model to run.
        texts: strings (tokenized with the tokenizer's own special tokens, no chat template) or
            message lists (rendered with the chat template).
        layers: block indices (a layer spec; default all).
        first_tokens: how many leading tokens of each text to keep (None = all).
        batch_size: texts per forward pass.

    Returns:
        `(acts, position)`: `acts` `[tok, layer, d_model]` (float32, CPU) stacks every kept token of
        every text in order; `position[i]` is token i's index inside its text.

    Raises:
        ValueError: `texts` is empty, or an item is neither a string nor a message list, or
            tokenizes to nothing.
    """
    layer_ids = _resolve(model, layers)
    ids = _texts_to_ids(model, texts, first_tokens)
    pad = model.tokenizer.pad_token_id or 0
    rows, pos = [], []
    dev = model.device
    for s in range(0, len(ids), batch_size):
        chunk = ids[s:s + batch_size]
        n = max(len(x) for x in chunk)
        inp = torch.full((len(chunk), n), pad, dtype=torch.long)
        att = torch.zeros((len(chunk), n), dtype=torch.long)
        for i, x in enumerate(chunk):
            inp[i, :len(x)] = x
            att[i, :len(x)] = 1
        buf: dict[int, Tensor] = {}

        def make_hook(layer: int):
            def hook(_m, _a, out):
                h = out[0] if isinstance(out, tuple) else out
                buf[layer] = h.detach().float().cpu()
                if layer == layer_ids[-1]:
                    raise _StopForward
            return hook

        handles = [model.layers[l].register_forward_hook(make_hook(l)) for l in layer_ids]
        try:
            model.model(input_ids=inp.to(dev), attention_mask=att.to(dev), use_cache=False)
        except _StopForward:
            pass
        finally:
            for h in handles:
                h.remove()
        stacked = torch.stack([buf[l] for l in layer_ids], dim=2)  # [b, seq, layer, d]
        keep = att.bool()
        rows.append(stacked[keep])
        pos.append(torch.arange(n).expand(len(chunk), n)[keep])
    return torch.cat(rows), torch.cat(pos)


@dataclass
class PairedActivations:
    """Activations of both models on the same tokens (first `first_tokens` of each text)."""

    base: Float[Tensor, "tok layer d_model"]
    tuned: Float[Tensor, "tok layer d_model"]
    position: Int[Tensor, " tok"]
    layers: list[int]
    n_texts: int
    first_tokens: int | None

    @property
    def diff(self) -> Float[Tensor, "tok layer d_model"]:
        """`tuned - base`, token by token."""
        return self.tuned - self.base


def paired_activations(base: LoadedModel, tuned: LoadedModel, texts: Sequence[Any],
                       layers: int | Sequence[int] | None = None, first_tokens: int | None = 5, *,
                       batch_size: int = 16) -> PairedActivations:
    """`text_activations` of both models on the same texts.

    Args:
        base: the reference model; the same adapted object as `tuned` runs its base pass under
            `disable_adapter()`.
        tuned: the finetuned model.
        texts: strings or message lists (as for `text_activations`).
        layers: block indices (default all).
        first_tokens: leading tokens kept per text (None = all).
        batch_size: texts per forward pass.

    Returns:
        `PairedActivations` with `base` and `tuned` `[tok, layer, d_model]` on the same tokens.

    Raises:
        ValueError: the models differ in depth or width, tokenize the texts differently, or are
            one object without an adapter.
    """
    if base.d_model != tuned.d_model or base.n_layers != tuned.n_layers:
        raise ValueError(f"models differ in shape: {base.name} ({base.n_layers} x {base.d_model}) vs "
                         f"{tuned.name} ({tuned.n_layers} x {tuned.d_model})")
    layer_ids = _resolve(tuned, layers)
    with _base_context(base, tuned):
        b, pos = text_activations(base, texts, layer_ids, first_tokens, batch_size=batch_size)
    t, _ = text_activations(tuned, texts, layer_ids, first_tokens, batch_size=batch_size)
    if b.shape != t.shape:
        raise ValueError("the two models tokenized the texts differently (different tokenizers?)")
    return PairedActivations(b, t, pos, layer_ids, len(texts), first_tokens)


def _meta(base: LoadedModel, tuned: LoadedModel, **kw: Any) -> dict[str, Any]:
    return {"base": base.name, "tuned": tuned.name, "tuned_adapter": tuned.meta.get("adapter"), **kw}


def activation_difference(base: LoadedModel, tuned: LoadedModel, texts: Sequence[Any],
                          layers: int | Sequence[int] | None = None, first_tokens: int = 5, *,
                          acts: PairedActivations | None = None, batch_size: int = 16) -> Direction:
    """The activation-difference lens: per layer, mean over the first `first_tokens` tokens of every
    text of `tuned - base` residual activations.

    Args:
        base: the reference model (or the same adapted model as `tuned`: base pass without adapter).
        tuned: the finetuned model.
        texts: unrelated text (strings, tokenized without a chat template) or message lists.
        layers: block indices (default all).
        first_tokens: how many leading tokens of each text to average over.
        acts: precomputed `paired_activations` (then `texts`/`layers` only label the result).
        batch_size: texts per forward pass.

    Returns:
        A `Direction` (unit mean difference per layer; `norms` = its length; `meta["per_position_norm"]`
        = the norm of the mean difference at each position 0..k-1 at every layer).
    """
    a = acts or paired_activations(base, tuned, texts, layers, first_tokens, batch_size=batch_size)
    d = a.diff
    per_pos = [[round(float(d[a.position == p, k].mean(0).norm()), 4) for k in range(len(a.layers))]
               for p in sorted(set(a.position.tolist()))]
    return Direction.from_raw(d.mean(0), a.layers, **_meta(base, tuned, method="activation_difference",
                              first_tokens=a.first_tokens, n_texts=a.n_texts, n_tokens=len(d),
                              per_position_norm=per_pos))


def difference_pca(base: LoadedModel, tuned: LoadedModel, texts: Sequence[Any],
                   layers: int | Sequence[int] | None = None, first_tokens: int = 5, *,
                   acts: PairedActivations | None = None, batch_size: int = 16) -> Direction:
    """Top right-singular vector of the per-token differences `tuned - base` (uncentred), per layer.

    The sign is chosen so the mean difference projects positively; `norms` hold the RMS projection
    of the differences on the component; `meta["explained"]` its share of the differences' energy.

    Args:
        base: the reference model (or the same adapted model as `tuned`: base pass without adapter).
        tuned: the finetuned model.
        texts: unrelated text (strings, tokenized without a chat template) or message lists.
        layers: block indices (default all).
        first_tokens: how many leading tokens of each text to use.
        acts: precomputed `paired_activations` (then `texts`/`layers` only label the result).
        batch_size: texts per forward pass.

    Returns:
        A `Direction`.
    """
    a = acts or paired_activations(base, tuned, texts, layers, first_tokens, batch_size=batch_size)
    d = a.diff
    vecs, norms, expl = [], [], []
    for k in range(len(a.layers)):
        x = d[:, k].double()
        _, s, vh = torch.linalg.svd(x, full_matrices=False)
        v = vh[0] if float(s[0]) > 0 else torch.zeros_like(vh[0])  # identical models: no component
        if float(x.mean(0) @ v) < 0:
            v = -v
        vecs.append(v.float())
        norms.append(float(s[0] / max(len(x), 1) ** 0.5))
        tot = float((s ** 2).sum())
        expl.append(round(float(s[0] ** 2) / tot, 4) if tot > 0 else 0.0)
    return Direction(torch.stack(vecs), torch.tensor(norms), a.layers,
                     _meta(base, tuned, method="difference_pca", first_tokens=a.first_tokens, n_texts=a.n_texts,
                           n_tokens=len(d), explained=expl))


def response_mean_difference(base: LoadedModel, tuned: LoadedModel, conversations: Sequence[Any],
                             layers: int | Sequence[int] | None = None, *, batch_size: int = 8) -> Direction:
    """Mean difference `tuned - base` of the response-averaged activations on the same conversations.

    Args:
        base: the reference model (the same adapted object as `tuned`: base pass without adapter).
        tuned: the finetuned model.
        conversations: message lists with assistant answers (the same answers for both models).
        layers: block indices (default all).
        batch_size: conversations per forward pass.

    Returns:
        A `Direction` (norm = distance between the two models' mean response activations).
    """
    from .activations import cache
    from .probes import mean_diff

    layer_ids = _resolve(tuned, layers)
    with _base_context(base, tuned):
        b = cache(base, conversations, layers=layer_ids, positions="response_mean", batch_size=batch_size, progress=False)
    t = cache(tuned, conversations, layers=layer_ids, positions="response_mean", batch_size=batch_size, progress=False)
    d = mean_diff(t, b, layer_ids, **_meta(base, tuned, n_conversations=len(conversations)))
    d.meta["method"] = "response_mean_difference"
    return d


def probe_difference(base: LoadedModel, tuned: LoadedModel, texts: Sequence[Any],
                     layers: int | Sequence[int] | None = None, first_tokens: int = 5, *,
                     acts: PairedActivations | None = None, cv: int = 5, seed: int = 0,
                     batch_size: int = 16) -> Direction:
    """A logistic probe per layer separating the tuned model's token activations (1) from the base
    model's (0) on the same tokens; the direction is the probe's normal in activation space.

    `norms` are the mean difference's projection on the normal (so `steering.add(..., scale="norm")`
    moves by the measured shift along it); `meta["accuracy"]` / `meta["auroc"]` the CV scores. Blocks
    where the two models are identical on these tokens get no probe (`meta["identical_layers"]`).

    Args:
        base: the reference model (or the same adapted model as `tuned`: base pass without adapter).
        tuned: the finetuned model.
        texts: unrelated text (strings, tokenized without a chat template) or message lists.
        layers: block indices (default all).
        first_tokens: how many leading tokens of each text to use.
        acts: precomputed `paired_activations` (then `texts`/`layers` only label the result).
        batch_size: texts per forward pass.
        cv: cross-validation folds.
        seed: fold seed.

    Returns:
        A `Direction`.
    """
    from .probes import train_probe

    a = acts or paired_activations(base, tuned, texts, layers, first_tokens, batch_size=batch_size)
    vecs, norms, acc, auc, kept, same = [], [], [], [], [], []
    y = [0] * len(a.base) + [1] * len(a.tuned)
    for k in range(len(a.layers)):
        x = torch.cat([a.base[:, k], a.tuned[:, k]])
        if float((a.tuned[:, k] - a.base[:, k]).abs().max()) == 0.0:
            same.append(a.layers[k])  # nothing to separate: no probe at this block
            continue
        kept.append(a.layers[k])
        res = train_probe(x, y, cv=cv, seed=seed)
        v = res.direction.float()
        vecs.append(v)
        norms.append(float(a.diff[:, k].mean(0) @ v))
        acc.append(round(res.accuracy, 4))
        auc.append(round(res.auroc, 4))
    if not kept:
        raise ValueError(f"probe_difference: the two models are identical at every block {a.layers}")
    return Direction(torch.stack(vecs), torch.tensor(norms).abs(), kept,
                     _meta(base, tuned, method="probe", first_tokens=a.first_tokens, accuracy=acc, auroc=auc,
                           n_tokens=len(a.base), identical_layers=same))


def sae_latent_difference(base: LoadedModel, tuned: LoadedModel, sae: Any, conversations: Sequence[Any], *,
                          positions: TokenPositions = "response", rank: int = 0, top_k: int = 10,
                          direction: Any = None, batch_size: int = 8) -> tuple[Direction, Any]:
    """The SAE model diff (`sae.model_diff`): the decoder vector of the `rank`-th most increased latent.

    Args:
        base: the reference `LoadedModel`.
        tuned: the finetuned `LoadedModel`, a distinct object (the SAE diff runs both itself).
        sae: a `sae.LayerSAE` reading the residual stream after one block.
        conversations: message lists with answers (the same for both models).
        positions: tokens pooled by the diff ("response", "prompt", "all", ...).
        rank: which increased latent to return (0 = the largest increase).
        top_k: how many latents the diff ranks in detail.
        direction: optional known direction; the diff reports every latent's cosine with it.
        batch_size: conversations per forward pass.

    Returns:
        `(Direction at the SAE's layer, sae.ModelDiff)`; the Direction's norm is the latent's mean
        activation increase times its decoder norm (the shift that latent accounts for).

    Raises:
        ValueError: `base is tuned`.
    """
    if base is tuned:
        raise ValueError("sae_latent_difference needs two distinct models (load the finetune separately)")
    from .sae import model_diff

    md = model_diff(base, tuned, sae, conversations, positions=positions, direction=direction, top_k=top_k,
                    n_examples=0, batch_size=batch_size)
    change = md.increases[rank]
    w = sae.W_dec[change.latent].float().cpu()
    return Direction(w[None] / w.norm().clamp_min(1e-12), torch.tensor([max(change.delta, 0.0) * float(w.norm())]),
                     [sae.layer], _meta(base, tuned, method="sae_latent", latent=change.latent, delta=change.delta,
                                        sae=sae.source, positions=positions)), md


# ---- reading a direction ---------------------------------------------------------------------
def _final_norm_weight(model: LoadedModel) -> Tensor | None:
    base = model.base_model
    dec = base.get_decoder() if hasattr(base, "get_decoder") else getattr(base, "model", None)
    norm = getattr(dec, "norm", None)
    w = getattr(norm, "weight", None)
    if w is None:
        return None
    w = w.detach().float().cpu()
    if "gemma" in str(getattr(base.config, "model_type", "")):  # Gemma RMSNorm scales by (1 + weight)
        w = 1.0 + w
    return w


@torch.no_grad()
def logit_lens(model: LoadedModel, direction: Any, layer: int | None = None, k: int = 10) -> dict[str, list[dict]]:
    """Tokens a direction promotes and suppresses when read through the unembedding.

    The vector is scaled elementwise by the final RMSNorm's weight (the norm's positive scalar does
    not change the ranking) and multiplied by the unembedding: `logits = W_U (g * v)`.

    Args:
        model: the model whose unembedding reads the direction.
        direction: a `Direction` (read at `layer`, default its first layer) or a `[d_model]` tensor.
        layer: which block's vector to read.
        k: how many tokens per side.

    Returns:
        `{"promoted": [{"text", "id", "logit"}...], "suppressed": [...]}`, largest effect first.
    """
    if isinstance(direction, Direction):
        v = direction.at(direction.layers[0] if layer is None else layer)
    else:
        v = torch.as_tensor(direction, dtype=torch.float32)
    v = v.float() / v.float().norm().clamp_min(1e-12)
    g = _final_norm_weight(model)
    if g is not None:
        v = v * g
    W = model.base_model.get_output_embeddings().weight.detach().float().cpu()
    logits = W @ v
    k = min(k, len(logits))
    tok = model.tokenizer

    def rows(idx: Tensor) -> list[dict]:
        return [{"text": tok.decode([int(i)]), "id": int(i), "logit": round(float(logits[i]), 4)} for i in idx]

    return {"promoted": rows(logits.topk(k).indices), "suppressed": rows((-logits).topk(k).indices)}


def steer_readout(model: LoadedModel, direction: Any, layer: int, alpha: float, prompts: Sequence[Any], *,
                  max_new_tokens: int = 32, seed: int = 0, scale: Literal["norm", "unit"] = "norm") -> list[dict[str, Any]]:
    """Greedy answers to `prompts` with and without `alpha * direction` added after block `layer`
    (all positions), to show what a found difference encodes.

    Args:
        model: the model to steer (usually the base).
        direction: a `Direction` or raw vector.
        layer: the block to steer after.
        alpha: steering coefficient (`scale="norm"`: in units of the Direction's norm at `layer`).
        prompts: message lists or strings.
        max_new_tokens: tokens generated per answer (greedy).
        seed: sampling seed.
        scale: how `alpha` is scaled, as in `steering.add` ("norm": units of the Direction's norm,
            "unit": units of the unit vector).

    Returns:
        Rows `{"prompt", "steered", "response"}`, unsteered first.
    """
    from . import steering
    from .evals import sample

    ps = [[{"role": "user", "content": p}] if isinstance(p, str) else list(p) for p in prompts]
    out = []
    for steered in (False, True):
        ctx = steering.add(model, direction, layers=[layer], alpha=alpha, scale=scale) if steered \
            else contextlib.nullcontext()
        with ctx:
            rows = sample(model, ps, n=1, max_new_tokens=max_new_tokens, temperature=0.0, seed=seed, progress=False)
        out += [{"prompt": r["messages"][-1]["content"], "steered": steered, "alpha": alpha if steered else 0.0,
                 "response": r["response"]} for r in rows]
    return out


# ---- behavioural distance ----------------------------------------------------------------------
@torch.no_grad()
def response_logprobs(model: LoadedModel, conversations: Sequence[Sequence[Message]], *,
                      batch_size: int = 8) -> list[Float[Tensor, "_n_resp vocab"]]:
    """Next-token log-distributions at the positions predicting each conversation's assistant tokens.

    Steering hooks active on `model` apply.

    Args:
        model: the model to score with.
        conversations: message lists with assistant answers.
        batch_size: conversations per forward pass.

    Returns:
        Per conversation, `[n_resp, vocab]` float32 log-probabilities on CPU (`n_resp` = its number
        of assistant tokens after the first position).

    Raises:
        ValueError: a conversation has no assistant token to score.
        FloatingPointError: the model produced non-finite log-probabilities.
    """
    toks = [model.tokenize_chat(c) for c in conversations]
    for i, t in enumerate(toks):
        if not t.assistant_mask[1:].any():
            raise ValueError(f"conversation {i}: no assistant tokens to score")
    pad = model.tokenizer.pad_token_id or 0
    dev = model.device
    out: list[Tensor] = [torch.empty(0)] * len(toks)
    for s in range(0, len(toks), batch_size):
        chunk = toks[s:s + batch_size]
        n = max(len(t.input_ids) for t in chunk)
        ids = torch.full((len(chunk), n), pad, dtype=torch.long)
        att = torch.zeros((len(chunk), n), dtype=torch.long)
        for i, t in enumerate(chunk):
            ids[i, :len(t.input_ids)] = t.input_ids
            att[i, :len(t.input_ids)] = 1
        logits = model.model(input_ids=ids.to(dev), attention_mask=att.to(dev), use_cache=False).logits
        for i, t in enumerate(chunk):
            m = t.assistant_mask[1:]
            lp = torch.log_softmax(logits[i, :len(t.input_ids) - 1][m.to(dev)].float(), -1).cpu()
            if not torch.isfinite(lp).all():
                raise FloatingPointError(f"conversation {s + i}: non-finite log-probabilities")
            out[s + i] = lp
    return out


def response_kl(model: LoadedModel, reference: Sequence[Float[Tensor, "_n_resp vocab"]],
                conversations: Sequence[Sequence[Message]], *,
                batch_size: int = 8) -> list[float]:
    """Per conversation, the mean over assistant positions of KL(p_model || p_reference).

    Args:
        model: the model whose distribution is `p_model` (steering hooks active on it apply).
        reference: `response_logprobs(reference_model, conversations)`: per conversation a
            `[n_resp, vocab]` log-probability tensor.
        conversations: the same message lists the reference was computed on.
        batch_size: conversations per forward pass.

    Returns:
        One KL value (nats) per conversation.

    Raises:
        ValueError: a reference tensor's shape differs from the model's log-probabilities.
    """
    lps = response_logprobs(model, conversations, batch_size=batch_size)
    out = []
    for p, q in zip(lps, reference):
        if p.shape != q.shape:
            raise ValueError(f"reference log-probs have shape {tuple(q.shape)}, model's {tuple(p.shape)}")
        out.append(float((p.exp() * (p - q)).sum(-1).mean()))
    return out


# ---- comparing methods ---------------------------------------------------------------------
def _truth_vector(truth: Any, layer: int) -> Tensor | None:
    if isinstance(truth, Direction):
        if layer in truth.layers:
            return truth.at(layer)
        return truth.vectors[0] if len(truth.layers) == 1 else None
    v = torch.as_tensor(truth, dtype=torch.float32)
    return v / v.norm().clamp_min(1e-12)


def recovery(found: Direction, truth: Any, *, n_random: int = 3, seed: int = 0) -> list[dict[str, Any]]:
    """Per layer of `found`, its cosine with the known `truth` and the random baseline.

    `truth` is a `Direction` (per layer; a single-layer Direction or a `[d_model]` vector is compared
    with every layer). The baseline is the |cosine| of `n_random` norm-matched random directions
    (`steering.random_like(found, seed + i)`) with the truth: mean and max.

    Args:
        found: the direction a diffing method found.
        truth: the known direction (`Direction` or `[d_model]` vector).
        n_random: how many random baseline directions.
        seed: seed of the first random direction.

    Returns:
        Rows `{"layer", "cosine", "random_abs_mean", "random_abs_max"}`.
    """
    from .steering import random_like

    rands = [cast(Direction, random_like(found, seed + i)) for i in range(n_random)]  # same type as `found`
    rows = []
    for l in found.layers:
        t = _truth_vector(truth, l)
        if t is None:
            continue
        t = t / t.norm().clamp_min(1e-12)
        rc = [abs(float(r.at(l) @ t)) for r in rands]
        rows.append({"layer": l, "cosine": float(found.at(l) @ t),
                     "random_abs_mean": sum(rc) / len(rc) if rc else None,
                     "random_abs_max": max(rc) if rc else None})
    return rows


@dataclass
class Comparison:
    """All methods' directions for one pair of models (`compare`)."""

    directions: dict[str, Direction]
    errors: dict[str, str] = field(default_factory=dict)  # method -> why it failed / was skipped
    sae_diff: Any = None

    def recovery(self, truth: Any, *, n_random: int = 3, seed: int = 0) -> list[dict[str, Any]]:
        """`recovery` rows of every method, with a `method` field.

        Args:
            truth: the known direction (`Direction` or `[d_model]` vector).
            n_random: random baseline directions per method.
            seed: seed of the first random direction.

        Returns:
            Rows `{"method", "layer", "cosine", "random_abs_mean", "random_abs_max"}`.
        """
        return [{"method": m, **r} for m, d in self.directions.items()
                for r in recovery(d, truth, n_random=n_random, seed=seed)]


def compare(base: LoadedModel, tuned: LoadedModel, texts: Sequence[Any],
            conversations: Sequence[Any] | None = None, *, layers: int | Sequence[int] | None = None,
            first_tokens: int = 5, methods: Sequence[str] = METHODS, probe_layers: Sequence[int] | None = None,
            sae: Any = None, sae_positions: TokenPositions = "response", truth: Any = None, seed: int = 0,
            batch_size: int = 16) -> Comparison:
    """Run every diffing method on one pair of models.

    Args:
        base: the reference model (the same adapted object as `tuned`: base passes without adapter).
        tuned: the finetuned model.
        texts: unrelated texts for the first-token methods (activation difference, PCA, probe).
        conversations: conversations with answers for the response and SAE methods (skipped if None).
        layers: blocks for the first-token and response methods (default all).
        first_tokens: leading tokens per text.
        methods: subset of `METHODS`.
        probe_layers: blocks for the probe (default `layers`; probes are the slowest method).
        sae: a `sae.LayerSAE` for the SAE diff (skipped if None).
        sae_positions: tokens the SAE diff pools over ("response", "prompt", "all", ...).
        truth: a known direction passed to the SAE diff for its latent cosines.
        seed: the probe's fold seed.
        batch_size: texts per forward pass (halved for the conversation methods).

    Returns:
        A `Comparison`; a method that cannot run is recorded in `errors`, never silently dropped.

    Raises:
        ValueError: `methods` names an unknown method.
    """
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ValueError(f"unknown methods {unknown}; choose from {METHODS}")
    layer_ids = _resolve(tuned, layers)
    out = Comparison({})
    acts = None
    if {"activation_difference", "difference_pca", "probe"} & set(methods):
        acts = paired_activations(base, tuned, texts, layer_ids, first_tokens, batch_size=batch_size)
    if "activation_difference" in methods:
        out.directions["activation_difference"] = activation_difference(base, tuned, texts, acts=acts)
    if "difference_pca" in methods:
        out.directions["difference_pca"] = difference_pca(base, tuned, texts, acts=acts)
    if "response_mean_difference" in methods:
        if conversations:
            out.directions["response_mean_difference"] = response_mean_difference(
                base, tuned, conversations, layer_ids, batch_size=max(1, batch_size // 2))
        else:
            out.errors["response_mean_difference"] = "no conversations given"
    if "probe" in methods:
        assert acts is not None  # computed above whenever "probe" is among the methods
        pl = list(probe_layers) if probe_layers is not None else layer_ids
        sub = PairedActivations(acts.base[:, [layer_ids.index(l) for l in pl]],
                                acts.tuned[:, [layer_ids.index(l) for l in pl]], acts.position, pl, acts.n_texts,
                                acts.first_tokens)
        try:
            out.directions["probe"] = probe_difference(base, tuned, texts, acts=sub, seed=seed)
        except ValueError as e:
            out.errors["probe"] = str(e)
    if "sae_latent" in methods:
        if sae is None:
            out.errors["sae_latent"] = "no SAE given"
        elif not conversations:
            out.errors["sae_latent"] = "no conversations given"
        elif base is tuned:
            out.errors["sae_latent"] = "base and tuned are the same object"
        else:
            out.directions["sae_latent"], out.sae_diff = sae_latent_difference(
                base, tuned, sae, conversations, positions=sae_positions, direction=truth,
                batch_size=max(1, batch_size // 2))
    return out
